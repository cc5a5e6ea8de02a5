"""What kvm-qemu needs from pyinfra that pyinfra offers no public call for, in one place.

Each function reads one piece of pyinfra's run bookkeeping; ``tests/unit/test_pyinfra_adapter.py`` runs
it against a real pyinfra ``State`` so that a pyinfra release that changes the piece fails that test
instead of silently changing a workflow.
"""

from __future__ import annotations

from typing import Any


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
