"""Power state: start (each VM whatever the others did) or graceful shutdown, destroyed after a limit."""

from __future__ import annotations

from typing import Any

from pyinfra.api import StringCommand

from facts.util.host_state import Domain
from operations.util.virsh import (
    DEFAULT_TIMEOUT,
    KILL_AFTER,
    all_of,
    q,
    session_limit,
    sh,
    virsh,
)
from operations.util.vm_plan import VmPlan


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


def start_command(uri: str, vm: str, timeout: int) -> StringCommand:
    """``virsh start`` (bounded), tried once more a second later when it fails.

    libvirt names a VM's tap device itself (the first free ``vnetN``); two libvirtds that share one
    network namespace (nested or test setups such as the sandbox) can take the same free name at the
    same instant, and the later one fails with "Unable to create tap device vnetN: Device or resource
    busy". The second try takes the next free name; any other failure fails twice, with its message.
    """
    return sh(
        "for try in 1 2; do if",
        virsh(uri, "start", vm, timeout=timeout),
        '; then st=0; break; else st=$?; fi; [ "$try" = 2 ] || sleep 1; done; (exit "$st")',
    )


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
        return start_plan(present, domains, uri, step_timeout)
    to_stop = [n for n in present if domains[n].active]
    if not to_stop:
        return None
    if force:
        return destroy_plan(to_stop, uri, step_timeout)
    return shutdown_plan(to_stop, uri, timeout, step_timeout)


def start_plan(present: list[str], domains: dict[str, Domain], uri: str, step_timeout: int) -> VmPlan | None:
    """Start the shut-off VMs and resume the paused ones, one after another; None when all run."""
    to_start = [n for n in present if not domains[n].active]
    to_resume = [n for n in present if domains[n].state == "paused"]
    if not to_start and not to_resume:
        return None
    plan = VmPlan(", ".join(to_start + to_resume))
    plan.actions = [f"start {n}" for n in to_start] + [f"resume {n}" for n in to_resume]
    steps = [("start", n) for n in to_start] + [("resume", n) for n in to_resume]
    plan.command = start_resume_command(steps, uri, step_timeout)
    # A start may take two tries a second apart.
    plan.limit = session_limit(len(steps) + len(to_start), step_timeout, len(to_start))
    return plan


def start_resume_command(steps: list[tuple[str, str]], uri: str, step_timeout: int) -> StringCommand:
    """The (verb, VM) steps as one command: a lone step as it is, several one after another (``each_of``)."""
    commands = [
        start_command(uri, n, step_timeout) if verb == "start" else virsh(uri, verb, n, timeout=step_timeout)
        for verb, n in steps
    ]
    if len(steps) == 1:
        return commands[0]
    # One after another: side by side, the sandbox's libvirtds (one network namespace) race
    # for tap names ("Unable to create tap device vnetN: Device or resource busy").
    labels = [f"{verb} of {n}" for verb, n in steps]
    return each_of(list(zip(labels, commands, strict=True)))


def destroy_plan(to_stop: list[str], uri: str, step_timeout: int) -> VmPlan:
    """Power the running VMs off at once (``virsh destroy``), no shutdown first."""
    plan = VmPlan(", ".join(to_stop))
    plan.actions = [f"destroy (power off) {n}" for n in to_stop]
    plan.command = all_of([virsh(uri, "destroy", n, timeout=step_timeout) for n in to_stop])
    plan.limit = session_limit(len(to_stop), step_timeout)
    return plan


def shutdown_plan(to_stop: list[str], uri: str, timeout: int, step_timeout: int) -> VmPlan:
    """Ask the running VMs to shut down, wait up to ``timeout`` seconds, destroy those still running."""
    plan = VmPlan(", ".join(to_stop))
    plan.actions = [f"shut down {n} (destroy after {timeout}s)" for n in to_stop]
    plan.command = shutdown_command(to_stop, uri, timeout, step_timeout)
    # shutdown, a last domstate and destroy per VM, the wait, and one domstate per VM that overruns it
    plan.limit = session_limit(4 * len(to_stop), step_timeout, int(timeout))
    return plan


def shutdown_command(to_stop: list[str], uri: str, timeout: int, step_timeout: int) -> StringCommand:
    """Shutdown for each VM, one shared deadline, then destroy (bounded) each that is not shut off by it."""
    quoted: list[Any] = [q(n) for n in to_stop]
    # virsh() would quote "$n" literally, so the loop variable is expanded in plain shell text here.
    run = sh("timeout -k", str(KILL_AFTER), q(int(step_timeout)), "virsh -q -c", q(uri))
    state = sh('"$(', run, 'domstate -- "$n")"')
    return sh(
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
