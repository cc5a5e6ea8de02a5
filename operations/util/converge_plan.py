"""Converge an existing domain to its vmspec: vCPUs, memory (live where libvirt allows it, and in the
persistent definition) and missing data disks."""

from __future__ import annotations

import posixpath

from pyinfra.api import StringCommand

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import VmSpec
from operations.util.disk_files import staged, with_cleanup
from operations.util.domain_xml import data_disk_targets
from operations.util.virsh import (
    DEFAULT_TIMEOUT,
    all_of,
    bounded,
    q,
    session_limit,
    virsh,
)
from operations.util.vm_compare import Resources, configured, gib, wanted
from operations.util.vm_plan import VmPlan

# commands, actions and notes: of a whole plan, or of one step of it
Steps = tuple[list[StringCommand], list[str], list[str]]


def resource_plan(spec: VmSpec, domain: Domain, uri: str, timeout: int = DEFAULT_TIMEOUT) -> Steps:
    """Commands, actions and notes that bring vCPUs and memory to the vmspec.

    Persistent config always; the running domain too where libvirt allows it (memory up to its max
    memory, vCPUs up to its max vCPUs). Max memory / max vCPUs of a running domain change at next boot.
    """
    name, have, want = spec.name, configured(domain), wanted(spec)
    steps: list[Steps] = []
    if domain.persistent:
        steps += [
            _config_memory(name, have, want, uri, timeout),
            _config_vcpus(name, have, want, uri, timeout),
        ]
    else:
        steps.append(([], [], ["transient domain: config changes skipped"]))
    if domain.active:
        # Live values follow the guest: a balloon without a guest driver never reaches its target, so
        # a live change goes with the config change it belongs to instead of chasing live drift forever.
        cfg_cur = have.memory_kib if domain.persistent else domain.memory_kib
        cfg_vcpus = have.vcpus if domain.persistent else domain.vcpus
        steps += [
            _live_memory(name, domain, cfg_cur, want, uri, timeout),
            _live_vcpus(name, domain, cfg_vcpus, want.vcpus, uri, timeout),
        ]
    return _joined(steps)


def _joined(steps: list[Steps]) -> Steps:
    """The commands, actions and notes of ``steps``, in step order."""
    commands: list[StringCommand] = []
    actions: list[str] = []
    notes: list[str] = []
    for more, more_actions, more_notes in steps:
        commands += more
        actions += more_actions
        notes += more_notes
    return commands, actions, notes


def _config_memory(name: str, have: Resources, want: Resources, uri: str, timeout: int) -> Steps:
    """Max memory and memory of the persistent definition."""
    cfg_max, cfg_cur = have.max_memory_kib, have.memory_kib
    want_max, want_cur = want.max_memory_kib, want.memory_kib
    setmax = (
        [virsh(uri, "setmaxmem", name, want_max, "--config", timeout=timeout)] if cfg_max != want_max else []
    )
    setcur = (
        [virsh(uri, "setmem", name, want_cur, "--config", timeout=timeout)] if cfg_cur != want_cur else []
    )
    # Lowering max below the current value would be refused, so shrink current first.
    commands = setcur + setmax if want_max < cfg_cur else setmax + setcur
    actions = [f"max memory {gib(cfg_max)} -> {gib(want_max)} (config)"] if setmax else []
    actions += [f"memory {gib(cfg_cur)} -> {gib(want_cur)} (config)"] if setcur else []
    return commands, actions, []


def _config_vcpus(name: str, have: Resources, want: Resources, uri: str, timeout: int) -> Steps:
    """vCPUs and max vCPUs of the persistent definition (both the vmspec's vCPUs)."""
    cfg_vcpus, cfg_maxv, want_cpu = have.vcpus, have.max_vcpus, want.vcpus
    if (cfg_vcpus, cfg_maxv) == (want_cpu, want_cpu):
        return [], [], []
    setmaxv = (
        [virsh(uri, "setvcpus", name, want_cpu, "--maximum", "--config", timeout=timeout)]
        if cfg_maxv != want_cpu
        else []
    )
    setv = (
        [virsh(uri, "setvcpus", name, want_cpu, "--config", timeout=timeout)] if cfg_vcpus != want_cpu else []
    )
    commands = setmaxv + setv if want_cpu > cfg_vcpus else setv + setmaxv
    return commands, [f"vCPUs {cfg_vcpus} (max {cfg_maxv}) -> {want_cpu} (config)"], []


def _live_memory(name: str, domain: Domain, cfg_cur: int, want: Resources, uri: str, timeout: int) -> Steps:
    """Memory of the running domain, with the configured memory ``cfg_cur``; max memory waits for a boot."""
    want_cur, want_max = want.memory_kib, want.max_memory_kib
    live_cur, live_max = domain.memory_kib, domain.max_memory_kib
    commands: list[StringCommand] = []
    actions: list[str] = []
    notes: list[str] = []
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
    return commands, actions, notes


def _live_vcpus(name: str, domain: Domain, cfg_vcpus: int, want_cpu: int, uri: str, timeout: int) -> Steps:
    """vCPUs of the running domain, with the configured vCPUs ``cfg_vcpus``; max vCPUs wait for a boot."""
    live_vcpus, live_maxv = domain.vcpus, domain.max_vcpus
    if live_vcpus != want_cpu:
        if cfg_vcpus != want_cpu and live_vcpus < want_cpu <= live_maxv:
            command = virsh(uri, "setvcpus", name, want_cpu, "--live", timeout=timeout)
            return [command], [f"vCPUs {live_vcpus} -> {want_cpu} (live)"], []
        return [], [], [f"vCPUs {live_vcpus} -> {want_cpu} takes effect at next boot"]
    if live_maxv != want_cpu:
        return [], [], [f"max vCPUs {live_maxv} -> {want_cpu} takes effect at next boot"]
    return [], [], []


def disk_plan(
    spec: VmSpec, domain: Domain, host: HostState, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> Steps:
    """Add missing data disks; never shrink or remove one (differences become notes).

    Returns commands, actions and notes; a disk file is removed again if its attach fails.
    """
    commands: list[StringCommand] = []
    actions: list[str] = []
    notes: list[str] = []
    disks = [d for d in domain.config.disks if d.is_disk]
    if not disks:
        return commands, actions, notes
    boot, data = disks[0], disks[1:]
    wanted = data_disk_targets([boot.target or ""], spec.num_disks)
    present = {d.target: d for d in data}
    missing = [t for t in wanted if t not in present]
    extra = [d.target or "" for d in data if d.target not in wanted]
    if extra:
        notes.append(f"has data disk(s) {', '.join(extra)} beyond numDisks {spec.num_disks}: not removed")
    capacities = {vol.path: vol.capacity for vol in host.all_volumes()}
    for target in wanted:
        disk = present.get(target)
        capacity = capacities.get(disk.path) if disk else None
        if disk and capacity and capacity != spec.disk_size_gib * 1024**3:
            notes.append(
                f"data disk {target} is {capacity / 1024**3:g} GiB, manifest says "
                f"{spec.disk_size_gib} GiB: not resized"
            )
    if not missing:
        return commands, actions, notes
    pool = host.pools.get(spec.pool)
    if pool is None or not pool.path:
        notes.append(f"cannot add data disks: storage pool {spec.pool!r} is not defined")
        return commands, actions, notes
    live = ["--live"] if domain.active else []
    for target in missing:
        path = posixpath.join(pool.path, f"{spec.name}-{target}.img")
        create = bounded(
            f"create {path}", timeout, "truncate", "-s", q(f"{spec.disk_size_gib}G"), "--", q(staged(path))
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
        commands.append(with_cleanup([path], pool.path, create, timeout, grouped=True, then=attach))
        actions.append(f"add data disk {target} {spec.disk_size_gib} GiB" + (" (live)" if live else ""))
    return commands, actions, notes


def converge_plan(
    spec: VmSpec, host: HostState, uri: str, disks: bool = True, timeout: int = DEFAULT_TIMEOUT
) -> VmPlan:
    """Bring an existing domain to its vmspec: resources, data disks, autostart; report the rest."""
    domain = host.domains[spec.name]
    plan = VmPlan(spec.name)
    commands, plan.actions, plan.notes = resource_plan(spec, domain, uri, timeout)
    if disks:
        more, actions, notes = disk_plan(spec, domain, host, uri, timeout)
        commands += more
        plan.actions += actions
        plan.notes += notes
    if spec.autostart is not None and domain.autostart != spec.autostart:
        commands.append(
            virsh(uri, "autostart", *([] if spec.autostart else ["--disable"]), spec.name, timeout=timeout)
        )
        plan.actions.append(f"autostart {'on' if spec.autostart else 'off'}")
    interfaces = domain.config.interfaces
    if interfaces and (interfaces[0].mac or "").lower() != spec.mac:
        plan.notes.append(
            f"first NIC has MAC {interfaces[0].mac}, manifest says {spec.mac}: "
            "its DHCP reservation will not match (rebuild the VM to change it)"
        )
    if commands:
        plan.command = all_of(commands)
        plan.limit = session_limit(2 * len(commands), timeout)
    return plan
