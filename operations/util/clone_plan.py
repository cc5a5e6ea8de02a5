"""Clone a missing VM from its base (full copy or qcow2 overlay, data disks, the definition), and the build's
plans: clone what is missing, converge what exists."""

from __future__ import annotations

from pyinfra.api import StringCommand

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import VmSpec
from operations.util.converge_plan import converge_plan
from operations.util.disk_files import qcow2_overlay, staged, with_cleanup
from operations.util.domain_xml import ClonedDisk, CloneError, clone_xml, plan_disks
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
from operations.util.vm_plan import VmPlan


def clone_plan(
    spec: VmSpec,
    host: HostState,
    uri: str,
    timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> VmPlan:
    """A new domain from ``spec.srcvm``: disk copies or overlays, data disks, one ``virsh define``.

    Every step is bounded by ``timeout`` seconds, a full copy of a base disk by ``copy_timeout``.
    """
    plan = VmPlan(spec.name)
    found = _source_and_pool(spec, host)
    if isinstance(found, str):
        plan.error = found
        return plan
    source, pool_path = found
    if source.active:
        plan.notes.append(f"source domain {spec.srcvm!r} is running: its disk may be copied mid-write")
    try:
        disks = plan_disks(spec, source.xml, pool_path)
        xml = clone_xml(spec, source.xml, disks)
    except CloneError as exc:
        plan.error = f"cannot clone {spec.srcvm}: {exc}"
        return plan

    steps = [_disk_step(spec, disk, timeout, copy_timeout) for disk in disks]
    sysprep = bool(spec.sysprep)
    if sysprep:  # clean clones (operations/util/sysprep.py): after the copies, before the define
        steps.append(_sysprep_step(spec, disks, copy_timeout))
    plan.actions = [_define_action(spec), *(action for _, action in steps)]
    if spec.autostart:
        plan.actions.append("autostart on")
    plan.command = _clone_command(spec, uri, disks, pool_path, [step for step, _ in steps], sysprep, timeout)
    plan.limit = _time_limit(spec, disks, sysprep, timeout, copy_timeout)
    plan.stdin = xml
    return plan


def _source_and_pool(spec: VmSpec, host: HostState) -> tuple[Domain, str] | str:
    """The base domain and the pool directory the clone's files go to, or why there are none."""
    source = host.domains.get(spec.srcvm)
    pool = host.pools.get(spec.pool)
    if source is None:
        return f"source domain {spec.srcvm} is not defined on this host (see deploys/base_vm.py)"
    if pool is None or not pool.path:
        return f"storage pool {spec.pool} is not defined on this host (see deploys/pools.py)"
    return source, pool.path


def _disk_step(spec: VmSpec, disk: ClonedDisk, timeout: int, copy_timeout: int) -> tuple[StringCommand, str]:
    """The command that makes one of the clone's files under its staged name, and its action text:
    an empty data disk, a qcow2 overlay on the base (linked clone) or a sparse full copy."""
    if disk.source is None:
        size = q(f"{disk.size_gib}G")
        create = bounded(f"create {disk.path}", timeout, "truncate", "-s", size, "--", q(staged(disk.path)))
        return create, f"data disk {disk.target} {disk.size_gib} GiB"
    if spec.clone == "linked":
        overlay = qcow2_overlay(
            f"create {disk.path}", timeout, disk.source.path, disk.source.format, staged(disk.path)
        )
        return overlay, f"linked clone of {disk.source.path} as {disk.path}"
    copy = bounded(
        f"copy of {disk.source.path} to {disk.path}",
        copy_timeout,
        "cp",
        "--sparse=always",
        "--",
        q(disk.source.path),
        q(staged(disk.path)),
    )
    return copy, f"full copy of {disk.source.path} to {disk.path}"


def _sysprep_step(spec: VmSpec, disks: list[ClonedDisk], copy_timeout: int) -> tuple[StringCommand, str]:
    """virt-sysprep over the staged copies and overlays of the base's disks (not the data disks)."""
    cloned = [(staged(d.path), d.format) for d in disks if d.source is not None]
    return sysprep_command(spec.hostname, cloned, copy_timeout), f"virt-sysprep (hostname {spec.hostname})"


def _define_action(spec: VmSpec) -> str:
    return (
        f"define from {spec.srcvm} with {spec.vcpus} vCPU(s), memory {spec.memory_gib} GiB "
        f"(max {spec.max_memory_gib} GiB), MAC {spec.mac}"
    )


def _clone_command(
    spec: VmSpec,
    uri: str,
    disks: list[ClonedDisk],
    pool_path: str,
    steps: list[StringCommand],
    sysprep: bool,
    timeout: int,
) -> StringCommand:
    """The steps under the cleanup trap, then ``virsh define`` of the XML on stdin; the tool check
    before them (sysprep), ``virsh autostart`` after."""
    define = sh(virsh(uri, "define", "/dev/stdin", timeout=timeout), ">/dev/null")
    command = with_cleanup([d.path for d in disks], pool_path, all_of(steps), timeout, then=define)
    if sysprep:
        command = sh(tool_check(spec.name), command)
    if spec.autostart:
        command = sh(command, "&&", virsh(uri, "autostart", spec.name, timeout=timeout))
    return command


def _time_limit(spec: VmSpec, disks: list[ClonedDisk], sysprep: bool, timeout: int, copy_timeout: int) -> int:
    """Seconds the controller waits: full copies and virt-sysprep at ``copy_timeout`` each, the other
    steps (overlays, data disks, the define, two spare) at ``timeout``."""
    copies = sum(1 for d in disks if d.source is not None and spec.clone != "linked")
    slow = copies + sysprep
    steps = len(disks) + sysprep + 1  # the disk steps, virt-sysprep, the define
    return session_limit(steps + 2 - slow, timeout, slow * (int(copy_timeout) + KILL_AFTER))


def build_plans(
    specs: list[VmSpec],
    host: HostState,
    uri: str,
    clone: bool = True,
    timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> list[VmPlan]:
    """Clone what is missing (when ``clone``), converge what exists."""
    plans = []
    for spec in specs:
        if spec.name in host.domains:
            plans.append(converge_plan(spec, host, uri, timeout=timeout))
        elif clone:
            plans.append(clone_plan(spec, host, uri, timeout, copy_timeout))
        else:
            plans.append(VmPlan(spec.name, notes=["not defined on this host (run deploys/build.py)"]))
    return plans
