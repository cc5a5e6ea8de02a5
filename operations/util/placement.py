"""Placement: which VMs move between hypervisors, whether they may, and the commands that move them.

Pure: every hypervisor's Hypervisor fact value and the manifest in, moves and refusals out. A VM that the
manifest puts on host B while it is defined on host A moves from A to B (live when it runs, offline when it
is shut off); a drain moves every VM off one host onto the others within capacity. Before anything moves
every move passes a preflight; any refusal stops every move of the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pyinfra.api import QuoteString, StringCommand

from facts.util.host_state import Disk, Domain, HostState
from inventories import defaults
from inventories.manifest_model import VmSpec
from operations.util.capacity import CapacityRow, capacity_row
from operations.util.storage_ownership import needed_by_others
from operations.util.virsh import DEFAULT_TIMEOUT, all_of, bounded, virsh

# Cache modes qemu opens with O_DIRECT and without a host page cache: the only ones libvirt accepts for a
# live migration of a disk that both hosts open (it refuses others unless told --unsafe).
SAFE_CACHE_MODES = ("none", "directsync")
# CPU modes that hand the guest the host's own CPU: only as migratable as the two hosts' CPUs are alike.
HOST_CPU_MODES = ("host-passthrough", "maximum")
DEFAULT_MIGRATE_TIMEOUT = defaults.MIGRATE_TIMEOUT


@dataclass(frozen=True)
class Target:
    """How to reach a destination hypervisor for a migration (its host data)."""

    uri: str  # the destination's libvirt as the source reaches it, e.g. qemu+ssh://root@sm-02/system
    address: str | None = None  # where the destination's qemu listens for the migration stream
    unsafe: bool = False  # pass --unsafe (shared storage libvirt cannot recognise as such)


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    destination: str
    live: bool
    shared_disks: tuple[str, ...] = ()  # paths in shared storage: moved by reference
    local_disks: tuple[str, ...] = ()  # paths in the source's own storage: copied
    autostart: bool = False

    def describe(self) -> str:
        how = "live" if self.live else "offline"
        disks = [f"{p} by reference" for p in self.shared_disks] + [f"{p} copied" for p in self.local_disks]
        return f"{self.vm}: {self.source} -> {self.destination}, {how}" + (
            f"; disks: {', '.join(disks)}" if disks else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "source": self.source,
            "destination": self.destination,
            "live": self.live,
            "shared_disks": list(self.shared_disks),
            "local_disks": list(self.local_disks),
            "autostart": self.autostart,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Move:
        return cls(
            vm=data["vm"],
            source=data["source"],
            destination=data["destination"],
            live=bool(data["live"]),
            shared_disks=tuple(data.get("shared_disks", ())),
            local_disks=tuple(data.get("local_disks", ())),
            autostart=bool(data.get("autostart")),
        )


@dataclass
class Placement:
    moves: list[Move] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # "vm: reason", every one of them
    # host of the run -> "vm: why" for VMs neither built nor moved there because a hypervisor was not
    # read (outside --limit, unreachable, libvirt unread): they fail that host alone
    held: dict[str, list[str]] = field(default_factory=dict)
    # host -> its manifest VMs defined (or maybe defined) on another host: never cloned there
    elsewhere: dict[str, set[str]] = field(default_factory=dict)

    def not_cloned(self, host_name: str) -> set[str]:
        return set(self.elsewhere.get(host_name, set()))

    def arriving(self, host_name: str) -> set[str]:
        return {m.vm for m in self.moves if m.destination == host_name}

    def leaving(self, host_name: str) -> list[Move]:
        return [m for m in self.moves if m.source == host_name]


def _under(path: str, directories: tuple[str, ...]) -> bool:
    path = os.path.normpath(path)
    return any(path.startswith(os.path.normpath(d).rstrip("/") + "/") for d in directories if d)


def _disks(domain: Domain) -> list[Disk]:
    return [d for d in domain.disks if d.is_disk and d.path]


def _cache_modes(domain: Domain) -> dict[str, tuple[str, bool]]:
    """``{path: (cache mode or 'default', readonly or shareable)}`` of the persistent definition."""
    return {
        d.path: (d.cache or "default", d.readonly or d.shareable) for d in domain.config.disks if d.path
    }


def _pool_dirs(host: HostState) -> set[str]:
    return {os.path.normpath(p.path) for p in host.pools.values() if p.path}


def move_problems(
    move: Move,
    spec: VmSpec | None,
    source: HostState,
    destination: HostState,
    capacity: CapacityRow | None,
) -> list[str]:
    """Why ``move`` may not happen (empty: it may), checked on the two hosts' facts."""
    problems: list[str] = []
    domain = source.domains[move.vm]
    dest_name = move.destination
    src_caps, dst_caps = source.capacity, destination.capacity
    if src_caps.host_uuid and src_caps.host_uuid == dst_caps.host_uuid:
        problems.append(
            f"{move.source} and {dest_name} report the same host UUID {src_caps.host_uuid} "
            "(libvirt refuses to migrate between them; set host_uuid in libvirtd.conf)"
        )
    # Storage: the pool directories exist on the destination, shared disks are visible there, local
    # disks are not there yet, and backing files (the base) are there.
    dirs = _pool_dirs(destination)
    for path in (*move.shared_disks, *move.local_disks):
        if os.path.dirname(os.path.normpath(path)) not in dirs:
            problems.append(f"{dest_name} has no storage pool at {os.path.dirname(path)} (for {path})")
    for path in move.shared_disks:
        if destination.file(path).kind == "missing":
            problems.append(f"shared disk {path} is not visible on {dest_name}")
    for path in move.local_disks:
        if destination.file(path).kind != "missing":
            problems.append(f"{dest_name} already has {path}")
    # The move removes the source's copy of every local disk: none may be a disk or lie anywhere in the
    # backing chain of another domain (its snapshot overlays, linked clones of clones), by the same rule
    # a delete keeps files by.
    for path, why in needed_by_others(source, move.vm, move.local_disks).items():
        problems.append(
            f"{path} is still needed by {why.owner} on {move.source} ({why.reason}); the move would remove it"
        )
    for disk in _disks(domain):
        backing = disk.backing or source.file(disk.path or "").backing
        if backing and destination.file(backing).kind == "missing":
            problems.append(f"backing file {backing} of {disk.path} is not on {dest_name}")
    if spec is not None and spec.srcvm not in destination.domains:
        problems.append(f"base VM {spec.srcvm} is not defined on {dest_name}")
    # Cache mode of disks both hosts open during a live move.
    if move.live:
        modes = _cache_modes(domain)
        for path in move.shared_disks:
            cache, shared_ok = modes.get(path, ("default", False))
            if cache not in SAFE_CACHE_MODES and not shared_ok:
                problems.append(
                    f"disk {path} in shared storage uses cache={cache}: a live move needs "
                    f"cache={' or '.join(SAFE_CACHE_MODES)}"
                )
    # CPU.
    if src_caps.arch and dst_caps.arch and src_caps.arch != dst_caps.arch:
        problems.append(f"CPU architecture {src_caps.arch} on {move.source}, {dst_caps.arch} on {dest_name}")
    mode = domain.config.cpu_mode
    src_cpu = (src_caps.cpu_vendor, src_caps.cpu_model)
    dst_cpu = (dst_caps.cpu_vendor, dst_caps.cpu_model)
    if mode in HOST_CPU_MODES and move.live and src_cpu != dst_cpu:
        problems.append(
            f"CPU mode {mode} needs the same host CPU: {' '.join(filter(None, src_cpu)) or 'unknown'} "
            f"on {move.source}, {' '.join(filter(None, dst_cpu)) or 'unknown'} on {dest_name}"
        )
    if mode == "host-model" and src_caps.cpu_vendor != dst_caps.cpu_vendor:
        problems.append(
            f"CPU mode host-model across vendors: {src_caps.cpu_vendor} on {move.source}, "
            f"{dst_caps.cpu_vendor} on {dest_name}"
        )
    if capacity is not None:
        problems.extend(f"capacity of {dest_name}: {p}" for p in capacity.problems)
    return problems


def _move_for(
    vm: str, source: str, destination: str, host: HostState, shared_dirs: tuple[str, ...]
) -> Move:
    domain = host.domains[vm]
    paths = [d.path or "" for d in _disks(domain)]
    return Move(
        vm=vm,
        source=source,
        destination=destination,
        live=domain.active,
        shared_disks=tuple(p for p in paths if _under(p, shared_dirs)),
        local_disks=tuple(p for p in paths if not _under(p, shared_dirs)),
        autostart=domain.autostart,
    )


def _arrival_row(
    destination: str,
    staying: list[VmSpec],
    arriving: list[tuple[VmSpec | None, Move, Domain]],
    host: HostState,
    vcpu_ratio: float,
    memory_ratio: float,
    allocation: dict[str, int],
) -> CapacityRow:
    """The destination as it would be with its own VMs and the arriving ones (their live resources)."""
    # Base VMs of the arriving VMs are templates there, as for the VMs built there.
    bases = {spec.srcvm for spec, _move, _domain in arriving if spec is not None}
    domains = {k: v for k, v in host.domains.items() if k not in bases}
    row = capacity_row(destination, staying, replace(host, domains=domains), vcpu_ratio, memory_ratio)
    vcpus, memory = row.vcpus, row.memory_kib
    needs = dict(row.disk_needs)
    pools = {os.path.normpath(p.path or ""): name for name, p in host.pools.items()}
    for _spec, move, domain in arriving:
        vcpus += domain.vcpus
        memory += domain.memory_kib
        for path in move.local_disks:
            pool = pools.get(os.path.dirname(os.path.normpath(path)))
            if pool:
                needs[pool] = needs.get(pool, 0) + allocation.get(path, 0)
    return replace(row, vcpus=vcpus, memory_kib=memory, disk_needs=needs)


def _allocations(host: HostState) -> dict[str, int]:
    return {v.path or "": v.allocation for v in host.all_volumes()}


def _check(
    moves: list[Move],
    manifest: dict[str, list[VmSpec]],
    states: dict[str, HostState | None],
    vcpu_ratio: float,
    memory_ratio: float,
) -> list[str]:
    specs = {s.name: s for specs in manifest.values() for s in specs}
    refusals: list[str] = []
    by_destination: dict[str, list[Move]] = {}
    for move in moves:
        by_destination.setdefault(move.destination, []).append(move)
    for destination, arriving in sorted(by_destination.items()):
        dest = states[destination] or HostState()
        moving = {m.vm for m in arriving}
        staying = [s for s in manifest.get(destination, []) if s.name not in moving]
        entries = [(specs.get(m.vm), m, (states[m.source] or HostState()).domains[m.vm]) for m in arriving]
        allocation: dict[str, int] = {}
        for m in arriving:
            allocation.update(_allocations(states[m.source] or HostState()))
        row = _arrival_row(destination, staying, entries, dest, vcpu_ratio, memory_ratio, allocation)
        for move in arriving:
            problems = move_problems(move, specs.get(move.vm), states[move.source] or HostState(), dest, row)
            refusals.extend(f"{move.vm} ({move.source} -> {destination}): {p}" for p in problems)
    return refusals


UNREAD = "could not be read"
NO_RESERVATIONS = "the management node's DHCP reservations, which could prove it new, were not read"


def _record(spec: VmSpec, reservations: Mapping[str, Mapping[str, str]]) -> str | None:
    """The management node's reservation of ``spec`` (by MAC, short name or FQDN), described; else None."""
    for mac, entry in sorted(reservations.items()):
        if (
            str(mac).lower() == spec.mac.lower()
            or entry.get("short") == spec.name
            or (entry.get("hostname") or "").lower() == spec.hostname.lower()
        ):
            return f"{entry.get('short') or '?'} {entry.get('ip') or '?'} {mac}"
    return None


def plan_placement(
    manifest: dict[str, list[VmSpec]],
    states: dict[str, HostState | None],
    shared_dirs: tuple[str, ...] = (),
    vcpu_ratio: float = 4.0,
    memory_ratio: float = 1.0,
    unread_why: Mapping[str, str] | None = None,
    reservations: Mapping[str, Mapping[str, str]] | None = None,
    reservations_note: str = NO_RESERVATIONS,
) -> Placement:
    """Moves that bring every manifest VM defined on another host to its manifest host, with refusals.

    ``states``: host -> Hypervisor fact value, None for a host whose state was not read in this run
    (outside --limit, unreachable, libvirt unread; ``unread_why`` says which and how to proceed).
    Never create a VM that may exist on such a host: a VM defined on no host read is built only when
    it is provably new, i.e. the management node's ``reservations`` were read and hold no record of it;
    otherwise it is held (``Placement.held``, failing its host alone, naming the unread host). A VM whose
    manifest host was not read stays where it is, held on its current host.
    """
    placement = Placement()
    why = dict(unread_why or {})
    unread = sorted(h for h, s in states.items() if s is None)
    for destination, specs in sorted(manifest.items()):
        dest = states.get(destination)
        here = dest.domains if dest is not None else {}
        for spec in specs:
            if spec.name in here:
                continue
            elsewhere = sorted(
                h
                for h, s in states.items()
                if h != destination and s and spec.name in s.domains
            )
            if len(elsewhere) > 1:
                placement.refusals.append(
                    f"{spec.name}: defined on {' and '.join(elsewhere)}; resolve by hand"
                )
            elif elsewhere and dest is None:
                placement.held.setdefault(elsewhere[0], []).append(
                    f"{spec.name}: not moved from {elsewhere[0]}: its manifest host {destination} "
                    f"{why.get(destination, UNREAD)}"
                )
            elif elsewhere:
                source = elsewhere[0]
                placement.moves.append(
                    _move_for(spec.name, source, destination, states[source] or HostState(), shared_dirs)
                )
            elif dest is None or not unread:
                continue  # not in this run (nothing is built there), or provably new: built
            else:
                record = None if reservations is None else _record(spec, reservations)
                if reservations is not None and record is None:
                    continue  # no record anywhere readable: provably new, built
                evidence = (
                    f"the management node holds a reservation for it ({record})"
                    if record
                    else reservations_note
                )
                where = "; on ".join(f"{h}, which {why.get(h, UNREAD)}" for h in unread)
                placement.held.setdefault(destination, []).append(
                    f"{spec.name}: not built on {destination}: it may already be defined on {where}; "
                    f"{evidence}"
                )
                placement.elsewhere.setdefault(destination, set()).add(spec.name)
            if elsewhere:
                placement.elsewhere.setdefault(destination, set()).add(spec.name)
    placement.refusals.extend(_check(placement.moves, manifest, states, vcpu_ratio, memory_ratio))
    return placement


def plan_drain(
    drained: str,
    manifest: dict[str, list[VmSpec]],
    states: dict[str, HostState | None],
    shared_dirs: tuple[str, ...] = (),
    vcpu_ratio: float = 4.0,
    memory_ratio: float = 1.0,
    unread_why: Mapping[str, str] | None = None,
) -> Placement:
    """Moves of every manifest VM defined on ``drained`` onto the other hosts, within their capacity.

    Largest VMs first (memory, then vCPUs), each onto the host with the most memory left after it.
    """
    placement = Placement()
    if drained not in manifest:
        placement.refusals.append(f"{drained} is not a hypervisor of the manifest")
        return placement
    source = states.get(drained)
    if source is None:
        placement.refusals.append(f"{drained} {dict(unread_why or {}).get(drained, UNREAD)}")
        return placement
    others = sorted(h for h in manifest if h != drained)
    unread = [h for h in others if states.get(h) is None]
    if unread:
        why = dict(unread_why or {})
        placement.refusals.extend(f"{h} {why.get(h, UNREAD)}" for h in unread)
        return placement
    domains = source.domains
    leaving = [s for s in manifest[drained] if s.name in domains]

    def size(spec: VmSpec) -> tuple[int, int, str]:
        d = domains[spec.name]
        return (-d.memory_kib, -d.vcpus, spec.name)

    assigned: dict[str, list[Move]] = {h: [] for h in others}
    allocation = _allocations(source)
    specs = {s.name: s for s in manifest[drained]}
    for spec in sorted(leaving, key=size):
        best, best_room = None, None
        for host_name in others:
            move = _move_for(spec.name, drained, host_name, source, shared_dirs)
            trial = [*assigned[host_name], move]
            entries = [(specs.get(m.vm), m, domains[m.vm]) for m in trial]
            row = _arrival_row(
                host_name, manifest[host_name], entries, states[host_name] or HostState(), vcpu_ratio,
                memory_ratio, allocation,
            )  # fmt: skip
            if move_problems(move, spec, source, states[host_name] or HostState(), row):
                continue
            room = row.memory_limit_kib - row.memory_kib
            if best_room is None or room > best_room:
                best, best_room = move, room
        if best is None:
            reasons = []
            for host_name in others:
                move = _move_for(spec.name, drained, host_name, source, shared_dirs)
                entries = [(specs.get(m.vm), m, domains[m.vm]) for m in [*assigned[host_name], move]]
                row = _arrival_row(
                    host_name, manifest[host_name], entries, states[host_name] or HostState(), vcpu_ratio,
                    memory_ratio, allocation,
                )  # fmt: skip
                reasons.extend(move_problems(move, spec, source, states[host_name] or HostState(), row))
            placement.refusals.append(
                f"{spec.name}: fits on no other host: {'; '.join(reasons) or 'no other host'}"
            )
            continue
        assigned[best.destination].append(best)
        placement.moves.append(best)
    return placement


def drained_manifest(data: list[dict[str, Any]], moves: list[Move]) -> list[dict[str, Any]]:
    """The manifest (its JSON data) with every moved vmspec under its destination's host entry."""
    where = {m.vm: m.destination for m in moves}
    out = [{**entry, "vmspecs": []} for entry in data]
    index = {entry["host"]: i for i, entry in enumerate(out)}
    for entry in data:
        for spec in entry.get("vmspecs", []):
            target = where.get(spec.get("name"), entry["host"])
            out[index[target]]["vmspecs"].append(spec)
    return out


def manifest_change(moves: list[Move]) -> str:
    """The change that makes the moves permanent, one line per VM (moving its vmspec object)."""
    return "\n".join(
        f"move vmspec {m.vm} from host entry {m.source} to host entry {m.destination}" for m in moves
    )


# --- commands ------------------------------------------------------------------------------------------


def _ssh_words(uri: str) -> list[str]:
    """``ssh`` options and destination for the same host and user as a ``qemu+ssh://`` libvirt URI."""
    parts = urlsplit(uri)
    words = ["ssh", "-o", "BatchMode=yes"]
    if parts.port:
        words += ["-p", str(parts.port)]
    keyfile = parse_qs(parts.query).get("keyfile")
    if keyfile:
        words += ["-i", keyfile[0]]
    # After "--": a host value can never be read as an option of ssh.
    hostname = unquote(str(parts.hostname))  # an IPv6 zone: fe80::1%25eth0 in a URI, fe80::1%eth0 to ssh
    words += ["--", f"{unquote(parts.username)}@{hostname}" if parts.username else hostname]
    return words


def _still_shut_off(vm: str, uri: str, timeout: int) -> StringCommand:
    """Succeeds only when ``vm`` is shut off now (a bounded ``virsh domstate``); otherwise says so."""
    return StringCommand(
        "{ s=$(",
        virsh(uri, "domstate", vm, timeout=timeout),
        ") && { [ \"$s\" = 'shut off' ] || { echo",
        QuoteString(f"kvm-qemu: {vm} is no longer shut off (now:"),
        '"$s);"',
        QuoteString(
            "not moved: its definition and disks stay on this host; the copies already made on the "
            "destination are left there (remove them before moving it again)"
        ),
        ">&2; (exit 1); }; }; }",
    )


def _copy_command(directory: str, names: list[str], uri: str, timeout: int) -> StringCommand:
    """Stream the files (sparse, mode kept) into the same directory on the destination over SSH; a file
    already there is never replaced (``tar -k`` fails on it), and a short stream fails the remote tar."""
    remote = StringCommand("tar", "-C", QuoteString(directory), "-xkpSf", "-")
    ssh = StringCommand(*(QuoteString(w) for w in _ssh_words(uri)), QuoteString(remote.get_raw_value()))
    pipeline = StringCommand(
        "tar", "-C", QuoteString(directory), "-cSf", "-", "--", *(QuoteString(n) for n in names), "|", ssh
    )
    return bounded(
        f"copy of {', '.join(names)} to the destination",
        timeout,
        StringCommand("sh", "-c", QuoteString(pipeline.get_raw_value())),
    )


def _disk_marks(paths: tuple[str, ...], timeout: int) -> StringCommand:
    """Identity, change time (ns) and size of each file, one line each (bounded ``stat``): a file
    written, or relabelled by a start of its VM, between two reads reads differently."""
    return bounded(
        "stat of the disks",
        timeout,
        StringCommand(
            "stat", "-L", "-c", QuoteString("%d:%i %.9Z %s"), "--", *(QuoteString(p) for p in paths)
        ),
    )


def _unchanged_since_copy(vm: str, paths: tuple[str, ...], timeout: int) -> StringCommand:
    """Succeeds only when the disks read as they did before the copy (``$marks``); otherwise says so."""
    return StringCommand(
        "{ [ \"$marks\" = \"$(",
        _disk_marks(paths, timeout),
        ')\" ] || { echo',
        QuoteString(
            f"kvm-qemu: the disks of {vm} changed during the copy (was it started meanwhile?); not moved: "
            "its definition and disks stay on this host; the copies made on the destination are stale "
            "(remove them before moving it again)"
        ),
        ">&2; (exit 1); }; }",
    )


def move_command(
    move: Move,
    target: Target,
    uri: str = defaults.LIBVIRT_URI,
    timeout: int = DEFAULT_TIMEOUT,
    migrate_timeout: int = DEFAULT_MIGRATE_TIMEOUT,
) -> StringCommand:
    """One command on the source host that moves the VM, then removes the source's copies of local disks.

    Live: ``virsh migrate --live --persistent --undefinesource`` (``--copy-storage-all`` for local disks).
    Offline: local disks are streamed over SSH first, then, if the VM is still shut off and its disks
    read as they did before the copy (both checked right before), ``virsh migrate --offline``.
    """
    steps: list[StringCommand] = []
    args: list[str] = ["migrate"]
    if move.live:
        args += ["--live", "--persistent", "--undefinesource"]
        if move.local_disks:
            args.append("--copy-storage-all")
        if target.address:
            args += ["--migrateuri", f"tcp://{target.address}"]
    else:
        args += ["--offline", "--persistent", "--undefinesource"]
        by_dir: dict[str, list[str]] = {}
        for path in move.local_disks:
            by_dir.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
        if move.local_disks:
            steps.append(StringCommand("marks=$(", _disk_marks(move.local_disks, timeout), ")"))
        steps += [_copy_command(d, names, target.uri, migrate_timeout) for d, names in sorted(by_dir.items())]
    if target.unsafe and move.live:
        args.append("--unsafe")
    args += [move.vm, target.uri]
    if not move.live:
        # Started again during the copy (up to migrate_timeout)? Then its disks are live data: the
        # migration and the removal below must not happen. Checked last, in the same command.
        steps.append(_still_shut_off(move.vm, uri, timeout))
        if move.local_disks:
            steps.append(_unchanged_since_copy(move.vm, move.local_disks, timeout))
    steps.append(virsh(uri, *args, timeout=migrate_timeout))
    if move.autostart:
        steps.append(virsh(target.uri, "autostart", move.vm, timeout=timeout))
    if move.local_disks:
        removal = StringCommand("rm", "-f", "--", *(QuoteString(p) for p in move.local_disks))
        steps.append(bounded("removal of the source's disk copies", timeout, removal))
    return all_of(steps)
