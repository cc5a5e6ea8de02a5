"""libvirt facts: pools, volumes, domains and host capacity, each in ONE command per host.

All run the same small probe (``facts/scripts/libvirt_probe.py``) with the host's python3 and its libvirt
bindings: one process, one libvirt connection, however many pools, volumes and domains exist (a
virsh loop costs a process and a connection per object). Active pools are refreshed first, so volumes
created outside libvirt appear. Operations read ``Hypervisor`` (everything at once); the narrower
facts are for people::

    pyinfra inventories/manifest.py fact facts.libvirt.Domains

A host without virsh (libvirt not installed) gives an empty result with pyinfra's warning; a host
whose libvirtd is not running, or without the python3 bindings, FAILS with the reason on stderr:
reporting "no domains" there would make a build clone everything again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand
from pyinfra.api.exceptions import FactProcessError

from facts.util.commands import bounded
from facts.util.host_state import HostState
from facts.util.libvirt_parse import ParseError, hypervisor_from
from facts.util.script_files import read_script
from inventories.defaults import COMMAND_TIMEOUT as DEFAULT_TIMEOUT
from inventories.defaults import LIBVIRT_URI as DEFAULT_URI

# The host side of every libvirt fact, a program of its own (ruff and mypy read it as a file).
PROBE = read_script("libvirt_probe.py", package="facts")


def probe_command(uri: str, timeout: int = DEFAULT_TIMEOUT) -> StringCommand:
    """The probe under its own watchdog (``timeout`` s, naming the step), with coreutils ``timeout``
    a little later as the backstop should the interpreter itself hang."""
    seconds = int(timeout)
    # The host's own Python 3: /usr/bin/python3, or platform-python on RHEL 8 minimal installs.
    return StringCommand(
        "PY=$(command -v /usr/bin/python3 || command -v /usr/libexec/platform-python || command -v python3)"
        ' || { echo "kvm-qemu: no python3 on this host" >&2; exit 4; };',
        bounded(
            "libvirt probe",
            seconds + 10,
            StringCommand('"$PY"', "-c", QuoteString(PROBE), QuoteString(uri), QuoteString(str(seconds))),
        ),
    )


class _LibvirtFact(FactBase):
    abstract = True
    pick: Callable[[HostState], Any] = staticmethod(lambda host_state: host_state)

    @staticmethod
    def default() -> Any:
        return {}

    def requires_command(self, uri: str = DEFAULT_URI, timeout: int = DEFAULT_TIMEOUT) -> str:
        return "virsh"

    def command(self, uri: str = DEFAULT_URI, timeout: int = DEFAULT_TIMEOUT) -> StringCommand:
        return probe_command(uri, timeout)

    def process(self, output: list[str]) -> Any:
        try:
            return type(self).pick(hypervisor_from(output))
        except ParseError as exc:
            raise FactProcessError(str(exc)) from None


class Hypervisor(_LibvirtFact):
    """The host's state as typed objects (``facts/util/host_state.HostState``): pools, volumes,
    domains (with their disks, backing files and libvirt snapshots), capacity and files.

    ``files``: for every entry of every directory pool (active or not) and every domain disk with its
    backing chain; ``kind`` is file, link, dir, other or missing. pyinfra's CLI prints it as
    ``{"pools": Pools, "volumes": Volumes, "domains": Domains, "capacity": HostCapacity, "files": ...}``.
    """

    abstract = False

    @staticmethod
    def default() -> HostState:
        return HostState()


class Pools(_LibvirtFact):
    """``{pool: {uuid, state, autostart, persistent, type, path, capacity, allocation, available}}``."""

    abstract = False
    pick = staticmethod(lambda host_state: host_state.to_dict()["pools"])


class Volumes(_LibvirtFact):
    """``{pool: {volume: {path, format, capacity, allocation, backing}}}``; pools refreshed first."""

    abstract = False
    pick = staticmethod(lambda host_state: host_state.to_dict()["volumes"])


class Domains(_LibvirtFact):
    """``{domain: {uuid, state, persistent, autostart, memory_kib, max_memory_kib, vcpus, max_vcpus,
    disks: [{target, device, path, format, bus, backing}], interfaces: [{mac, type, source, model}],
    config: {...same resources and devices from the persistent definition...}, xml,
    snapshots: [{name, parent, state, created, current, disks, domain_disks}] (oldest first)}}``.

    Top-level values are live for running domains; ``config`` holds the persistent ones (they differ
    after e.g. a live setmem). ``xml`` is the persistent definition (the live one for transient domains).
    """

    abstract = False
    pick = staticmethod(lambda host_state: host_state.to_dict()["domains"])


class HostCapacity(_LibvirtFact):
    """``{cpus, memory_kib, free_memory_kib, libvirt_version, hypervisor_version}``."""

    abstract = False
    pick = staticmethod(lambda host_state: host_state.capacity.to_dict())


__all__ = ["Domains", "HostCapacity", "Hypervisor", "Pools", "Volumes"]
