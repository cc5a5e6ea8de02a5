"""What every libvirt operation does with its plans: read the host's state, log and diff the plans, and
yield their commands (bounded, with their stdin), errors last so the host's other VMs are still handled.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand

from facts.util.host_state import HostState
from operations.util.output import log
from operations.util.run_store import hypervisor_view
from operations.util.virsh import fail
from operations.util.vm_plan import VmPlan

Commands = Generator[Any, None, None]

def log_plans(plans: list[VmPlan], everything: bool = False) -> None:
    for plan in plans:
        if everything or plan.changes or plan.notes:
            log(plan.summary())


def show_diff(lines: list[str]) -> None:
    """With ``--diff``: before -> after lines, once (at prepare, or at execute when there was none: -y)."""
    state = host.state
    config = getattr(state, "config", None)
    if not getattr(config, "DIFF", False):
        return
    if getattr(state, "is_executing", False) and getattr(state, "check_for_changes", True):
        return
    for line in lines:
        log(f"    {line}")


def plan_commands(plans: list[VmPlan]) -> Commands:
    # Errors go last so every other VM of the host is still handled before the host fails.
    for plan in sorted(plans, key=lambda p: p.error is not None):
        if plan.error:
            yield fail(f"{plan.vm}: {plan.error}")
        elif plan.command is not None:
            yield limited(plan)


UNREAD = "the libvirt state of this host could not be read (see the error above); nothing was changed"


def hypervisor_state(uri: str, timeout: int) -> HostState | None:
    """This host's Hypervisor fact as this run last read it (``run_store.hypervisor_view``), or None
    when reading it failed."""
    return hypervisor_view(host, uri, timeout)


def limited(plan: VmPlan) -> StringCommand:
    """The plan's command with its stdin and the controller-side time limit."""
    extra: dict[str, Any] = {"_timeout": plan.limit} if plan.limit else {}
    if plan.stdin:
        extra["_stdin"] = plan.stdin
    command = plan.command
    assert command is not None, f"{plan.vm}: a plan without a command has nothing to run"
    return StringCommand(command, **extra) if extra else command
