"""Spec-vs-actual rows of the status deploy (deploys/vms.py, pure)."""

from __future__ import annotations

from typing import Any

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import VmSpec
from operations.util.vm_compare import compare


def _cell(actual: Any, wanted: Any, text: str) -> str:
    return text if actual == wanted else f"{text}!"


def status_lines(specs: list[VmSpec], host_state: HostState) -> list[str]:
    domains = host_state.domains
    lines = [
        f"{'VM':<20} {'STATE':<10} {'VCPUS':<7} {'MEMORY':<10} {'MAX':<10} {'DISKS':<6} {'MAC':<18} SNAPSHOTS"
    ]
    for spec in specs:
        domain = domains.get(spec.name)
        if domain is None:
            lines.append(f"{spec.name:<20} {'absent!':<10}")
            continue
        cells = [_cell(c.actual, c.wanted, c.shown) for c in compare(spec, domain)]
        lines.append(
            f"{spec.name:<20} {domain.state:<10} "
            f"{cells[0]:<7} {cells[1]:<10} {cells[2]:<10} {cells[3]:<6} {cells[4]:<18} "
            f"{snapshot_cell(spec, domain)}"
        )
    return lines


def snapshot_cell(spec: VmSpec, domain: Domain) -> str:
    """The domain's snapshots oldest first, ``*`` on the current one; manifest ones missing: ``NAME!``."""
    have = domain.snapshots
    names = [(s.name or "") + ("*" if s.current else "") for s in have]
    names += [f"{n}!" for n in spec.snapshots if n not in {s.name for s in have}]
    return ",".join(names) or "-"


def reservation_lines(specs: list[VmSpec], reservations: dict[str, dict[str, str]]) -> list[str]:
    lines = [f"{'VM':<20} {'MAC':<18} {'IP':<16} NAME"]
    for spec in specs:
        entry = reservations.get(spec.mac)
        if entry is None:
            lines.append(f"{spec.name:<20} {spec.mac:<18} {'no reservation!':<16}")
            continue
        ok = entry.get("ip") == spec.ipaddress and entry.get("hostname") == spec.hostname
        lines.append(
            f"{spec.name:<20} {spec.mac:<18} {entry.get('ip', ''):<16} {entry.get('hostname', '')}"
            + ("" if ok else "  (differs from manifest!)")
        )
    return lines
