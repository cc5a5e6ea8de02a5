"""Move VMs between hypervisors: one operation on the source host, planned by ``util/placement``."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation

from operations.util.placement import DEFAULT_MIGRATE_TIMEOUT, Move, Target, move_command
from operations.util.plan_commands import UNREAD, hypervisor_state
from operations.util.run_store import changed
from operations.util.virsh import DEFAULT_TIMEOUT, DEFAULT_URI, fail, session_limit

Commands = Generator[Any, None, None]


def _arriving(state: Any, host: Any, destination: str) -> bool:
    changed(state, destination)
    return True


@operation()
def domains_moved(
    moves: list[dict[str, Any]],
    targets: dict[str, dict[str, Any]],
    refusals: list[str] | None = None,
    held: list[str] | None = None,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
    migrate_timeout: int = DEFAULT_MIGRATE_TIMEOUT,
    after: Callable[[], Any] | None = None,
) -> Commands:
    """Move VMs from this host to others: live when they run, offline when shut off.

    + moves: ``Move.to_dict()`` values whose source is this host (``operations.util.placement``)
    + targets: destination host -> ``{"uri", "address", "unsafe"}`` (``Target`` fields)
    + refusals: preflight refusals of the whole run; any of them and nothing moves, the host fails
    + held: this host's VMs neither built nor moved because a hypervisor was not read ("vm: why");
      the moves happen, then the host fails naming them (so nothing after this step runs here)
    + command_timeout / migrate_timeout: seconds a small step / one migration or disk copy may take
    + after: called on the controller once every move of this host succeeded

    A VM no longer defined here (moved by an earlier run) is skipped; whether a move is live comes from
    this run's view of the host (the run store), and an offline move checks again in its own command,
    right before the migration, that the VM is still shut off.

    **Example:**

    .. code:: python

        domains_moved(
            moves=[{"vm": "vm07", "source": "sm-01", "destination": "sm-02", "live": True,
                    "shared_disks": ["/secondary/vm07-vda.qcow2"], "local_disks": []}],
            targets={"sm-02": {"uri": "qemu+ssh://root@sm-02/system"}},
        )
    """
    prefix = getattr(host, "print_prefix", "")
    if refusals:
        yield fail("refusing to move any VM:\n  " + "\n  ".join(refusals))
        return
    stop = fail("held back, not built or moved:\n  " + "\n  ".join(held)) if held else None
    if not moves:
        if stop is not None:
            yield stop
            return
        host.noop("no VM to move from this host")
        return
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    todo = []
    for data in moves:
        move = Move.from_dict(data)
        domain = host_state.domains.get(move.vm)
        if domain is None:
            continue
        live = domain.active
        todo.append(Move.from_dict({**data, "live": live}))
    if not todo:
        if stop is not None:
            yield stop
            return
        host.noop(f"{len(moves)} VM(s) already moved")
        return
    for move in todo:
        logger.info(f"{prefix}move {move.describe()}")
        target = Target(**targets[move.destination])
        # The destination gains a domain through a command on this host: its next step reads it again.
        yield FunctionCommand(_arriving, (move.destination,), {})
        steps = 6 + len(move.local_disks)  # copies, 2 stats, state check, migrate, autostart, removal
        yield StringCommand(
            move_command(move, target, uri, command_timeout, migrate_timeout),
            _timeout=session_limit(steps, command_timeout, 2 * migrate_timeout),
        )
    if after is not None:
        yield FunctionCommand(after, (), {})
    if stop is not None:
        yield stop
