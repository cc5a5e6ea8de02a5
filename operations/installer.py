"""Installer VMs: a base VM made from an ISO (the original `kvmsh --console --bootsize N create`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host, logger
from pyinfra.api import operation

from operations.util.installer_plan import InstallerSpec, installer_plan
from operations.util.plan_commands import UNREAD, hypervisor_state, limited
from operations.util.virsh import DEFAULT_TIMEOUT, DEFAULT_URI, fail


@operation()
def installer_vm(
    spec: InstallerSpec, uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT
) -> Generator[Any, None, None]:
    """Define and start a VM that boots an ISO from a storage pool onto a new, empty boot disk.

    + spec: ``InstallerSpec`` (name, ISO volume and its pool, pool and size of the boot disk, vCPUs,
      memory, UEFI or BIOS, serial console, VNC on 127.0.0.1 or no graphics, bridge, domain type)
    + uri: libvirt connection URI
    + command_timeout: seconds any one remote step may take

    Made once: when a domain of that name exists (installing, installed, or anything else) nothing is
    done. The boot disk is a new 0600 file ``<name>-vda.img`` in the pool (an existing file or link
    is refused); if the define or the start fails, the domain and the disk are removed again.

    **Example:**

    .. code:: python

        installer.installer_vm(
            name="Installer VM centos7",
            spec=InstallerSpec(vm="centos7", iso="CentOS-7-x86_64-Minimal-2009.iso",
                               iso_pool="secondary", pool="secondary", boot_size_gib=80),
        )
    """
    spec.check()
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    plan = installer_plan(spec, host_state, uri, command_timeout)
    if plan is None:
        state = host_state.domains[spec.vm].state
        host.noop(f"domain {spec.vm} already exists ({state}): left as it is")
        return
    logger.info(f"{getattr(host, 'print_prefix', '')}{plan.summary()}")
    if plan.error:
        yield fail(f"{spec.vm}: {plan.error}")
        return
    yield limited(plan)
