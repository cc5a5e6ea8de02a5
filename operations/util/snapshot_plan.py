"""Offline external snapshots of a domain's disks: fact in, per-VM plans out. Pure, no I/O.

Why external and offline: full clones have raw disks, which cannot hold internal (qcow2) snapshots,
and libvirt before 9.9 cannot revert external ones (the sandbox runs 9.0). So a snapshot here is a
libvirt disk-only external snapshot of a shut-off domain, whose overlays this package makes and
manages itself, the same way for raw (full) and qcow2 (linked) clones:

- create NAME: each disk ``<dir>/<vm>-vdX.<ext>`` gets a new, empty qcow2 overlay
  ``<dir>/<vm>-vdX@NAME.qcow2`` (0600, made like a clone's disk) on top of its current file, and
  ``virsh snapshot-create-as --disk-only --reuse-external`` records the snapshot and points the domain
  at the overlays. The file below an overlay is never written again while the snapshot exists.
- revert NAME: the overlays are emptied again (``qemu-img create`` over the same backing file), which
  throws away every write since the snapshot. Only the newest snapshot can be reverted to.
- delete NAME: the overlays are committed into the files below them (the VM keeps its current data),
  the domain points at those files again, the overlays are removed and the snapshot's metadata goes.
  Only the newest snapshot can be deleted; a file another domain uses (a base) is never committed into.

A running VM is refused (stop it first), as the original tool did. Deleting the VM removes the
snapshots' metadata (``undefine --snapshots-metadata``) and the overlays, which are named after it.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from typing import Any

from pyinfra.api import StringCommand

from facts.util.host_state import Disk, Domain, DomainSnapshot, HostState
from operations.util.disk_files import qcow2_overlay, staged
from operations.util.disk_files import with_cleanup as with_cleanup
from operations.util.storage_ownership import in_use
from operations.util.virsh import DEFAULT_TIMEOUT, all_of, bounded, q, session_limit, sh, virsh
from operations.util.vm_plan import VmPlan

SNAPSHOT_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
ACTIONS = ("create", "revert", "delete")


def valid_name(snapshot_name: str) -> bool:
    return isinstance(snapshot_name, str) and re.fullmatch(SNAPSHOT_NAME, snapshot_name) is not None


def overlay_path(disk_path: str, vm: str, target: str, snapshot_name: str) -> str:
    """``<dir of disk>/<vm>-<target>@<snapshot>.qcow2``: '@' is in no VM name, so the owner is clear."""
    return posixpath.join(posixpath.dirname(disk_path), f"{vm}-{target}@{snapshot_name}.qcow2")


def _names(domain: Domain) -> list[str]:
    return [s.name or "" for s in domain.snapshots]


def _find(domain: Domain, snapshot_name: str) -> DomainSnapshot | None:
    return next((s for s in domain.snapshots if s.name == snapshot_name), None)


def _later(domain: Domain, snapshot_name: str) -> list[str]:
    return [s.name or "" for s in domain.snapshots if s.parent == snapshot_name]


def _disks(domain: Domain) -> list[Disk]:
    return [d for d in domain.config.disks if d.is_disk]


def _offline(plan: VmPlan, domain: Domain, what: str) -> bool:
    if domain.active:
        plan.error = (
            f"is {domain.state}: snapshots are {what} offline only; stop it first (deploys/stop.py)"
        )
        return False
    return True


def _diskspec(target: str, *rest: str) -> str:
    # virsh splits --diskspec at commas; a comma inside a value is written twice.
    return ",".join([target.replace(",", ",,"), *(r.replace(",", ",,") for r in rest)])


def create_plan(
    vm: str, names: list[str], domain: Domain | None, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> VmPlan | None:
    """Create the snapshots of ``names`` the domain lacks, in order (each on top of the previous one).

    None when they all exist. One command: every overlay is made (0600, never over an existing file,
    removed again if a later step fails), then ``snapshot-create-as`` for each name.
    """
    plan = VmPlan(vm)
    if domain is None:
        plan.error = "not defined on this host (run deploys/build.py)"
        return plan
    missing = [n for n in names if n not in _names(domain)]
    if not missing:
        return None
    if not _offline(plan, domain, "taken"):
        return plan
    disks = _disks(domain)
    if not disks or any(not d.path or not d.target for d in disks):
        plan.error = "has a disk without a file source: only file-backed disks can be snapshotted here"
        return plan
    directories = sorted({posixpath.dirname(d.path or "") for d in disks})
    if len(directories) != 1:
        plan.error = f"has disks in several directories ({', '.join(directories)}); cannot snapshot it"
        return plan
    others = [d for d in domain.config.disks if d not in disks]
    current = {d.target or "": (d.path or "", d.format or "raw") for d in disks}
    groups: list[StringCommand] = []
    for snapshot_name in missing:
        # One snapshot at a time: its overlays are filled in private, linked into place, recorded;
        # a failure removes only this snapshot's overlays (earlier ones are in use by then).
        specs: list[str] = []
        made: list[str] = []
        fills: list[StringCommand] = []
        for target, (path, fmt) in current.items():
            overlay = overlay_path(path, vm, target, snapshot_name)
            made.append(overlay)
            fills.append(qcow2_overlay(f"create {overlay}", timeout, path, fmt, staged(overlay)))
            specs += ["--diskspec", _diskspec(target, "snapshot=external", f"file={overlay}", "driver=qcow2")]
            current[target] = (overlay, "qcow2")
        specs += [
            x
            for d in others
            if d.target
            for x in ("--diskspec", _diskspec(d.target, "snapshot=no"))
        ]
        record = sh(
            virsh(
                uri,
                "snapshot-create-as",
                vm,
                snapshot_name,
                "--disk-only",
                "--atomic",
                "--reuse-external",
                *specs,
                timeout=timeout,
            ),
            ">/dev/null",
        )
        groups.append(with_cleanup(made, directories[0], all_of(fills), timeout, grouped=True, then=record))
        plan.actions.append(f"create snapshot {snapshot_name} (new overlay(s) {', '.join(made)})")
    plan.command = all_of(groups)
    plan.limit = session_limit(sum(len(disks) + 3 for _ in missing), timeout)
    return plan


def _layers(
    vm: str, domain: Domain, snapshot_name: str
) -> tuple[list[tuple[str, str, str, str]], str | None]:
    """``[(target, overlay, file below it, its format)]`` of the newest snapshot, or an error.

    Checks what revert and delete rely on: it is this package's external snapshot, nothing was taken
    after it, and the domain's disks are still its overlays.
    """
    snapshot = _find(domain, snapshot_name)
    assert snapshot is not None
    later = _later(domain, snapshot_name)
    if later:
        return [], (
            f"snapshot {snapshot_name} has later snapshot(s) {', '.join(later)}: only the newest one can be "
            "reverted to or deleted (delete the later ones first, newest first)"
        )
    external = [d for d in snapshot.disks if d.snapshot == "external"]
    if not external or any(d.snapshot == "internal" for d in snapshot.disks):
        return [], f"snapshot {snapshot_name} is not an external disk-only snapshot; use virsh for it"
    now = {d.target: d.path for d in _disks(domain)}
    before = {d.target: d for d in snapshot.domain_disks}
    layers = []
    for disk in external:
        target, overlay = disk.target or "", disk.path
        if overlay != overlay_path(overlay or "/", vm, target, snapshot_name):
            return [], f"snapshot {snapshot_name}: {target} overlay {overlay} was not made by kvm-qemu"
        if now.get(target) != overlay:
            return [], (
                f"snapshot {snapshot_name}: disk {target} is now {now.get(target)}, not the snapshot's "
                f"overlay {overlay}; refusing to touch it"
            )
        below = before.get(target)
        if below is None or not below.path:
            return [], f"snapshot {snapshot_name}: the file below {overlay} is not recorded"
        layers.append((target, overlay, below.path, below.format or "raw"))
    return layers, None


def _plain_files(vm: str, paths: list[str]) -> StringCommand:
    return sh(
        "{ for f in",
        *[q(p) for p in paths],
        '; do if [ -L "$f" ] || [ ! -f "$f" ]; then',
        'echo "kvm-qemu: $f is not a plain file; refusing to change the snapshots of',
        q(vm),
        '" >&2; exit 1; fi; done; }',
    )


def revert_plan(
    vm: str, snapshot_name: str, domain: Domain | None, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> VmPlan:
    """Throw away every write since ``snapshot_name``: its overlays are made empty again."""
    plan = VmPlan(vm)
    if domain is None:
        plan.error = "not defined on this host"
        return plan
    if _find(domain, snapshot_name) is None:
        have = ", ".join(_names(domain)) or "none"
        plan.error = f"has no snapshot {snapshot_name} (snapshots: {have})"
        return plan
    if not _offline(plan, domain, "reverted"):
        return plan
    layers, error = _layers(vm, domain, snapshot_name)
    if error:
        plan.error = error
        return plan
    steps = [_plain_files(vm, [overlay for _, overlay, _, _ in layers])]
    for _target, overlay, below, fmt in layers:
        steps.append(
            qcow2_overlay(f"reset {overlay}", timeout, below, fmt, overlay)
        )
        plan.actions.append(f"revert to {snapshot_name}: empty {overlay} again (on {below})")
    plan.command = sh("umask 077;", all_of(steps))
    plan.limit = session_limit(len(steps), timeout)
    return plan


def _pointed_below(xml: str, layers: list[tuple[str, str, str, str]]) -> str:
    """The domain definition with each overlay's disk back on the file below it."""
    root = ET.fromstring(xml)
    by_target = {target: (below, fmt) for target, _, below, fmt in layers}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev is None or dev not in by_target:
            continue
        below, fmt = by_target[dev]
        source = disk.find("source")
        if source is None:
            source = ET.SubElement(disk, "source")
        source.set("file", below)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", {"name": "qemu"})
        driver.set("type", fmt)
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    return ET.tostring(root, encoding="unicode")


def _back_below(vm: str, domain: Domain, snapshot_name: str) -> list[str]:
    """The overlays of the newest snapshot ``snapshot_name`` when every disk is already back on the file
    below its overlay (a delete stopped after its define); empty otherwise."""
    snapshot = _find(domain, snapshot_name)
    if snapshot is None or _later(domain, snapshot_name):
        return []
    external = [d for d in snapshot.disks if d.snapshot == "external"]
    now = {d.target: d.path for d in _disks(domain)}
    before = {d.target: d.path for d in snapshot.domain_disks}
    overlays = [d.path or "" for d in external]
    mine = all(
        o == overlay_path(o or "/", vm, d.target or "", snapshot_name)
        for o, d in zip(overlays, external, strict=True)
    )
    if (
        external
        and mine
        and all(before.get(d.target) and now.get(d.target) == before[d.target] for d in external)
    ):
        return overlays
    return []


def _forget(vm: str, snapshot_name: str, overlays: list[str], uri: str, timeout: int) -> list[StringCommand]:
    """Remove the overlays (refusing anything but plain files; missing ones are fine), then the metadata."""
    quoted: list[Any] = [q(o) for o in overlays]
    return [
        sh(
            "{ for f in",
            *quoted,
            '; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then',
            'echo "kvm-qemu: $f is not a plain file; refusing to delete it for',
            q(vm),
            '" >&2; exit 1; fi; done; }',
        ),
        bounded(f"removal of the overlays of {snapshot_name}", timeout, "rm", "-f", "--", *quoted),
        sh(virsh(uri, "snapshot-delete", vm, snapshot_name, "--metadata", timeout=timeout), ">/dev/null"),
    ]


# Reads ``qemu-img info --output=json`` of an overlay on stdin; argv: the recorded file below it, the
# overlay. Exits 1 with a sentence unless the header names exactly the recorded file (Python 3.6).
_SAME_BACKING = r"""
import json, os, sys
below, overlay = sys.argv[1], sys.argv[2]
try:
    info = json.load(sys.stdin)
    name = info.get("full-backing-filename") or info.get("backing-filename") or ""
except (ValueError, AttributeError):
    sys.stderr.write("kvm-qemu: cannot read the header of %s; refusing to commit it\n" % overlay)
    sys.exit(1)
if not name or os.path.normpath(name) != os.path.normpath(below):
    sys.stderr.write("kvm-qemu: %s is now on %s, not on the snapshot's recorded file %s; refusing to "
                     "commit it\n" % (overlay, name or "no backing file", below))
    sys.exit(1)
"""


def _commit(overlay: str, below: str, timeout: int) -> StringCommand:
    """Commit ``overlay`` into ``below`` only: its header is read right before (``-U``: shared, so a
    lock does not stop the read; the commit itself still needs the write lock) and must name exactly
    ``below``, and ``-b`` makes qemu-img refuse any other base."""
    check = bounded(
        f"check of {overlay}",
        timeout,
        "sh",
        "-c",
        q('qemu-img info -U --output=json -f qcow2 -- "$1" | python3 -c "$3" "$2" "$1"'),
        "sh",
        q(overlay),
        q(below),
        q(_SAME_BACKING),
    )
    commit = bounded(
        f"commit of {overlay}", timeout, "qemu-img", "commit", "-q", "-f", "qcow2", "-b", q(below), q(overlay)
    )
    return sh(check, "&&", commit)


def delete_plan(
    vm: str,
    snapshot_name: str,
    domain: Domain | None,
    host: HostState,
    uri: str,
    timeout: int = DEFAULT_TIMEOUT,
) -> VmPlan | None:
    """Delete ``snapshot_name`` and keep the VM's current data; None when there is no such snapshot.

    The overlays are committed into the files below them, the domain is defined on those files, the
    overlays are removed and the snapshot's metadata is deleted, in that order, so a failure at any
    step leaves a consistent VM, and a re-run finishes the job (when the domain is already back on
    the files below, only the removal and the metadata are left). ``host``: the Hypervisor fact, to
    refuse committing into a file another domain uses.
    """
    if domain is None or _find(domain, snapshot_name) is None:
        return None
    plan = VmPlan(vm)
    if not _offline(plan, domain, "deleted"):
        return plan
    leftovers = _back_below(vm, domain, snapshot_name)
    if leftovers:
        plan.actions.append(f"finish deleting snapshot {snapshot_name}: remove {', '.join(leftovers)}")
        steps = _forget(vm, snapshot_name, leftovers, uri, timeout)
        plan.command = all_of(steps)
        plan.limit = session_limit(len(steps), timeout)
        return plan
    layers, error = _layers(vm, domain, snapshot_name)
    if error:
        plan.error = error
        return plan
    used = in_use(host, except_domain=vm)
    shared = [
        f"{below} ({used[posixpath.normpath(below)]})"
        for _, _, below, _ in layers
        if posixpath.normpath(below) in used
    ]
    if shared:
        plan.error = f"snapshot {snapshot_name}: refusing to commit into {', '.join(shared)}"
        return plan
    overlays = [overlay for _, overlay, _, _ in layers]
    steps = [_plain_files(vm, overlays)]
    for _target, overlay, below, _fmt in layers:
        steps.append(_commit(overlay, below, timeout))
        plan.actions.append(f"delete snapshot {snapshot_name}: commit {overlay} into {below}, remove it")
    steps.append(sh(virsh(uri, "define", "/dev/stdin", timeout=timeout), ">/dev/null"))
    steps += _forget(vm, snapshot_name, overlays, uri, timeout)
    plan.command = all_of(steps)
    plan.stdin = _pointed_below(domain.xml, layers)
    plan.limit = session_limit(len(steps), timeout)
    return plan
