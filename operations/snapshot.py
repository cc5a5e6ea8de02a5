"""Named offline snapshots of domains: created, reverted to, deleted (see ``util/snapshot_plan`` for how).

Each operation reads the ``Hypervisor`` fact once per host (snapshots included), plans every VM with
the pure functions in ``util/snapshot_plan``, logs one line per VM and yields one command per VM. A VM
that is running, absent (for revert) or whose snapshot is not the newest fails the host with the
reason, after the host's other VMs were handled; nothing is changed on that VM.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import OperationValueError, operation

from facts.util.host_state import Domain
from operations.util.plan_commands import UNREAD, hypervisor_state, log_plans, plan_commands
from operations.util.snapshot_plan import create_plan, delete_plan, revert_plan, valid_name
from operations.util.virsh import DEFAULT_TIMEOUT, DEFAULT_URI, fail
from operations.util.vm_plan import VmPlan

Commands = Generator[Any, None, None]


def _check_names(names: list[str]) -> None:
    bad = [n for n in names if not valid_name(n)]
    if bad:
        raise OperationValueError(
            f"invalid snapshot name(s) {', '.join(map(repr, bad))}: a snapshot name uses letters, digits, "
            "'.', '_' and '-', starts with a letter or digit, and has at most 63 characters"
        )


@operation()
def domain_snapshots(
    snapshots: dict[str, list[str]],
    present: bool = True,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """Make the named snapshots of each domain exist (``present``), or not exist.

    + snapshots: ``{domain: [snapshot name, ...]}``, oldest first; missing ones are created in that order
    + present: False deletes them (newest first is required: only a domain's newest snapshot can go)
    + uri: the libvirt connection URI
    + command_timeout: seconds each remote step may take

    Created snapshots are offline, external, disk-only: the domain must be shut off. Deleting keeps the
    VM's current data (the overlays are committed into the files below them).

    **Example:**

    .. code:: python

        snapshot.domain_snapshots(
            name="Snapshot before the upgrade",
            snapshots={"vm01": ["before-upgrade"]},
        )
    """
    _check_names([n for names in snapshots.values() for n in names])
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    domains = host_state.domains
    plans: list[VmPlan] = []
    for vm, names in snapshots.items():
        if present:
            plan = create_plan(vm, list(names), domains.get(vm), uri, command_timeout)
            if plan is not None:
                plans.append(plan)
            continue
        # One snapshot per domain per run: the next one's plan depends on this one's result.
        domain = domains.get(vm)
        existing = [n for n in reversed(_names(domain)) if n in names] if domain is not None else []
        if existing:
            plan = delete_plan(vm, existing[0], domain, host_state, uri, command_timeout)
            if plan is not None:
                if len(existing) > 1:
                    plan.notes.append(f"{', '.join(existing[1:])} left for the next run")
                plans.append(plan)
    log_plans(plans)
    if not plans:
        state = "exist" if present else "are absent"
        host.noop(f"the snapshots of {len(snapshots)} domain(s) {state}")
        return
    yield from plan_commands(plans)


def _names(domain: Domain) -> list[str]:
    return [s.name or "" for s in domain.snapshots]


@operation(is_idempotent=False)
def domain_snapshot_reverted(
    domains: list[str],
    snapshot_name: str,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """Revert each domain's disks to the snapshot ``snapshot_name``: every write since it is lost.

    + domains: the domains to revert; each must be shut off and have the snapshot as its newest one
    + snapshot_name: the snapshot to go back to (it stays, so reverting again is possible)
    + uri: the libvirt connection URI
    + command_timeout: seconds each remote step may take

    **Example:**

    .. code:: python

        snapshot.domain_snapshot_reverted(
            name="Back to before the upgrade",
            domains=["vm01"],
            snapshot_name="before-upgrade",
        )
    """
    _check_names([snapshot_name])
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    known = host_state.domains
    plans = [revert_plan(vm, snapshot_name, known.get(vm), uri, command_timeout) for vm in domains]
    log_plans(plans)
    if not plans:
        host.noop("no domain to revert")
        return
    yield from plan_commands(plans)


__all__ = ["domain_snapshot_reverted", "domain_snapshots"]
