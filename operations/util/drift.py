"""Cluster-wide drift and orphans: the manifest, every hypervisor's ``Hypervisor`` fact and the management
node's reservations in, findings and a prune plan out.

Pure: no I/O. ``deploys/cluster_drift.py`` reads the facts (one round trip per host) and prints the
findings; the prune workflow removes only what ``prune_plan`` returns, and ``operations/orphans.py``
checks each volume again on its host right before it removes it.

What counts as the tool's own (and so may be pruned):

- a volume named like the build names disks (``<vm>-vd*`` in a storage pool directory) whose ``<vm>``
  has no domain, that is a plain file, and that no domain uses as a disk or backing file (the delete
  workflow's rules, ``owned_volumes``). In shared storage (``shared_dirs``, network pools) only when
  every hypervisor was read and none defines ``<vm>`` or uses the file;
- a DHCP reservation (the dhcp-hosts file holds only lines the tool wrote) whose MAC no manifest VM
  has, that no domain on any hypervisor carries, and whose name no domain has; only when every
  hypervisor was read.

Everything else (foreign domains, foreign files, ISOs, base images) is only ever reported.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import VmSpec
from operations.util.storage_ownership import NETWORK_POOLS, in_use, owned_volumes
from operations.util.vm_compare import compare

# The build names a VM's disks <vm>-vda, <vm>-vdb, ... (with an optional extension).
VOLUME_NAME = re.compile(r"^(?P<vm>.+)-vd[a-z]+(\.[A-Za-z0-9]+)?$")

KINDS = (
    "unread-host",
    "duplicate",
    "wrong-host",
    "unmanaged-domain",
    "absent",
    "resources",
    "orphan-volume",
    "reservation",
    "stale-reservation",
)


@dataclass(frozen=True)
class Finding:
    """One drift: ``kind`` (one of ``KINDS``), what it is about, where, and why.

    ``host`` is the hypervisor concerned (for a prunable volume: the one that removes it), the
    management node's ``mgmt`` for reservations, empty for the cluster. ``prunable``: the prune
    workflow removes it.
    """

    kind: str
    subject: str
    host: str
    detail: str
    prunable: bool = False

    def line(self) -> str:
        mark = " (prune removes it)" if self.prunable else ""
        where = f" on {self.host}" if self.host else ""
        return f"{self.kind}: {self.subject}{where}: {self.detail}{mark}"


@dataclass(frozen=True)
class PrunePlan:
    volumes: dict[str, list[str]]  # hypervisor -> paths it removes
    reservations: list[dict[str, str]]  # {mac, ip, hostname, short} removed on the management node

    def empty(self) -> bool:
        return not self.reservations and not any(self.volumes.values())


def drift(spec: VmSpec, domain: Domain) -> list[tuple[str, Any, Any]]:
    """(field, actual, wanted) for each configured value that differs from the manifest."""
    return [(c.field, c.actual, c.wanted) for c in compare(spec, domain) if c.differs]


def _shared(host: HostState, shared_dirs: tuple[str, ...]) -> set[str]:
    return {posixpath.normpath(d) for d in shared_dirs} | {
        posixpath.normpath(p.path) for p in host.pools.values() if p.path and p.type in NETWORK_POOLS
    }


def _pool_files(host: HostState) -> dict[str, str]:
    """path -> pool name, for every file the fact saw in a pool directory."""
    pools_by_dir = {posixpath.normpath(p.path): name for name, p in host.pools.items() if p.path}
    paths = list(host.files) + [v.path for v in host.all_volumes() if v.path]
    found: dict[str, str] = {}
    for path in paths:
        path = posixpath.normpath(path)
        directory = posixpath.dirname(path)
        if directory in pools_by_dir:
            found[path] = pools_by_dir[directory]
    return found


def _kind(host: HostState, path: str) -> str:
    files = {posixpath.normpath(p): e for p, e in host.files.items()}
    entry = files.get(path)
    return entry.kind if entry is not None else "file"


def free_here(path: str, host: HostState) -> str | None:
    """None when nothing on this host keeps ``path``, else why: the delete workflow's in-use rules
    (a disk or backing file of any domain, the backing file of another file, not a plain file) and a
    domain named after the file."""
    path = posixpath.normpath(path)
    match = VOLUME_NAME.match(posixpath.basename(path))
    if match is None:
        return "not named <vm>-vd*"
    if match["vm"] in host.domains:
        return f"domain {match['vm']} is defined"
    used = in_use(host)
    if path in used:
        return used[path]
    backs = sorted(p for p, b in host.backing_map().items() if b == path and p != path)
    if backs:
        return f"backing file of {backs[0]}"
    kind = _kind(host, path)
    if kind != "file":
        return f"a {kind}, not a plain file"
    return None


def orphan_volumes(
    states: dict[str, HostState | None],
    shared_dirs: tuple[str, ...] = (),
    manifest_vms: frozenset[str] = frozenset(),
    bases: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Owned-pattern volumes with no domain, one finding per path (a shared path once).

    Prunable only when nothing may still want them: not a base image (``<vm>`` is a ``srcvm`` of the
    manifest) and not a VM the manifest names (the delete or build workflow decides about those), and
    in shared storage only when every hypervisor was read and none uses the file.
    """
    read = {h: s for h, s in states.items() if s is not None}
    unread = sorted(set(states) - set(read))
    found: list[tuple[str, str, str, str]] = []  # path, host, vm, where
    shared_seen: dict[str, list[str]] = {}
    for host_name in sorted(read):
        host = read[host_name]
        shared = _shared(host, shared_dirs)
        for path, pool in sorted(_pool_files(host).items()):
            match = VOLUME_NAME.match(posixpath.basename(path))
            if match is None or match["vm"] in host.domains:
                continue
            if posixpath.dirname(path) in shared:
                shared_seen.setdefault(path, []).append(host_name)
                continue
            owned, _ = owned_volumes(match["vm"], None, host, ())
            if (pool, posixpath.basename(path)) in owned:
                found.append((path, host_name, match["vm"], f"pool {pool}"))
    for path, seen_on in sorted(shared_seen.items()):
        if any(free_here(path, read[h]) is not None for h in read):
            continue  # used (or not a plain file) somewhere: not an orphan
        match = VOLUME_NAME.match(posixpath.basename(path))
        assert match is not None
        found.append((path, seen_on[0], match["vm"], f"shared storage, seen on {', '.join(seen_on)}"))
    findings: list[Finding] = []
    for path, host_name, vm, where in found:
        shared_path = not where.startswith("pool ")
        if vm in bases:
            findings.append(Finding("orphan-volume", path, host_name, f"{where}: base image of {vm}; kept"))
        elif vm in manifest_vms:
            findings.append(
                Finding(
                    "orphan-volume", path, host_name, f"{where}: no domain {vm} here; the manifest names {vm}"
                )
            )
        elif shared_path and unread:
            findings.append(
                Finding(
                    "orphan-volume", path, host_name, f"{where}: not provable, {', '.join(unread)} not read"
                )
            )
        else:
            findings.append(
                Finding("orphan-volume", path, host_name, f"{where}: no domain {vm}, unused", True)
            )
    return findings


def _macs(domain: Domain) -> set[str]:
    return {i.mac.lower() for i in domain.interfaces + domain.config.interfaces if i.mac}


@dataclass(frozen=True)
class _Survey:
    """What ``find`` compares: the manifest's VMs by name (with their hypervisor), the base VMs they
    clone from, the hypervisors read and not read, and where each domain read is defined."""

    specs: dict[str, tuple[str, VmSpec]]  # vm -> (hypervisor the manifest places it on, spec)
    bases: set[str]
    read: dict[str, HostState]
    unread: list[str]
    defined_on: dict[str, list[str]]  # domain -> hypervisors defining it, in name order


def _survey(placement: dict[str, list[VmSpec]], states: dict[str, HostState | None]) -> _Survey:
    read = {h: s for h, s in states.items() if s is not None}
    specs = {spec.name: (h, spec) for h, vms in placement.items() for spec in vms}
    defined_on: dict[str, list[str]] = {}
    for host_name in sorted(read):
        for name in read[host_name].domains:
            defined_on.setdefault(name, []).append(host_name)
    return _Survey(
        specs=specs,
        bases={spec.srcvm for _, spec in specs.values()},
        read=read,
        unread=sorted(set(states) - set(read)),
        defined_on=defined_on,
    )


def _unread_hosts(survey: _Survey) -> list[Finding]:
    """Hypervisors whose fact could not be read."""
    detail = "not read (unreachable, failed or outside --limit); nothing is concluded about it"
    return [Finding("unread-host", h, "", detail) for h in survey.unread]


def _misplaced_domains(survey: _Survey) -> list[Finding]:
    """Domains defined on several hosts, on another host than the manifest's, or named by no manifest
    entry (base VMs excepted)."""
    findings: list[Finding] = []
    for name, hosts in sorted(survey.defined_on.items()):
        if name in survey.specs:
            wanted = survey.specs[name][0]
            if len(hosts) > 1:
                detail = f"defined on {', '.join(hosts)}; the manifest places it on {wanted}"
                findings.append(Finding("duplicate", name, "", detail))
            elif hosts[0] != wanted:
                findings.append(Finding("wrong-host", name, hosts[0], f"the manifest places it on {wanted}"))
        elif name not in survey.bases:
            findings += [Finding("unmanaged-domain", name, h, "no manifest entry names it") for h in hosts]
    return findings


def _absent_or_differing(survey: _Survey) -> list[Finding]:
    """Manifest VMs defined nowhere (when their host was read), and those on their host whose configured
    values differ from the manifest."""
    findings: list[Finding] = []
    for vm, (wanted, spec) in sorted(survey.specs.items()):
        if vm not in survey.defined_on:
            if wanted in survey.read:
                findings.append(Finding("absent", vm, wanted, "defined on no host read"))
            continue
        here = survey.read.get(wanted)
        domain = here.domains.get(vm) if here is not None else None
        differs = drift(spec, domain) if domain is not None else []
        if differs:
            detail = "; ".join(f"{f} {_show(a)}, manifest {_show(w)}" for f, a, w in differs)
            findings.append(Finding("resources", vm, wanted, detail))
    return findings


def _reservations_missing_or_wrong(
    survey: _Survey, reservations: dict[str, dict[str, str]], mgmt: str
) -> list[Finding]:
    """Manifest VMs with no reservation for their MAC, or one with another IP or hostname."""
    findings: list[Finding] = []
    for vm, (_, spec) in sorted(survey.specs.items()):
        entry = reservations.get(spec.mac) or reservations.get(spec.mac.lower())
        if entry is None:
            findings.append(Finding("reservation", vm, mgmt, f"no reservation for {spec.mac}"))
        elif entry.get("ip") != spec.ipaddress or entry.get("hostname") != spec.hostname:
            reserved = f"{entry.get('ip')} {entry.get('hostname')}"
            detail = f"reserved {reserved}, manifest {spec.ipaddress} {spec.hostname}"
            findings.append(Finding("reservation", vm, mgmt, detail))
    return findings


def _mac_holders(survey: _Survey) -> dict[str, str]:
    """MAC (lower case) -> ``domain <name> on <host>``, the first domain read that carries it."""
    carried: dict[str, str] = {}
    for host_name, host in sorted(survey.read.items()):
        for name, domain in host.domains.items():
            for mac in _macs(domain):
                carried.setdefault(mac, f"domain {name} on {host_name}")
    return carried


def _foreign_reservations(
    survey: _Survey, reservations: dict[str, dict[str, str]], mgmt: str
) -> list[Finding]:
    """Reservations whose MAC no manifest VM has: kept when a domain uses the MAC or the name, not
    provable when a hypervisor was not read, else stale (prunable)."""
    manifest_macs = {spec.mac.lower() for _, spec in survey.specs.values()}
    carried = _mac_holders(survey)
    findings: list[Finding] = []
    for mac, entry in sorted(reservations.items()):
        if mac.lower() in manifest_macs:
            continue
        what = f"{entry.get('ip')} {entry.get('hostname')}"
        short = entry.get("short") or str(entry.get("hostname", "")).split(".")[0]
        holder = carried.get(mac.lower()) or (
            f"domain {short} on {', '.join(survey.defined_on[short])}" if short in survey.defined_on else None
        )
        if holder:
            detail = f"{what}: no manifest VM has this MAC ({holder} uses it)"
            findings.append(Finding("reservation", mac, mgmt, detail))
        elif survey.unread:
            detail = f"{what}: no manifest VM; not provable: {', '.join(survey.unread)} not read"
            findings.append(Finding("stale-reservation", mac, mgmt, detail))
        else:
            detail = f"{what}: no manifest VM, no domain on any host"
            findings.append(Finding("stale-reservation", mac, mgmt, detail, True))
    return findings


def _in_report_order(findings: list[Finding]) -> list[Finding]:
    """By kind (in ``KINDS`` order), then subject, then host."""
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], f.subject, f.host))


def find(
    placement: dict[str, list[VmSpec]],
    states: dict[str, HostState | None],
    reservations: dict[str, dict[str, str]] | None,
    shared_dirs: tuple[str, ...] = (),
    mgmt: str = "mgmt",
) -> list[Finding]:
    """Every drift of the cluster, in a fixed order (by kind, then subject).

    ``placement``: hypervisor -> the manifest's VMs on it; ``states``: hypervisor -> its
    ``Hypervisor`` fact, None when it could not be read (nothing is concluded from its absence);
    ``reservations``: the ``DnsmasqReservations`` fact of ``mgmt``, None when not read.
    """
    survey = _survey(placement, states)
    findings = _unread_hosts(survey) + _misplaced_domains(survey) + _absent_or_differing(survey)
    findings += orphan_volumes(states, shared_dirs, frozenset(survey.specs), frozenset(survey.bases))
    if reservations is not None:
        findings += _reservations_missing_or_wrong(survey, reservations, mgmt)
        findings += _foreign_reservations(survey, reservations, mgmt)
    return _in_report_order(findings)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def prune_plan(findings: list[Finding], reservations: dict[str, dict[str, str]] | None) -> PrunePlan:
    """What the prune workflow removes: the prunable findings, nothing else."""
    volumes: dict[str, list[str]] = {}
    entries: list[dict[str, str]] = []
    for finding in findings:
        if not finding.prunable:
            continue
        if finding.kind == "orphan-volume":
            volumes.setdefault(finding.host, []).append(finding.subject)
        elif finding.kind == "stale-reservation" and reservations is not None:
            entry = reservations[finding.subject]
            entries.append({k: entry[k] for k in ("mac", "ip", "hostname", "short") if k in entry})
    return PrunePlan(volumes, entries)


def report_lines(findings: list[Finding]) -> list[str]:
    if not findings:
        return ["no drift: every domain, volume and reservation matches the manifest"]
    counts = {k: sum(1 for f in findings if f.kind == k) for k in KINDS}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return [f"drift: {summary}"] + [f"  {f.line()}" for f in findings]


def recheck(paths: list[str], host: HostState) -> tuple[list[str], list[str]]:
    """At removal time on the host itself: (paths still free here, ``path (why)`` kept)."""
    known = _pool_files(host)
    free: list[str] = []
    kept: list[str] = []
    for path in paths:
        path = posixpath.normpath(path)
        why = "not in a storage pool directory" if path not in known else free_here(path, host)
        if why is None:
            free.append(path)
        else:
            kept.append(f"{path} ({why})")
    return free, kept


def running_pools(paths: list[str], host: HostState) -> list[str]:
    known = _pool_files(host)
    active = {name for name, pool in host.pools.items() if pool.active}
    return sorted({known[p] for p in paths if p in known and known[p] in active})


__all__ = [
    "Finding",
    "PrunePlan",
    "find",
    "free_here",
    "orphan_volumes",
    "prune_plan",
    "recheck",
    "report_lines",
    "running_pools",
]
