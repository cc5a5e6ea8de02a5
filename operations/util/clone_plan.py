"""Clone a missing VM from its base (full copy or qcow2 overlay, data disks, the definition), and the build's
plans: clone what is missing, converge what exists."""

from __future__ import annotations

from pyinfra.api import StringCommand

from facts.util.host_state import HostState
from inventories.manifest_model import VmSpec
from operations.util.converge_plan import converge_plan
from operations.util.disk_files import qcow2_overlay, staged, with_cleanup
from operations.util.domain_xml import CloneError, clone_xml, plan_disks
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
    source = host.domains.get(spec.srcvm)
    pool = host.pools.get(spec.pool)
    if source is None:
        plan.error = f"source domain {spec.srcvm} is not defined on this host (see deploys/base_vm.py)"
        return plan
    if pool is None or not pool.path:
        plan.error = f"storage pool {spec.pool} is not defined on this host (see deploys/pools.py)"
        return plan
    if source.active:
        plan.notes.append(f"source domain {spec.srcvm!r} is running: its disk may be copied mid-write")
    try:
        disks = plan_disks(spec, source.xml, pool.path)
        xml = clone_xml(spec, source.xml, disks)
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
        f"define from {spec.srcvm} with {spec.vcpus} vCPU(s), memory {spec.memory_gib} GiB "
        f"(max {spec.max_memory_gib} GiB), MAC {spec.mac}",
    )
    if spec.autostart:
        plan.actions.append("autostart on")

    plan.command = with_cleanup(paths, pool.path, all_of(steps), timeout, then=define)
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
