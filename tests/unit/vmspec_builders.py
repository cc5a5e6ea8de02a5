"""The vmspecs of the unit tests: one builder, ``vmspec``, and the named VMs several test modules share.

``vmspec(name, ipaddress, ...)`` derives the hostname (``<name>.<domain>``) and the MAC (``mac_for``)
from the name unless they are given. The named VMs keep their whole identity (hostname and MAC) when a
test overrides only their ``name``; any field may be overridden.
"""

from __future__ import annotations

from typing import Any

from inventories.manifest_model import VmSpec, mac_for


def vmspec(
    name: str = "vm01",
    ipaddress: str = "10.10.5.11",
    *,
    domain: str = "example.internal",
    vcpus: int = 2,
    memory_gib: int = 1,
    max_memory_gib: int = 2,
    num_disks: int = 1,
    disk_size_gib: int = 5,
    **fields: Any,
) -> VmSpec:
    """A VM of the manifest: 2 vCPUs, 1 GiB (at most 2), one 5 GiB disk unless told otherwise."""
    fields.setdefault("hostname", f"{name}.{domain}")
    fields.setdefault("mac", mac_for(name))
    return VmSpec(
        name=name,
        ipaddress=ipaddress,
        vcpus=vcpus,
        memory_gib=memory_gib,
        max_memory_gib=max_memory_gib,
        num_disks=num_disks,
        disk_size_gib=disk_size_gib,
        **fields,
    )


def kvmhost01(**overrides: Any) -> VmSpec:
    """``kvmhost01.chnet.internal`` (10.10.5.11): 2 vCPUs, 2 GiB (at most 4), one 10 GiB disk."""
    identity = {"name": "kvmhost01", "hostname": "kvmhost01.chnet.internal", "mac": mac_for("kvmhost01")}
    return vmspec(**(identity | {"memory_gib": 2, "max_memory_gib": 4, "disk_size_gib": 10} | overrides))


def kvmhost01_with_cloud_init(**overrides: Any) -> VmSpec:
    """``kvmhost01`` with its cloud-init seed (``cloud_init=True``)."""
    return kvmhost01(**({"cloud_init": True} | overrides))


def fx_off(**overrides: Any) -> VmSpec:
    """``fx-off.example.internal`` (10.0.0.5, MAC 52:54:00:00:0f:02): 1 vCPU, 1 GiB, one 2 GiB disk."""
    identity = {"name": "fx-off", "hostname": "fx-off.example.internal", "mac": "52:54:00:00:0f:02"}
    sizes = {"vcpus": 1, "memory_gib": 1, "max_memory_gib": 1, "disk_size_gib": 2}
    return vmspec(**(identity | {"ipaddress": "10.0.0.5"} | sizes | overrides))


def vm1_diskless(**overrides: Any) -> VmSpec:
    """``vm1.x.internal`` (10.10.5.11): 1 vCPU, 1 GiB, no disks."""
    identity = {"name": "vm1", "hostname": "vm1.x.internal", "mac": mac_for("vm1")}
    sizes = {"vcpus": 1, "memory_gib": 1, "max_memory_gib": 1, "num_disks": 0, "disk_size_gib": 0}
    return vmspec(**(identity | sizes | overrides))


def placed(name: str, vcpus: int = 1, memory: int = 1, **fields: Any) -> VmSpec:
    """A diskless VM of the placement tests: ``<name>.example.org`` at 10.10.5.9, ``memory`` GiB fixed."""
    return vmspec(
        name, "10.10.5.9", domain="example.org", vcpus=vcpus, memory_gib=memory, max_memory_gib=memory,
        num_disks=0, disk_size_gib=0, **fields,
    )  # fmt: skip


def fx_new(**overrides: Any) -> VmSpec:
    """``fx-new.example.internal`` (10.0.0.5): 2 vCPUs, 1 GiB (at most 2), one 2 GiB disk."""
    identity = {"name": "fx-new", "hostname": "fx-new.example.internal", "mac": mac_for("fx-new")}
    return vmspec(**(identity | {"ipaddress": "10.0.0.5", "disk_size_gib": 2} | overrides))
