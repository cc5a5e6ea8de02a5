"""``--diff`` for the libvirt operations: each VM's vCPUs, memory, max memory, disks, power state and
autostart before -> after, from the Hypervisor fact and the plans. Pure: no I/O, lines out.

Values are the persistent definition (what the VM boots with); a running VM's live values are in the
plan's own lines (``(live)`` actions and notes).
"""

from __future__ import annotations

from collections.abc import Iterable

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import VmSpec
from operations.util.domain_xml import CloneError, data_disk_targets, source_disks
from operations.util.vm_compare import configured, definition, gib, wanted

ABSENT = "absent"
FIELDS = ("vCPUs", "memory", "max memory", "disks", "power state", "autostart")

View = dict[str, str]


def _disks(targets: Iterable[str]) -> str:
    return ", ".join(targets) or "none"


def domain_view(domain: Domain) -> View:
    """What a defined domain is, as the diff shows it."""
    cfg, have = definition(domain), configured(domain)
    return {
        "vCPUs": str(have.vcpus),
        "memory": gib(have.memory_kib),
        "max memory": gib(have.max_memory_kib),
        "disks": _disks(d.target or "?" for d in cfg.disks if d.is_disk),
        "power state": domain.state,
        "autostart": "on" if domain.autostart else "off",
    }


def render(vm: str, before: View | None, after: View | None) -> list[str]:
    """``vm: field before -> after`` for each field that differs (absent on one side: every field)."""
    lines = []
    for key in FIELDS:
        old = before[key] if before else ABSENT
        new = after[key] if after else ABSENT
        if old != new:
            lines.append(f"{vm}: {key} {old} -> {new}")
    return lines


def spec_view(spec: VmSpec, domain: Domain | None, source: Domain | None) -> View | None:
    """What ``deploys/build.py``/``resize.py`` make of the VM: ``domain`` as it is (None: cloned from
    ``source``). None when the result is unknown (no base to clone)."""
    want = wanted(spec)
    resources = {
        "vCPUs": str(want.vcpus),
        "memory": gib(want.memory_kib),
        "max memory": gib(want.max_memory_kib),
    }
    if domain is not None:
        view = domain_view(domain)
        cfg = definition(domain)
        disks = [d.target or "?" for d in cfg.disks if d.is_disk]
        if disks:
            try:
                added = data_disk_targets(disks[:1], want.data_disks)
            except CloneError:
                added = []
            disks += [t for t in added if t not in disks]
        autostart = view["autostart"] if spec.autostart is None else ("on" if spec.autostart else "off")
        return {
            **view,
            **resources,
            "disks": _disks(disks),
            "autostart": autostart,
        }
    if source is None:
        return None
    try:
        # What the clone would have: its disks as the clone plans them from the XML it rewrites.
        base = [d.target for d in source_disks(source.xml)]
        disks = base + data_disk_targets(base, want.data_disks)
    except CloneError:
        return None
    return {
        **resources,
        "disks": _disks(disks),
        "power state": "shut off",
        "autostart": "on" if spec.autostart else "off",
    }


def build_diff(specs: list[VmSpec], host: HostState, changed: set[str] | None = None) -> list[str]:
    """Before -> after of every VM the build or resize changes (``changed``: names with a command)."""
    domains = host.domains
    lines: list[str] = []
    for spec in specs:
        if changed is not None and spec.name not in changed:
            continue
        domain = domains.get(spec.name)
        after = spec_view(spec, domain, domains.get(spec.srcvm))
        if after is not None:
            lines += render(spec.name, domain_view(domain) if domain else None, after)
    return lines


def power_diff(names: list[str], domains: dict[str, Domain], to_state: str) -> list[str]:
    """Power state before -> ``to_state`` for the domains whose state differs."""
    return [
        f"{vm}: power state {domains[vm].state} -> {to_state}"
        for vm in names
        if vm in domains and domains[vm].state != to_state
    ]


def delete_diff(names: list[str], domains: dict[str, Domain]) -> list[str]:
    """Every field of each defined domain -> absent."""
    lines: list[str] = []
    for vm in names:
        if vm in domains:
            lines += render(vm, domain_view(domains[vm]), None)
    return lines
