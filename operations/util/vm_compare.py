"""One comparison of a vmspec with a libvirt domain: what the manifest wants, what the domain's
persistent definition holds, and the fields where they differ.

Converge (``converge_plan.resource_plan``), status (``deploys/_status.py``), drift (``drift.drift``) and
``--diff`` (``util/domain_diff``) all read these values from here, so they never disagree on what "matches
the manifest" means. The persistent definition is what the VM boots with; a running VM's live values
(a balloon's memory, hot-plugged vCPUs) are the converge plan's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facts.util.host_state import Definition, Domain
from inventories.manifest_model import VmSpec

GIB_KIB = 1024 * 1024


def gib(kib: int) -> str:
    return f"{kib / GIB_KIB:g} GiB"


@dataclass(frozen=True)
class Resources:
    vcpus: int
    max_vcpus: int
    memory_kib: int
    max_memory_kib: int
    data_disks: int  # disks (not CD-ROMs) after the boot disk
    macs: tuple[str, ...]  # the first interface's MAC: the one the manifest sets


def wanted(spec: VmSpec) -> Resources:
    """What the manifest asks for: vCPUs at their maximum, memory, max memory, data disks, the MAC."""
    return Resources(
        spec.vcpus, spec.vcpus, spec.memory_kib, spec.max_memory_kib, spec.num_disks, (spec.mac,)
    )


def definition(domain: Domain) -> Definition:
    """The persistent definition of a domain (the live one for a transient domain)."""
    return domain.config


def configured(domain: Domain) -> Resources:
    """What the domain's persistent definition holds."""
    config = definition(domain)
    disks = [d for d in config.disks if d.is_disk]
    macs = [str(i.mac) for i in config.interfaces]
    vcpus = config.vcpus
    return Resources(
        vcpus=vcpus,
        max_vcpus=config.max_vcpus or vcpus,
        memory_kib=config.memory_kib,
        max_memory_kib=config.max_memory_kib,
        data_disks=len(disks) - 1,
        macs=tuple(macs[:1]),
    )


@dataclass(frozen=True)
class Compared:
    field: str  # vcpus, memory, max memory, data disks, mac
    actual: Any
    wanted: Any
    shown: str  # the actual value as an operator reads it

    @property
    def differs(self) -> bool:
        return bool(self.actual != self.wanted)


def compare(spec: VmSpec, domain: Domain) -> list[Compared]:
    """Each compared value of the domain's persistent definition against the vmspec."""
    have, want = configured(domain), wanted(spec)
    return [
        Compared("vcpus", have.vcpus, want.vcpus, str(have.vcpus)),
        Compared("memory", have.memory_kib, want.memory_kib, gib(have.memory_kib)),
        Compared("max memory", have.max_memory_kib, want.max_memory_kib, gib(have.max_memory_kib)),
        Compared("data disks", have.data_disks, want.data_disks, str(have.data_disks)),
        Compared("mac", list(have.macs), list(want.macs), have.macs[0] if have.macs else "-"),
    ]
