"""The VM workflows as pyinfra deploy functions: call them from ``deploys/<workflow>.py`` or your own
deploy file.

    from deploys.vms import build, start, wait

    build()
    start()
    wait()

Each runs its hypervisor part on ``kvm_hosts`` hosts and its management part on the ``mgmt`` host, and
does nothing elsewhere. ``vmspecs`` (``VmSpec`` objects) default to the manifest's VMs of the current
host (host data ``kvm_vmspecs``); ``all_vmspecs``, what the management node reserves or waits for,
default to every VM of the manifest (``kvm_all_vmspecs``). Every other parameter left at None comes
from host/group data or ``--data``, else its default (``inventories/settings.py``, docs/settings.md).
Importing this module outside a pyinfra run is fine: nothing runs
until a function is called inside one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pyinfra import host
from pyinfra.api.deploy import deploy
from pyinfra.operations import python

from deploys._owner import reservation_owner
from deploys._readiness import ReadinessProbe, not_ready, probe_config, table_lines, timeout_value
from deploys._seeds import cloud_init_seeds
from deploys._settings import (
    SettingError,
    allocation_ratios,
    dns_listen_address,
    flag,
    group_hosts,
    is_hypervisor,
    is_mgmt,
    number,
    seconds,
    setting,
    str_list,
)
from deploys._settings import (
    all_vmspecs as manifest_all_vmspecs,
)
from deploys._settings import (
    vmspecs as manifest_vmspecs,
)
from deploys._status import reservation_lines, status_lines
from deploys._sysprep import with_sysprep_default
from deploys.placement import defined_elsewhere, vms_placed
from facts.dnsmasq import DnsmasqReservations
from facts.libvirt import Hypervisor
from inventories.manifest_model import VmSpec
from operations import libvirt
from operations.dnsmasq import RELEASE_AS_CONFIGURED
from operations.util.output import log
from operations.util.virsh import session_limit


def _mine(given: list[VmSpec] | None) -> list[VmSpec]:
    return manifest_vmspecs() if given is None else list(given)


def _everyone(given: list[VmSpec] | None) -> list[VmSpec]:
    return manifest_all_vmspecs() if given is None else list(given)


def release_address() -> str | None:
    """Where dnsmasq serves DHCP, so delete can release a deleted VM's lease.

    With ``dhcp_range`` given in this run: the address dnsmasq listens on (``dns_listen_address``, else
    the management node's IP ``ssh_hostname``, as the mgmt_server deploy binds it); without either,
    leases are not released and the output says so. Without it: ``"configured"``, read from the
    node's own dnsmasq configuration (``dnsmasq_conf``) when delete runs, so settings given once to
    deploys/mgmt_server.py need not be repeated.
    """
    if not setting("dhcp_range"):
        return RELEASE_AS_CONFIGURED if setting("dnsmasq_conf") else None
    try:
        return dns_listen_address()
    except SettingError as exc:
        log(f"DHCP leases of deleted VMs are not released: {exc}", "warning")
        return None


def dnsmasq_arguments() -> dict[str, Any]:
    """Paths and options shared by build and delete (the mgmt node may need sudo: ``mgmt_sudo``)."""
    return {
        "hostsfile": setting("dhcp_hostsfile"),
        "addn_hosts": setting("dns_addn_hosts"),
        "dnsmasq_conf": setting("dnsmasq_conf"),
        "pid_file": setting("dnsmasq_pid_file"),
        "release_leases_on": release_address(),
        "owner": reservation_owner(),
        "_sudo": flag("mgmt_sudo"),
    }


@deploy("Storage pools")
def pools() -> None:
    """Storage pools on every hypervisor: primary (local dir, autostart) and secondary (the NFS share).

    Data: ``kvm_primary_pool``, ``kvm_primary_storage``, ``kvm_secondary_pool``, ``kvm_secondary_storage``.
    """
    if not is_hypervisor():
        return
    libvirt.pool(
        name="Primary storage pool",
        pool_name=setting("kvm_primary_pool"),
        path=setting("kvm_primary_storage"),
        autostart=True,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
    # Not autostarted: the NFS share may not be mounted yet when libvirtd starts.
    libvirt.pool(
        name="Secondary storage pool",
        pool_name=setting("kvm_secondary_pool"),
        path=setting("kvm_secondary_storage"),
        autostart=False,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Base VM")
def base_vm(xml_file: str | None = None) -> None:
    """Define the base VM on every hypervisor from a controller-side XML file (``--data xml=...``)."""
    if not is_hypervisor():
        return
    xml_file = setting("xml", xml_file or None)
    if not xml_file:
        raise SettingError("the base VM deploy needs the base VM's XML: --data xml=path/to/centos7.xml")
    libvirt.domain(
        name=f"Define base VM from {xml_file}",
        xml_file=xml_file,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Build VMs")
def build(vmspecs: list[VmSpec] | None = None, all_vmspecs: list[VmSpec] | None = None) -> None:
    """Clone every vmspec on its hypervisor and converge existing VMs, then reserve DHCP + DNS on mgmt.

    A hypervisor whose VMs do not fit (capacity preflight: ``vcpu_allocation_ratio``,
    ``memory_allocation_ratio``) fails alone with a per-host table; the others are built.
    """
    if is_hypervisor():
        # VMs the manifest moved to another host are migrated there first, never cloned twice; one
        # still defined elsewhere is left out of this host's build (the next run converges it).
        vms_placed()
        arriving = defined_elsewhere()
        vcpu_ratio, memory_ratio = allocation_ratios()
        libvirt.vms(
            name="Clone and converge VMs",
            vmspecs=with_sysprep_default([spec for spec in _mine(vmspecs) if spec.name not in arriving]),
            uri=setting("libvirt_uri"),
            vcpu_ratio=vcpu_ratio,
            memory_ratio=memory_ratio,
            command_timeout=seconds("command_timeout"),
            copy_timeout=seconds("copy_timeout"),
        )
        # Only VMs with cloudInit: their seed is written and attached before any start.
        cloud_init_seeds(vmspecs=_mine(vmspecs))
    if is_mgmt():
        libvirt.vm_reservations(
            name="DHCP reservations and DNS names",
            vmspecs=_everyone(all_vmspecs),
            dhcp_range=setting("dhcp_range"),
            **dnsmasq_arguments(),
        )


@deploy("Resize VMs")
def resize(vmspecs: list[VmSpec] | None = None) -> None:
    """Converge vCPUs, memory and data disks of existing VMs to their vmspecs (live where possible)."""
    if not is_hypervisor():
        return
    libvirt.vms(
        name="Converge VM resources",
        vmspecs=_mine(vmspecs),
        create=False,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Start VMs")
def start(vmspecs: list[VmSpec] | None = None) -> None:
    """Start (or resume) the VMs."""
    if not is_hypervisor():
        return
    libvirt.vms_running(
        name="Start VMs",
        vmspecs=_mine(vmspecs),
        running=True,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Stop VMs")
def stop(vmspecs: list[VmSpec] | None = None, force: bool | None = None) -> None:
    """Graceful shutdown, destroyed after ``stop_timeout`` seconds (``force``: destroyed at once)."""
    if not is_hypervisor():
        return
    libvirt.vms_running(
        name="Stop VMs",
        vmspecs=_mine(vmspecs),
        running=False,
        force=flag("force", force),
        stop_timeout=int(number("stop_timeout")),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Delete VMs")
def delete(
    vmspecs: list[VmSpec] | None = None,
    all_vmspecs: list[VmSpec] | None = None,
    keep_disks: bool | None = None,
) -> None:
    """Delete the VMs and the files each one alone owns (``keep_disks``: keep them), then drop the DHCP
    reservations and DNS names of the VMs deleted in this run on mgmt (and release their leases)."""
    if is_hypervisor():
        keep = flag("keep_disks", keep_disks)
        libvirt.vms(
            name="Delete VMs" + (" (keeping disks)" if keep else " and their volumes"),
            vmspecs=_mine(vmspecs),
            present=False,
            keep_disks=keep,
            uri=setting("libvirt_uri"),
            command_timeout=seconds("command_timeout"),
            shared_dirs=[setting("kvm_secondary_storage")],
        )
    if is_mgmt():
        vm_hosts = {
            spec.name: member.name
            for member in group_hosts("kvm_hosts")
            for spec in manifest_vmspecs(member)
        }
        libvirt.vm_reservations(
            name="Remove DHCP reservations and DNS names of deleted VMs",
            vmspecs=_everyone(all_vmspecs),
            present=False,
            vm_hosts=vm_hosts,
            **dnsmasq_arguments(),
        )


@deploy("Save VM XML")
def dumpxml(
    vmspecs: list[VmSpec] | None = None, directory: str | None = None, domains: list[str] | None = None
) -> None:
    """Save each VM's XML definition on the controller as ``<directory>/<host>/<vm>.xml``
    (``directory``: data ``xml_dir``); ``domains`` (data ``xml_domains``, e.g. a base VM made by
    deploys/installer.py) instead of the vmspecs' VMs."""
    if not is_hypervisor():
        return
    names = str_list("xml_domains", domains)
    libvirt.vm_xml_files(
        name="Save VM XML",
        domains=names or [spec.name for spec in _mine(vmspecs)],
        directory=os.path.join(setting("xml_dir", directory or None), host.name),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )


@deploy("Status")
def status(vmspecs: list[VmSpec] | None = None, all_vmspecs: list[VmSpec] | None = None) -> None:
    """Per VM: manifest vs actual (state, vCPUs, memory, max memory, data disks, MAC, reservation).

    Read-only: one fact per host, printed as a table; drift is marked with ``!``.
    """
    if is_hypervisor():
        timeout = seconds("command_timeout")
        host_state = host.get_fact(
            Hypervisor, uri=setting("libvirt_uri"), timeout=timeout, _timeout=session_limit(1, timeout + 10)
        )
        # A failed read (libvirtd down or timed out) fails this host with the reason; its empty default
        # would show every VM as absent.
        if host not in host.state.failed_hosts:
            for line in status_lines(_mine(vmspecs), host_state):
                log(line)
    if is_mgmt():
        reservations = host.get_fact(
            DnsmasqReservations, hostsfile=setting("dhcp_hostsfile"), addn_hosts=setting("dns_addn_hosts")
        )
        for line in reservation_lines(_everyone(all_vmspecs), reservations):
            log(line)


def _wait_settings(timeout: float | None) -> tuple[float, str, int]:
    try:
        seconds_ = timeout_value(setting("wait_timeout", timeout))
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    port = setting("wait_ssh_port")
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise SettingError(f"wait_ssh_port={port!r}: expected a TCP port")
    return seconds_, str(setting("dhcp_leasefile")), int(port)


def _after_the_others(state: Any, host: Any, specs: list[VmSpec], config: dict[str, Any], sudo: bool) -> bool:
    """The readiness step on a host other than the management node: nothing to do."""
    return True


def _check_readiness(state: Any, host: Any, specs: list[VmSpec], config: dict[str, Any], sudo: bool) -> bool:
    """Run at execute time on the management node: the probe, its table, and the verdict."""
    timeout = float(config["timeout"])
    result = host.get_fact(
        ReadinessProbe, config_json=json.dumps(config), _sudo=sudo, _timeout=int(timeout) + 30
    )
    if not isinstance(result, dict):
        for line in table_lines(specs, result):
            log(line, on=host)
        if result.note:
            log(result.note, "warning", on=host)
        missing = not_ready(specs, result)
    else:
        missing = ["(the readiness probe printed nothing)"]
    if missing:
        log(f"not ready after {timeout:g} s: {', '.join(missing)}", "error", on=host)
        return False
    return True


@deploy("Readiness")
def wait(all_vmspecs: list[VmSpec] | None = None, timeout: float | None = None) -> None:
    """Wait until every VM holds its DHCP lease and answers SSH (one bounded command on mgmt).

    Prints a table (VM, IP, lease after N s, SSH after N s) and fails, naming them, when VMs are not
    ready within ``timeout`` seconds (data ``wait_timeout``).
    """
    # pyinfra orders operations per host: every host takes this step (a no-op on the others) so that
    # on the management node it runs only after each hypervisor's earlier steps (build, start) are done.
    specs: list[VmSpec] = []
    config: dict[str, Any] = {}
    if is_mgmt():
        seconds_, leasefile, port = _wait_settings(timeout)  # bad values stop the run here
        specs = _everyone(all_vmspecs)
        config = probe_config(specs, seconds_, leasefile, str(setting("dnsmasq_pid_file")), port)
    python.call(
        name="Wait until every VM holds its lease and answers SSH",
        function=_check_readiness if is_mgmt() else _after_the_others,
        specs=specs,
        config=config,
        sudo=flag("mgmt_sudo"),
    )
