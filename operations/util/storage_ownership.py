"""Which files a domain owns: every disk and backing-chain member of every domain (the rule delete, moves,
snapshot commits and prune all follow), and the files in a pool a deleted VM leaves behind."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from facts.util.host_state import Disk, Domain, HostState

NETWORK_POOLS = {"netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog"}




def _users(host: HostState, except_domain: str | None = None) -> dict[str, tuple[str, str]]:
    """path -> (domain, why): every disk of every other domain, and each one's whole backing chain."""
    below = host.backing_map()
    used: dict[str, tuple[str, str]] = {}
    for name, domain in host.domains.items():
        if name == except_domain:
            continue
        for disk in domain.all_disks:
            chain = host.backing_chain(disk, below)
            if not chain:
                continue
            used.setdefault(chain[0], (name, f"disk of domain {name}"))
            for path in chain[1:]:
                used.setdefault(path, (name, f"backing file of domain {name}"))
    return used


def in_use(host: HostState, except_domain: str | None = None) -> dict[str, str]:
    """path -> why it is in use: every disk of every other domain, and each one's whole backing chain.

    Read from the domain definitions (defined and running domains alike) and the image headers, so a
    base whose linked clones sit in an inactive pool is in use even though no pool lists them.
    """
    return {path: why for path, (_domain, why) in _users(host, except_domain).items()}


@dataclass(frozen=True)
class Need:
    """Who still needs a file: a domain (its disk or anywhere in its backing chain) or another file."""

    owner: str  # the domain's name, or the path of the file whose backing file it is
    reason: str  # "disk of domain web", "backing file of domain web", "backing file of another volume, X"


def needed_by_others(
    host: HostState, vm: str, paths: list[str] | tuple[str, ...], own: tuple[str, ...] = ()
) -> dict[str, Need]:
    """Which of ``paths`` (files of ``vm`` about to be removed) something else still needs, and who.

    The rule delete and move share: a file is needed when it is a disk of another domain or lies
    anywhere in the backing chain of one (``in_use``), or when it is the backing file of another file
    (not one of ``paths`` or ``own``, the VM's own files). Keys are the paths as given.
    """
    users = _users(host, except_domain=vm)
    mine = {posixpath.normpath(p) for p in (*paths, *own)}
    backs = {b: p for p, b in host.backing_map().items() if p not in mine}
    needed: dict[str, Need] = {}
    for path in paths:
        normal = posixpath.normpath(path)
        if normal in users:
            needed[path] = Need(*users[normal])
        elif normal in backs:
            needed[path] = Need(backs[normal], f"backing file of another volume, {backs[normal]}")
    return needed


def owned_volumes(
    vm: str, domain: Domain | None, host: HostState, shared_dirs: tuple[str, ...] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (pool, file name) pairs a delete may remove, and the disk paths it keeps (with why).

    Owned means: in a pool directory, named ``<vm>-vd*`` like the build names them (or
    ``<vm>-vdX@<snapshot>.qcow2`` like ``util/snapshot_plan`` names snapshot overlays, or ``<vm>-seed.iso``,
    its cloud-init seed, the one cdrom it owns), a plain file,
    not a disk or backing file of any other domain, and not the backing file of another file. The
    domain's disks and, when it is already gone (a delete that failed halfway), the files left with
    that name in the pool directories. Never the base image, an ISO, or a file outside every pool.

    Leftovers are taken only from pools this host alone uses: not from ``shared_dirs`` (the
    secondary storage) or network pools, where a file with that name may be the disk of a VM of the
    same name on another host, which no domain list of this host shows.
    """
    # <vm>-vdX[.ext] from the build; <vm>-vdX@<snapshot>.qcow2 snapshot overlays (no VM name has '@');
    # <vm>-seed.iso, its cloud-init seed.
    pattern = re.compile(
        rf"^{re.escape(vm)}-(vd[a-z]+((\.[A-Za-z0-9]+)?|@[A-Za-z0-9][A-Za-z0-9._-]*\.qcow2)|seed\.iso)$"
    )
    seed = f"{vm}-seed.iso"  # its cloud-init seed, attached as a cdrom
    pools_by_dir = {posixpath.normpath(p.path): name for name, p in host.pools.items() if p.path}
    files = host.files
    candidates: dict[str, Disk] = {}
    for disk in domain.all_disks if domain is not None else ():
        if disk.path:
            candidates.setdefault(posixpath.normpath(disk.path), disk)
    known = list(files) + [v.path for v in host.all_volumes() if v.path]
    shared = {posixpath.normpath(d) for d in shared_dirs} | {
        posixpath.normpath(p.path) for p in host.pools.values() if p.path and p.type in NETWORK_POOLS
    }
    elsewhere: list[str] = []
    for path in known:
        directory, base = posixpath.split(posixpath.normpath(path))
        if directory in pools_by_dir and pattern.match(base) and posixpath.normpath(path) not in candidates:
            if directory in shared:
                elsewhere.append(posixpath.normpath(path))
            else:
                candidates[posixpath.normpath(path)] = Disk(device="disk", path=path)
    needs = needed_by_others(host, vm, list(candidates))
    owned: list[tuple[str, str]] = []
    kept: list[str] = []
    for path, disk in candidates.items():
        directory, base = posixpath.split(path)
        pool = pools_by_dir.get(directory)
        entry = files.get(path)
        kind = entry.kind if entry is not None else "file"
        if not disk.is_disk and base != seed:
            kept.append(f"{path} ({disk.device})")
        elif pool is None:
            kept.append(f"{path} (not in a storage pool)")
        elif not pattern.match(base):
            kept.append(f"{path} (not named after {vm})")
        elif path in needs:
            kept.append(f"{path} ({needs[path].reason})")
        elif kind == "missing":
            continue
        elif kind != "file":
            kept.append(f"{path} (a {kind}, not a plain file)")
        else:
            owned.append((pool, base))
    kept += [
        f"{path} (not a disk of {vm} here; in shared storage it may belong to a VM on another host)"
        for path in sorted(set(elsewhere))
    ]
    return sorted(owned), kept
