"""What kvm-qemu needs from pyinfra that pyinfra offers no public call for, in one place.

Each function reads one piece of pyinfra's run bookkeeping; ``tests/unit/test_pyinfra_adapter.py`` runs
it against a real pyinfra ``State`` so that a pyinfra release that changes the piece fails that test
instead of silently changing a workflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyinfra.connectors.ssh import SSHConnector


def executed_operations(state: Any, member: Any) -> int | None:
    """How many operations of this run have completed on ``member`` after running at least one command.

    None when ``state`` keeps no per-host operation records (a test double): the caller cannot tell
    whether anything changed the host, so it must assume that something did.
    """
    ops = getattr(state, "ops", None)
    if not isinstance(ops, dict) or member not in ops:
        return None
    count = 0
    for data in ops[member].values():
        meta = getattr(data, "operation_meta", None)
        if meta is None:
            return None
        if meta.is_complete() and meta.executed:
            count += 1
    return count


@contextmanager
def new_ssh_connection(state: Any, member: Any) -> Iterator[Any]:
    """A brand-new SSH connection to ``member`` built from its connection data (not pyinfra's pooled
    one), closed on exit: a connector with ``run_shell_command``.

    pyinfra opens a connector's session only through its private ``_connect``; this is the one place
    that calls it.
    """
    connector = SSHConnector(state, member)
    try:
        connector._connect()
        yield connector
    finally:
        if connector.client is not None:
            connector.client.close()


def nested_commands(op: Any, **arguments: Any) -> Iterator[Any]:
    """The commands another operation yields for ``arguments``, to be yielded from inside an operation
    (pyinfra's ``op._inner``; no global arguments)."""
    return op._inner(**arguments)
