"""Capacity preflight (the original vm-consumptions.sh): does the manifest fit on a host?

Pure: a Hypervisor fact value and the host's vmspecs in, a table row and a verdict out. vCPUs and memory
have separate allocation ratios: a host offers ``CPUs x vcpu_ratio`` vCPUs and ``memory x memory_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facts.util.host_state import HostState
from inventories.manifest_model import VmSpec

KIB = 1024
DEFAULT_VCPU_RATIO = 4.0
DEFAULT_MEMORY_RATIO = 1.0


@dataclass(frozen=True)
class CapacityRow:
    host: str
    vcpus: int
    cpus: int
    memory_kib: int
    host_memory_kib: int
    vcpu_ratio: float = DEFAULT_VCPU_RATIO
    memory_ratio: float = DEFAULT_MEMORY_RATIO
    pool_free: dict[str, int] = field(default_factory=dict)
    disk_needs: dict[str, int] = field(default_factory=dict)
    vms: tuple[tuple[str, int, int], ...] = ()  # the manifest's VMs here: (name, vCPUs, memory KiB)

    @property
    def vcpu_limit(self) -> float:
        return self.cpus * self.vcpu_ratio

    @property
    def memory_limit_kib(self) -> float:
        return self.host_memory_kib * self.memory_ratio

    @property
    def problems(self) -> list[str]:
        out = []
        if self.vcpus > self.vcpu_limit:
            out.append(f"{self.vcpus} vCPUs > {self.cpus} CPUs x {self.vcpu_ratio:g}")
        if self.memory_kib > self.memory_limit_kib:
            out.append(
                f"{self.memory_kib / KIB**2:.1f} GiB memory > "
                f"{self.host_memory_kib / KIB**2:.1f} GiB x {self.memory_ratio:g}"
            )
        for pool, need in self.disk_needs.items():
            free = self.pool_free.get(pool, 0)
            if need > free:
                out.append(f"pool {pool} needs {need / KIB**3:.1f} GiB, has {free / KIB**3:.1f} GiB free")
        return out

    def room_for(self, vcpus: int, memory_kib: int) -> bool:
        """True when this host, as planned, still has ``vcpus`` and ``memory_kib`` to spare."""
        return (
            not self.problems
            and self.vcpus + vcpus <= self.vcpu_limit
            and self.memory_kib + memory_kib <= self.memory_limit_kib
        )

    def table_line(self) -> str:
        verdict = "; ".join(self.problems) or "ok"
        return (
            f"{self.host:<16} vCPUs {self.vcpus:>4}/{self.cpus}x{self.vcpu_ratio:g}  "
            f"memory {self.memory_kib / KIB**2:>7.1f}/{self.host_memory_kib / KIB**2:.1f} GiB"
            f"x{self.memory_ratio:g}  {verdict}"
        )


TABLE_HEADER = f"{'host':<16} {'vCPUs':>6} {'limit':>7} {'memory GiB':>11} {'limit':>7}  verdict"


def _table_row(row: CapacityRow) -> str:
    return (
        f"{row.host:<16} {row.vcpus:>6} {row.vcpu_limit:>7g} {row.memory_kib / KIB**2:>11.1f} "
        f"{row.memory_limit_kib / KIB**2:>7.1f}  {'; '.join(row.problems) or 'ok'}"
    )


def refusal_message(refused: CapacityRow, others: list[CapacityRow]) -> str:
    """Why ``refused`` is not built: a table of every host known in this run, and per VM of the refused
    host the other hosts where it would fit (as the manifest stands, so moving several VMs may not)."""
    lines = [
        f"capacity preflight refused the build on {refused.host} (nothing was changed on it):",
        f"  {TABLE_HEADER}",
    ]
    peers = sorted((r for r in others if r.host != refused.host), key=lambda r: r.host)
    lines += [f"  {_table_row(r)}" for r in [refused, *peers]]
    for vm, vcpus, memory_kib in refused.vms:
        fits = [r.host for r in peers if r.room_for(vcpus, memory_kib)]
        where = ", ".join(fits) or "no other host"
        lines.append(f"  {vm} ({vcpus} vCPU, {memory_kib / KIB**2:g} GiB) would fit on: {where}")
    lines.append(
        "  move VMs to another host in the manifest, shrink them, or raise "
        "--data vcpu_allocation_ratio=<r> / memory_allocation_ratio=<r>"
    )
    return "\n".join(lines)


def capacity_row(
    host_name: str,
    specs: list[VmSpec],
    host: HostState,
    vcpu_ratio: float = DEFAULT_VCPU_RATIO,
    memory_ratio: float = DEFAULT_MEMORY_RATIO,
) -> CapacityRow:
    """What this host would carry after the build: the manifest's VMs plus other domains already defined.

    Base VMs used as clone sources are not counted (they are templates, not workloads). Disk need is
    the data a full clone copies (allocation of the source disks); linked clones and data disks are thin.
    """
    domains = host.domains
    capacity = host.capacity
    sources = {spec.srcvm for spec in specs}
    manifest_names = {spec.name for spec in specs}
    others = [d for name, d in domains.items() if name not in manifest_names and name not in sources]
    vcpus = sum(spec.vcpus for spec in specs) + sum(d.vcpus for d in others)
    memory = sum(spec.memory_kib for spec in specs) + sum(d.memory_kib for d in others)

    allocation_by_path = {vol.path: vol.allocation for vol in host.all_volumes()}
    needs: dict[str, int] = {}
    for spec in specs:
        if spec.name in domains or spec.clone != "full" or spec.srcvm not in domains:
            continue
        for disk in domains[spec.srcvm].disks:
            if disk.is_disk and disk.path:
                needs[spec.pool] = needs.get(spec.pool, 0) + allocation_by_path.get(disk.path, 0)
    pool_free = {name: p.available for name, p in host.pools.items()}
    return CapacityRow(
        host=host_name,
        vcpus=vcpus,
        cpus=capacity.cpus,
        memory_kib=memory,
        host_memory_kib=capacity.memory_kib,
        vcpu_ratio=vcpu_ratio,
        memory_ratio=memory_ratio,
        pool_free=pool_free,
        disk_needs=needs,
        vms=tuple((spec.name, spec.vcpus, spec.memory_kib) for spec in specs),
    )
