"""The build's capacity preflight as the operation runs it: this host's row, and at a refusal the rows of
the other hypervisors of the same run (they run the same operation), all in one message.

The rows are kept in the run store (``operations/util/run_store.py``), so nothing outlives a run. The
verdict itself is pure (``operations/util/capacity.py``).
"""

from __future__ import annotations

import time

import gevent
from pyinfra import host

from facts.util.host_state import HostState
from inventories.manifest_model import VmSpec
from operations.util.capacity import (
    DEFAULT_MEMORY_RATIO,
    DEFAULT_VCPU_RATIO,
    CapacityRow,
    capacity_row,
    refusal_message,
)
from operations.util.output import log
from operations.util.run_store import store

PEER_WAIT_SECONDS = 15.0


def capacity_refusal(
    specs: list[VmSpec], host_state: HostState, vcpu_ratio: float | None, memory_ratio: float | None
) -> str | None:
    """None when this host's VMs fit, else the refusal message with every known host's row."""
    row = capacity_row(
        host.name,
        specs,
        host_state,
        DEFAULT_VCPU_RATIO if vcpu_ratio is None else vcpu_ratio,
        DEFAULT_MEMORY_RATIO if memory_ratio is None else memory_ratio,
    )
    rows = _rows()
    rows[row.host] = row
    log(f"capacity: {row.table_line()}")
    if not row.problems:
        return None
    _wait_for_peers(rows, row.host)
    return refusal_message(row, [r for name, r in sorted(rows.items()) if name != row.host])


def _rows() -> dict[str, CapacityRow]:
    # Rows recorded at prepare (change detection) are replaced by those of execute.
    return store(host.state).capacity_rows


def _wait_for_peers(rows: dict[str, CapacityRow], me: str) -> None:
    """At execute with ``-y`` the other hosts run this operation concurrently: wait (bounded) for the
    active ones to record their rows. With change detection they did so at prepare already."""
    state = host.state
    if not getattr(state, "is_executing", False):
        return
    op_hash = getattr(host, "current_op_hash", None)
    ops = getattr(state, "ops", {})

    def pending() -> set[str]:
        active = getattr(state, "active_hosts", ())
        return {h.name for h in active if h.name != me and op_hash in ops.get(h, {})} - set(rows)

    deadline = time.monotonic() + PEER_WAIT_SECONDS
    while pending() and time.monotonic() < deadline:
        gevent.sleep(0.2)
