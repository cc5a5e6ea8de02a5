"""Capacity preflight (the original vm-consumptions.sh): does the manifest fit on a host?

Pure: a Hypervisor fact value and the host's vmspecs in, a table row and a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inventories.manifest_model import VmSpec

KIB = 1024


@dataclass(frozen=True)
class CapacityRow:
    host: str
    vcpus: int
    cpus: int
    memory_kib: int
    host_memory_kib: int
    overcommit: float
    pool_free: dict[str, int] = field(default_factory=dict)
    disk_needs: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.vcpus > self.cpus * self.overcommit:
            out.append(f"{self.vcpus} vCPUs > {self.cpus} CPUs x {self.overcommit:g}")
        if self.memory_kib > self.host_memory_kib * self.overcommit:
            out.append(
                f"{self.memory_kib / KIB**2:.1f} GiB memory > "
                f"{self.host_memory_kib / KIB**2:.1f} GiB x {self.overcommit:g}"
            )
        for pool, need in self.disk_needs.items():
            free = self.pool_free.get(pool, 0)
            if need > free:
                out.append(f"pool {pool} needs {need / KIB**3:.1f} GiB, has {free / KIB**3:.1f} GiB free")
        return out

    def table_line(self) -> str:
        verdict = "; ".join(self.problems) or "ok"
        return (
            f"{self.host:<16} vCPUs {self.vcpus:>4}/{self.cpus}x{self.overcommit:g}  "
            f"memory {self.memory_kib / KIB**2:>7.1f}/{self.host_memory_kib / KIB**2:.1f} GiB  {verdict}"
        )


def capacity_row(
    host_name: str, specs: list[VmSpec], snapshot: dict[str, Any], overcommit: float
) -> CapacityRow:
    """What this host would carry after the build: the manifest's VMs plus other domains already defined.

    Base VMs used as clone sources are not counted (they are templates, not workloads). Disk need is
    the data a full clone copies (allocation of the source disks); linked clones and data disks are thin.
    """
    domains = snapshot.get("domains", {})
    capacity = snapshot.get("capacity", {})
    sources = {spec.srcvm for spec in specs}
    manifest_names = {spec.name for spec in specs}
    others = [d for name, d in domains.items() if name not in manifest_names and name not in sources]
    vcpus = sum(spec.vcpus for spec in specs) + sum(int(d.get("vcpus") or 0) for d in others)
    memory = sum(spec.memory_kib for spec in specs) + sum(int(d.get("memory_kib") or 0) for d in others)

    allocation_by_path = {
        vol.get("path"): int(vol.get("allocation") or 0)
        for vols in snapshot.get("volumes", {}).values()
        for vol in vols.values()
    }
    needs: dict[str, int] = {}
    for spec in specs:
        if spec.name in domains or spec.clone != "full" or spec.srcvm not in domains:
            continue
        for disk in domains[spec.srcvm].get("disks", []):
            if disk.get("device") == "disk" and disk.get("path"):
                needs[spec.pool] = needs.get(spec.pool, 0) + allocation_by_path.get(disk["path"], 0)
    pool_free = {name: int(p.get("available") or 0) for name, p in snapshot.get("pools", {}).items()}
    return CapacityRow(
        host=host_name,
        vcpus=vcpus,
        cpus=int(capacity.get("cpus") or 0),
        memory_kib=memory,
        host_memory_kib=int(capacity.get("memory_kib") or 0),
        pool_free=pool_free,
        overcommit=overcommit,
        disk_needs=needs,
    )
