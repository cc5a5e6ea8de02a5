"""What to do to a host's domains: fact + vmspec in, per-VM plans (readable actions + one command) out.

Pure: no I/O. The operations in ``operations/libvirt.py`` read the ``Hypervisor`` fact, call these
functions and yield the commands. Every plan holds at most one command, so a VM costs one round trip.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import StringCommand

from inventories.manifest_model import VmSpec
from operations.util.domain_xml import CloneError, clone_xml, data_disk_targets, plan_disks
from operations.util.sysprep import sysprep_command, tool_check
from operations.util.virsh import (
    DEFAULT_COPY_TIMEOUT,
    DEFAULT_TIMEOUT,
    KILL_AFTER,
    all_of,
    bounded,
    q,
    session_limit,
    sh,
    virsh,
)
from operations.util.vm_compare import configured, gib, wanted

NETWORK_POOLS = {"netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog"}
ACTIVE_STATES = {"running", "idle", "paused", "in shutdown", "pmsuspended"}

Domain = dict[str, Any]
Snapshot = dict[str, Any]  # the Hypervisor fact: pools, volumes, domains, capacity


@dataclass
class VmPlan:
    """One VM's changes: ``actions`` say what the command does, ``notes`` what is reported but not done."""

    vm: str
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    command: StringCommand | None = None
    stdin: str | None = None
    error: str | None = None
    # Seconds the controller waits for ``command`` (the sum of its steps' limits plus slack).
    limit: int = 0

    @property
    def changes(self) -> bool:
        return self.command is not None or self.error is not None

    def summary(self) -> str:
        parts = self.actions + [f"note: {n}" for n in self.notes]
        if self.error:
            parts.insert(0, f"error: {self.error}")
        return f"{self.vm}: " + ("; ".join(parts) if parts else "up to date")


def qcow2_overlay(step: str, timeout: int, backing: str, backing_format: str, path: str) -> StringCommand:
    """``qemu-img create`` of a new qcow2 overlay ``path`` on ``backing``, bounded and named ``step``."""
    overlay = ("qemu-img", "create", "-q", "-f", "qcow2", "-F", q(backing_format), "-b", q(backing), q(path))
    return bounded(step, timeout, *overlay)


def is_active(domain: Domain) -> bool:
    return domain.get("state") in ACTIVE_STATES


# --- clone -------------------------------------------------------------------------------------------


def clone_plan(
    spec: VmSpec,
    snapshot: Snapshot,
    uri: str,
    timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> VmPlan:
    """A new domain from ``spec.srcvm``: disk copies or overlays, data disks, one ``virsh define``.

    Every step is bounded by ``timeout`` seconds, a full copy of a base disk by ``copy_timeout``.
    """
    plan = VmPlan(spec.name)
    source = snapshot.get("domains", {}).get(spec.srcvm)
    pool = snapshot.get("pools", {}).get(spec.pool)
    if source is None:
        plan.error = f"source domain {spec.srcvm} is not defined on this host (see deploys/base_vm.py)"
        return plan
    if pool is None or not pool.get("path"):
        plan.error = f"storage pool {spec.pool} is not defined on this host (see deploys/pools.py)"
        return plan
    if is_active(source):
        plan.notes.append(f"source domain {spec.srcvm!r} is running: its disk may be copied mid-write")
    try:
        disks = plan_disks(spec, source["xml"], pool["path"])
        xml = clone_xml(spec, source["xml"], disks)
    except CloneError as exc:
        plan.error = f"cannot clone {spec.srcvm}: {exc}"
        return plan

    paths = [d.path for d in disks]
    steps: list[StringCommand] = []
    for disk in disks:
        if disk.source is None:
            steps.append(
                bounded(
                    f"create {disk.path}",
                    timeout,
                    "truncate",
                    "-s",
                    q(f"{disk.size_gib}G"),
                    "--",
                    q(staged(disk.path)),
                )
            )
            plan.actions.append(f"data disk {disk.target} {disk.size_gib} GiB")
        elif spec.clone == "linked":
            steps.append(
                qcow2_overlay(
                    f"create {disk.path}", timeout, disk.source.path, disk.source.format, staged(disk.path)
                )
            )
            plan.actions.append(f"linked clone of {disk.source.path} as {disk.path}")
        else:
            steps.append(
                bounded(
                    f"copy of {disk.source.path} to {disk.path}",
                    copy_timeout,
                    "cp",
                    "--sparse=always",
                    "--",
                    q(disk.source.path),
                    q(staged(disk.path)),
                )
            )
            plan.actions.append(f"full copy of {disk.source.path} to {disk.path}")
    sysprep = bool(spec.sysprep)
    if sysprep:  # clean clones (operations/util/sysprep.py): after the copies, before the define
        cloned = [(staged(d.path), d.format) for d in disks if d.source is not None]
        steps.append(sysprep_command(spec.hostname, cloned, copy_timeout))
        plan.actions.append(f"virt-sysprep (hostname {spec.hostname})")
    define = sh(virsh(uri, "define", "/dev/stdin", timeout=timeout), ">/dev/null")
    plan.actions.insert(
        0,
        f"define from {spec.srcvm} with {spec.vcpus} vCPU(s), memory {spec.memory_gb} GiB "
        f"(max {spec.max_memory_gb} GiB), MAC {spec.mac}",
    )
    if spec.autostart:
        plan.actions.append("autostart on")

    plan.command = _with_cleanup(paths, pool["path"], all_of(steps), timeout, then=define)
    steps.append(define)
    if sysprep:
        plan.command = sh(tool_check(spec.name), plan.command)
    if spec.autostart:
        plan.command = sh(plan.command, "&&", virsh(uri, "autostart", spec.name, timeout=timeout))
    copies = sum(1 for d in disks if d.source is not None and spec.clone != "linked")
    slow = copies + sysprep
    plan.limit = session_limit(len(steps) + 2 - slow, timeout, slow * (int(copy_timeout) + KILL_AFTER))
    plan.stdin = xml
    return plan


# --- converge an existing domain -------------------------------------------------------------------


def resource_plan(
    spec: VmSpec, domain: Domain, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> tuple[list[StringCommand], list[str], list[str]]:
    """Commands, actions and notes that bring vCPUs and memory to the vmspec.

    Persistent config always; the running domain too where libvirt allows it (memory up to its max
    memory, vCPUs up to its max vCPUs). Max memory / max vCPUs of a running domain change at next boot.
    """
    commands: list[StringCommand] = []
    actions: list[str] = []
    notes: list[str] = []
    name = spec.name
    have, want = configured(domain), wanted(spec)
    want_max, want_cur, want_cpu = want.max_memory_kib, want.memory_kib, want.vcpus

    if domain.get("persistent", True):
        cfg_max, cfg_cur = have.max_memory_kib, have.memory_kib
        if (cfg_max, cfg_cur) != (want_max, want_cur):
            setmax = (
                [virsh(uri, "setmaxmem", name, want_max, "--config", timeout=timeout)]
                if cfg_max != want_max
                else []
            )
            setcur = (
                [virsh(uri, "setmem", name, want_cur, "--config", timeout=timeout)]
                if cfg_cur != want_cur
                else []
            )
            # Lowering max below the current value would be refused, so shrink current first.
            commands += setcur + setmax if want_max < cfg_cur else setmax + setcur
            if cfg_max != want_max:
                actions.append(f"max memory {gib(cfg_max)} -> {gib(want_max)} (config)")
            if cfg_cur != want_cur:
                actions.append(f"memory {gib(cfg_cur)} -> {gib(want_cur)} (config)")
        cfg_vcpus, cfg_maxv = have.vcpus, have.max_vcpus
        if (cfg_vcpus, cfg_maxv) != (want_cpu, want_cpu):
            setmaxv = (
                [virsh(uri, "setvcpus", name, want_cpu, "--maximum", "--config", timeout=timeout)]
                if cfg_maxv != want_cpu
                else []
            )
            setv = (
                [virsh(uri, "setvcpus", name, want_cpu, "--config", timeout=timeout)]
                if cfg_vcpus != want_cpu
                else []
            )
            commands += setmaxv + setv if want_cpu > cfg_vcpus else setv + setmaxv
            actions.append(f"vCPUs {cfg_vcpus} (max {cfg_maxv}) -> {want_cpu} (config)")
    else:
        notes.append("transient domain: config changes skipped")

    if is_active(domain):
        # Live values follow the guest: a balloon without a guest driver never reaches its target, so
        # a live change goes with the config change it belongs to instead of chasing live drift forever.
        cfg_cur = have.memory_kib if domain.get("persistent", True) else domain["memory_kib"]
        cfg_vcpus = have.vcpus if domain.get("persistent", True) else domain["vcpus"]
        live_cur, live_max = domain["memory_kib"], domain["max_memory_kib"]
        if cfg_cur != want_cur:
            if want_cur <= live_max:
                commands.append(virsh(uri, "setmem", name, want_cur, "--live", timeout=timeout))
                actions.append(f"memory {gib(live_cur)} -> {gib(want_cur)} (live)")
            else:
                notes.append(
                    f"memory {gib(want_cur)} is above the running max memory {gib(live_max)}: "
                    "takes effect at next boot"
                )
        elif live_cur != want_cur:
            notes.append(f"running with {gib(live_cur)} of memory (balloon), configured {gib(want_cur)}")
        if live_max != want_max:
            notes.append(f"max memory {gib(live_max)} -> {gib(want_max)} takes effect at next boot")
        live_vcpus, live_maxv = domain["vcpus"], domain["max_vcpus"]
        if live_vcpus != want_cpu:
            if cfg_vcpus != want_cpu and live_vcpus < want_cpu <= live_maxv:
                commands.append(virsh(uri, "setvcpus", name, want_cpu, "--live", timeout=timeout))
                actions.append(f"vCPUs {live_vcpus} -> {want_cpu} (live)")
            else:
                notes.append(f"vCPUs {live_vcpus} -> {want_cpu} takes effect at next boot")
        elif live_maxv != want_cpu:
            notes.append(f"max vCPUs {live_maxv} -> {want_cpu} takes effect at next boot")
    return commands, actions, notes


def disk_plan(
    spec: VmSpec, domain: Domain, snapshot: Snapshot, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> tuple[list[StringCommand], list[str], list[str]]:
    """Add missing data disks; never shrink or remove one (differences become notes).

    Returns commands, actions and notes; a disk file is removed again if its attach fails.
    """
    commands: list[StringCommand] = []
    actions: list[str] = []
    notes: list[str] = []
    cfg = domain.get("config") or domain
    disks = [d for d in cfg.get("disks", []) if d.get("device") == "disk"]
    if not disks:
        return commands, actions, notes
    boot, data = disks[0], disks[1:]
    wanted = data_disk_targets([boot["target"]], spec.num_disks)
    present = {d["target"]: d for d in data}
    missing = [t for t in wanted if t not in present]
    extra = [d["target"] for d in data if d["target"] not in wanted]
    if extra:
        notes.append(f"has data disk(s) {', '.join(extra)} beyond numDisks {spec.num_disks}: not removed")
    capacities = {
        vol.get("path"): vol.get("capacity")
        for vols in snapshot.get("volumes", {}).values()
        for vol in vols.values()
    }
    for target in wanted:
        disk = present.get(target)
        capacity = capacities.get(disk.get("path")) if disk else None
        if disk and capacity and capacity != spec.disk_size_gb * 1024**3:
            notes.append(
                f"data disk {target} is {capacity / 1024**3:g} GiB, manifest says "
                f"{spec.disk_size_gb} GiB: not resized"
            )
    if not missing:
        return commands, actions, notes
    pool = snapshot.get("pools", {}).get(spec.pool)
    if pool is None or not pool.get("path"):
        notes.append(f"cannot add data disks: storage pool {spec.pool!r} is not defined")
        return commands, actions, notes
    live = ["--live"] if is_active(domain) else []
    for target in missing:
        path = posixpath.join(pool["path"], f"{spec.name}-{target}.img")
        create = bounded(
            f"create {path}", timeout, "truncate", "-s", q(f"{spec.disk_size_gb}G"), "--", q(staged(path))
        )
        attach = virsh(
            uri,
            "attach-disk",
            spec.name,
            path,
            target,
            "--targetbus",
            "virtio",
            "--subdriver",
            "raw",
            "--config",
            *live,
            timeout=timeout,
        )
        commands.append(_with_cleanup([path], pool["path"], create, timeout, grouped=True, then=attach))
        actions.append(f"add data disk {target} {spec.disk_size_gb} GiB" + (" (live)" if live else ""))
    return commands, actions, notes


def converge_plan(
    spec: VmSpec, snapshot: Snapshot, uri: str, disks: bool = True, timeout: int = DEFAULT_TIMEOUT
) -> VmPlan:
    """Bring an existing domain to its vmspec: resources, data disks, autostart; report the rest."""
    domain = snapshot["domains"][spec.name]
    plan = VmPlan(spec.name)
    commands, plan.actions, plan.notes = resource_plan(spec, domain, uri, timeout)
    if disks:
        more, actions, notes = disk_plan(spec, domain, snapshot, uri, timeout)
        commands += more
        plan.actions += actions
        plan.notes += notes
    if spec.autostart is not None and bool(domain.get("autostart")) != spec.autostart:
        commands.append(
            virsh(uri, "autostart", *([] if spec.autostart else ["--disable"]), spec.name, timeout=timeout)
        )
        plan.actions.append(f"autostart {'on' if spec.autostart else 'off'}")
    interfaces = (domain.get("config") or domain).get("interfaces") or []
    if interfaces and (interfaces[0].get("mac") or "").lower() != spec.mac:
        plan.notes.append(
            f"first NIC has MAC {interfaces[0].get('mac')}, manifest says {spec.mac}: "
            "its DHCP reservation will not match (rebuild the VM to change it)"
        )
    if commands:
        plan.command = all_of(commands)
        plan.limit = session_limit(2 * len(commands), timeout)
    return plan


def staged(path: str) -> str:
    """Where ``_with_cleanup`` has its command fill ``path``: the same name in the private staging
    directory the command runs in (``./<name>``); the file reaches ``path`` only once it is full."""
    return "./" + posixpath.basename(path)


def _with_cleanup(
    paths: list[str],
    pool_dir: str,
    command: StringCommand,
    timeout: int,
    grouped: bool = False,
    then: StringCommand | None = None,
) -> StringCommand:
    """Make ``paths`` (new files in ``pool_dir``) as 0600 files filled by ``command``, then run ``then``.

    The pool directory may be writable by others (an older setup's group kvm, an NFS share's 1777),
    who could swap a file for a link between any check and a tool reopening it by path. So the files
    are created (O_EXCL) and filled (``command`` names them with ``staged``) in a private directory,
    made with ``mktemp -d`` in the pool directory (same filesystem) and checked after ``cd`` (0700,
    ours, its parent the pool directory, empty: a swapped one is refused); the command runs in it.
    Each full file is then hard-linked to its path with ``ln -T``, which never replaces or follows
    anything there (an entry that appeared meanwhile is refused, named), and its staging name goes.
    A path that exists already as anything, a dangling link included, is refused before anything
    is made. If anything fails, what was made is removed (staged files by their name in the private
    directory, published ones only if this command linked them) and the staging directory goes.
    ``grouped``: in a subshell, whose status is the result, for use inside a longer command.
    """
    quoted: list[Any] = [q(p) for p in paths]
    after: list[str | StringCommand] = ["&&", then] if then is not None else []
    stop = "exit 1"
    body = sh(
        "umask 077; out=0; in=; t=; cleanup() { if [ -n \"$in\" ]; then for f in",
        *quoted,
        '; do rm -f -- "./${f##*/}"; done; fi; i=0; for f in',
        *quoted,
        '; do [ "$i" -ge "$out" ] || rm -f -- "$d/${f##*/}"; i=$((i + 1)); done;',
        'if [ -n "$t" ]; then cd / && rmdir -- "$t"; fi; };',
        "for f in",
        *quoted,
        '; do if [ -e "$f" ] || [ -L "$f" ]; then',
        'echo "kvm-qemu: $f already exists; refusing to overwrite it" >&2;',
        stop,
        "; fi; done;",
        "d=$(",
        bounded(f"resolve {pool_dir}", timeout, "readlink", "-f", "--", q(pool_dir)),
        ") ||",
        stop,
        "; for f in",
        *quoted,
        '; do if [ "$(readlink -f -- "${f%/*}")" != "$d" ]; then',
        'echo "kvm-qemu: $f is not a file in the pool directory $d; refusing it" >&2;',
        stop,
        "; fi; done; trap cleanup EXIT;",
        't=$(mktemp -d -- "$d/.kvm-qemu-XXXXXXXX") ||',
        stop,
        ';  if ! cd -P -- "$t" || [ "$(stat -c %a -- .)" != 700 ] || [ -n "$(ls -A)" ]',
        '|| [ "$(stat -c %d:%i -- ..)" != "$(stat -L -c %d:%i -- "$d")" ]',
        # The owner is ours, except on NFS, where root may be squashed to another user.
        '|| { [ "$(stat -c %u -- .)" != "$(id -u)" ] && [ "$(stat -f -c %T -- .)" != nfs ]; }; then',
        'echo "kvm-qemu: the private directory $t in $d was swapped; refusing to use it" >&2;',
        stop,
        # The command creates the files it fills (cp, qemu-img, truncate, a redirection); one it leaves
        # out is made empty afterwards. Not before: nothing can be planted in the private directory, and
        # copying into a file made beforehand costs a flush of all its data at close (ext4 takes
        # truncate-and-rewrite for a file being replaced).
        "; fi; in=1; if",
        command,
        "&& for f in",
        *quoted,
        '; do [ -e "./${f##*/}" ] || ( set -C; : > "./${f##*/}" ) || break; done',
        "&& for f in",
        *quoted,
        '; do if ! ln -T -- "./${f##*/}" "$d/${f##*/}"; then',
        'echo "kvm-qemu: $d/${f##*/} appeared meanwhile; refusing to replace it" >&2; break; fi;',
        'out=$((out + 1)); rm -f -- "./${f##*/}"; done && [',
        q(len(paths)),
        '-eq "$out" ]',
        *after,
        '; then trap - EXIT; cd / && { rmdir -- "$t" || true; }; else cleanup; trap - EXIT;',
        stop,
        "; fi",
    )
    if grouped:
        # A subshell: the umask, directory, trap and variables stay inside, and its status is the result.
        return sh("(", body, ")")
    return body


def build_plans(
    specs: list[VmSpec],
    snapshot: Snapshot,
    uri: str,
    clone: bool = True,
    timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> list[VmPlan]:
    """Clone what is missing (when ``clone``), converge what exists."""
    plans = []
    domains = snapshot.get("domains", {})
    for spec in specs:
        if spec.name in domains:
            plans.append(converge_plan(spec, snapshot, uri, timeout=timeout))
        elif clone:
            plans.append(clone_plan(spec, snapshot, uri, timeout, copy_timeout))
        else:
            plans.append(VmPlan(spec.name, notes=["not defined on this host (run deploys/build.py)"]))
    return plans


# --- power state ---------------------------------------------------------------------------------


def each_of(steps: list[tuple[str, StringCommand]]) -> StringCommand:
    """Run (label, bounded command) steps one after another in one shell, each whatever the others did.

    A step that fails says so on stderr by its label (``kvm-qemu: start of vm1 failed (exit 1)``) and
    the next one still runs; the status is 1 when any failed, so one failure still fails the host.
    """
    # "failed", not "rc": bounded() sets rc when its step fails.
    parts: list[str | StringCommand | Any] = ["failed=0;"]
    for label, command in steps:
        parts += [command, "|| { s=$?; echo", q(f"kvm-qemu: {label} failed"), '"(exit $s)" >&2; failed=1; };']
    parts.append('(exit "$failed")')
    return sh(*parts)


def power_plan(
    names: list[str],
    domains: dict[str, Domain],
    running: bool,
    uri: str,
    force: bool = False,
    timeout: int = 60,
    step_timeout: int = DEFAULT_TIMEOUT,
) -> VmPlan | None:
    """One command for all of a host's VMs: start/resume, or shutdown-wait-destroy (``force``: destroy).

    ``timeout``: seconds a graceful shutdown may take; ``step_timeout``: seconds any one virsh call may take.
    """
    present = [n for n in names if n in domains]
    if running:
        to_start = [n for n in present if domains[n].get("state") not in ACTIVE_STATES]
        to_resume = [n for n in present if domains[n].get("state") == "paused"]
        if not to_start and not to_resume:
            return None
        plan = VmPlan(", ".join(to_start + to_resume))
        plan.actions = [f"start {n}" for n in to_start] + [f"resume {n}" for n in to_resume]
        steps = [("start", n) for n in to_start] + [("resume", n) for n in to_resume]
        if len(steps) == 1:
            plan.command = virsh(uri, steps[0][0], steps[0][1], timeout=step_timeout)
        else:
            # One after another: side by side, the sandbox's libvirtds (one network namespace) race
            # for tap names ("Unable to create tap device vnetN: Device or resource busy").
            plan.command = each_of(
                [(f"{verb} of {n}", virsh(uri, verb, n, timeout=step_timeout)) for verb, n in steps]
            )
        plan.limit = session_limit(len(steps), step_timeout)
        return plan
    to_stop = [n for n in present if is_active(domains[n])]
    if not to_stop:
        return None
    plan = VmPlan(", ".join(to_stop))
    if force:
        plan.actions = [f"destroy (power off) {n}" for n in to_stop]
        plan.command = all_of([virsh(uri, "destroy", n, timeout=step_timeout) for n in to_stop])
        plan.limit = session_limit(len(to_stop), step_timeout)
        return plan
    plan.actions = [f"shut down {n} (destroy after {timeout}s)" for n in to_stop]
    quoted: list[Any] = [q(n) for n in to_stop]
    # virsh() would quote "$n" literally, so the loop variable is expanded in plain shell text here.
    run = sh("timeout -k", str(KILL_AFTER), q(int(step_timeout)), "virsh -q -c", q(uri))
    state = sh('"$(', run, 'domstate -- "$n")"')
    plan.command = sh(
        "rc=0; for n in",
        *quoted,
        "; do",
        run,
        'shutdown -- "$n" >/dev/null || true; done;',
        "deadline=$(( $(date +%s) +",
        q(int(timeout)),
        "));",
        "for n in",
        *quoted,
        "; do",
        "while [",
        state,
        '!= \'shut off\' ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done;',
        "if [",
        state,
        "!= 'shut off' ]; then",
        'echo "kvm-qemu: $n did not shut down within',
        q(int(timeout)),
        's; destroying it";',
        run,
        'destroy -- "$n" >/dev/null || { echo "kvm-qemu: destroy of $n failed or timed out after',
        q(int(step_timeout)),
        's" >&2; rc=1; }; fi; done; exit $rc',
    )
    # shutdown, a last domstate and destroy per VM, the wait, and one domstate per VM that overruns it
    plan.limit = session_limit(4 * len(to_stop), step_timeout, int(timeout))
    return plan


# --- delete --------------------------------------------------------------------------------------


def _disks_of(domain: Domain) -> list[dict[str, Any]]:
    """Every disk of a domain, live and persistent definitions together."""
    return list(domain.get("disks", [])) + list((domain.get("config") or {}).get("disks", []))


def _backing_map(snapshot: Snapshot) -> dict[str, str]:
    """path -> backing file, from image headers (every pool directory, every domain disk) and volumes."""
    backing: dict[str, str] = {}
    for vols in snapshot.get("volumes", {}).values():
        for vol in vols.values():
            if vol.get("path") and vol.get("backing"):
                backing[posixpath.normpath(vol["path"])] = posixpath.normpath(vol["backing"])
    for path, entry in snapshot.get("files", {}).items():
        if entry.get("backing"):
            backing[posixpath.normpath(path)] = posixpath.normpath(entry["backing"])
    for domain in snapshot.get("domains", {}).values():
        for disk in _disks_of(domain):
            if disk.get("path") and disk.get("backing"):
                backing.setdefault(posixpath.normpath(disk["path"]), posixpath.normpath(disk["backing"]))
    return backing


def _users(snapshot: Snapshot, except_domain: str | None = None) -> dict[str, tuple[str, str]]:
    """path -> (domain, why): every disk of every other domain, and each one's whole backing chain."""
    backing = _backing_map(snapshot)
    used: dict[str, tuple[str, str]] = {}
    for name, domain in snapshot.get("domains", {}).items():
        if name == except_domain:
            continue
        for disk in _disks_of(domain):
            if not disk.get("path"):
                continue
            chain = [posixpath.normpath(disk["path"])]
            following = backing.get(chain[0]) or disk.get("backing")
            while following and posixpath.normpath(following) not in chain and len(chain) < 32:
                chain.append(posixpath.normpath(following))
                following = backing.get(chain[-1])
            used.setdefault(chain[0], (name, f"disk of domain {name}"))
            for path in chain[1:]:
                used.setdefault(path, (name, f"backing file of domain {name}"))
    return used


def in_use(snapshot: Snapshot, except_domain: str | None = None) -> dict[str, str]:
    """path -> why it is in use: every disk of every other domain, and each one's whole backing chain.

    Read from the domain definitions (defined and running domains alike) and the image headers, so a
    base whose linked clones sit in an inactive pool is in use even though no pool lists them.
    """
    return {path: why for path, (_domain, why) in _users(snapshot, except_domain).items()}


@dataclass(frozen=True)
class Need:
    """Who still needs a file: a domain (its disk or anywhere in its backing chain) or another file."""

    owner: str  # the domain's name, or the path of the file whose backing file it is
    reason: str  # "disk of domain web", "backing file of domain web", "backing file of another volume, X"


def needed_by_others(
    snapshot: Snapshot, vm: str, paths: list[str] | tuple[str, ...], own: tuple[str, ...] = ()
) -> dict[str, Need]:
    """Which of ``paths`` (files of ``vm`` about to be removed) something else still needs, and who.

    The rule delete and move share: a file is needed when it is a disk of another domain or lies
    anywhere in the backing chain of one (``in_use``), or when it is the backing file of another file
    (not one of ``paths`` or ``own``, the VM's own files). Keys are the paths as given.
    """
    users = _users(snapshot, except_domain=vm)
    mine = {posixpath.normpath(p) for p in (*paths, *own)}
    backs = {b: p for p, b in _backing_map(snapshot).items() if p not in mine}
    needed: dict[str, Need] = {}
    for path in paths:
        normal = posixpath.normpath(path)
        if normal in users:
            needed[path] = Need(*users[normal])
        elif normal in backs:
            needed[path] = Need(backs[normal], f"backing file of another volume, {backs[normal]}")
    return needed


def owned_volumes(
    vm: str, domain: Domain | None, snapshot: Snapshot, shared_dirs: tuple[str, ...] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (pool, file name) pairs a delete may remove, and the disk paths it keeps (with why).

    Owned means: in a pool directory, named ``<vm>-vd*`` like the build names them (or
    ``<vm>-vdX@<snapshot>.qcow2`` like ``_snapshot_plan`` names snapshot overlays, or ``<vm>-seed.iso``,
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
    pools_by_dir = {
        posixpath.normpath(p["path"]): name for name, p in snapshot.get("pools", {}).items() if p.get("path")
    }
    files = snapshot.get("files", {})
    candidates: dict[str, dict[str, Any]] = {}
    for disk in _disks_of(domain or {}):
        if disk.get("path"):
            candidates.setdefault(posixpath.normpath(disk["path"]), disk)
    known = list(files) + [
        v["path"] for vols in snapshot.get("volumes", {}).values() for v in vols.values() if v.get("path")
    ]
    shared = {posixpath.normpath(d) for d in shared_dirs} | {
        posixpath.normpath(p["path"])
        for p in snapshot.get("pools", {}).values()
        if p.get("path") and p.get("type") in NETWORK_POOLS
    }
    elsewhere: list[str] = []
    for path in known:
        directory, base = posixpath.split(posixpath.normpath(path))
        if directory in pools_by_dir and pattern.match(base) and posixpath.normpath(path) not in candidates:
            if directory in shared:
                elsewhere.append(posixpath.normpath(path))
            else:
                candidates[posixpath.normpath(path)] = {"device": "disk", "path": path}
    needs = needed_by_others(snapshot, vm, list(candidates))
    owned: list[tuple[str, str]] = []
    kept: list[str] = []
    for path, disk in candidates.items():
        directory, base = posixpath.split(path)
        pool = pools_by_dir.get(directory)
        kind = files.get(path, {}).get("kind", "file")
        if disk.get("device", "disk") != "disk" and base != seed:
            kept.append(f"{path} ({disk.get('device')})")
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


def delete_plan(
    vm: str,
    snapshot: Snapshot,
    uri: str,
    keep_disks: bool = False,
    timeout: int = DEFAULT_TIMEOUT,
    shared_dirs: tuple[str, ...] = (),
) -> VmPlan | None:
    """Destroy and undefine ``vm``, then remove the files it owns; None when nothing is left to do.

    Every file is checked on the host before anything changes (still a plain file, not a link), so a
    refusal leaves the domain defined. Files are removed directly, not through a pool (an inactive
    pool cannot delete volumes), so a re-run after a failure finishes the job: when the domain is
    already gone, the files it owned that are still in the pool directories are removed.
    """
    domain = snapshot.get("domains", {}).get(vm)
    owned, kept = owned_volumes(vm, domain, snapshot, shared_dirs)
    if domain is None and (keep_disks or not owned):
        return None
    pools = snapshot.get("pools", {})
    paths = [posixpath.join(pools[pool]["path"], base) for pool, base in owned]
    quoted: list[Any] = [q(p) for p in paths]
    plan = VmPlan(vm)
    commands: list[StringCommand] = []
    if paths and not keep_disks:
        commands.append(
            sh(
                "{ for f in",
                *quoted,
                '; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then',
                'echo "kvm-qemu: $f is not a plain file any more; refusing to delete',
                q(vm),
                '" >&2; exit 1; fi; done; }',
            )
        )
    if domain is None:
        plan.actions.append("domain already undefined")
    else:
        if is_active(domain):
            commands.append(virsh(uri, "destroy", vm, timeout=timeout))
            plan.actions.append("destroy")
        if domain.get("persistent", True):
            commands.append(
                sh(
                    virsh(
                        uri,
                        "undefine",
                        "--nvram",
                        "--managed-save",
                        "--snapshots-metadata",
                        "--checkpoints-metadata",
                        vm,
                        timeout=timeout,
                    ),
                    ">/dev/null",
                )
            )
            plan.actions.append("undefine (with NVRAM, managed save, snapshot metadata)")
    if keep_disks:
        plan.notes += [f"kept {pool}/{base} (keep_disks)" for pool, base in owned]
    elif paths:
        commands.append(bounded(f"removal of the disks of {vm}", timeout, "rm", "-f", "--", *quoted))
        plan.actions += [f"delete {path}" for path in paths]
        # Refreshing keeps libvirt's volume lists current; an inactive pool has none to refresh.
        for pool in sorted({p for p, _ in owned if pools[p].get("state") == "running"}):
            commands.append(sh("{", virsh(uri, "pool-refresh", pool, timeout=timeout), ">/dev/null || :; }"))
    plan.notes += [f"kept {k}" for k in kept]
    if not commands:
        return None
    plan.command = all_of(commands)
    plan.limit = session_limit(len(commands), timeout)
    return plan
