"""State shared across hosts during one pyinfra run, kept in one place with one lifecycle.

pyinfra loads a deploy once per host (in parallel greenlets) and runs each operation body twice (prepare,
then execute), yet several steps need what other hosts know: every hypervisor's libvirt state for
placement and drift, the VMs deleted on each hypervisor for the management node's reservations, every
host's capacity row for one refusal table, plans computed once for the whole cluster. All of it lives in
the ``RunStore`` of the run's pyinfra ``State`` (held by a weak reference, so nothing outlives a run):

- ``hypervisor_view``: each hypervisor's ``Hypervisor`` fact, read at most once per run and shared by
  every step (placement, preflight, clone, seeds, moves). It is read again only when this run changed the
  host since it was read: an operation ran commands on it, or a move brought a VM to it (``changed``).
- ``gone``: the VMs each hypervisor deleted (or found absent) at execute time.
- ``capacity_rows``: each hypervisor's capacity row, for a refusal that shows the whole cluster.
- ``once``: a value computed once per run under the store's lock (the cluster view, a placement plan,
  the drift findings).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gevent.lock import Semaphore
from pyinfra import logger

from facts.libvirt import Hypervisor
from facts.util.host_state import HostState
from operations.util.pyinfra_adapter import executed_operations
from operations.util.virsh import session_limit

T = TypeVar("T")


@dataclass
class _View:
    uri: str
    value: HostState | None
    version: tuple[int, int] | None  # the host's change counters when read (None: unknown)


@dataclass
class RunStore:
    lock: Semaphore = field(default_factory=Semaphore)
    views: dict[str, _View] = field(default_factory=dict)
    view_locks: dict[str, Semaphore] = field(default_factory=dict)
    moved_in: dict[str, int] = field(default_factory=dict)  # host -> moves that brought it a VM
    gone: dict[str, set[str]] = field(default_factory=dict)
    capacity_rows: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    value_locks: dict[str, Semaphore] = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], T]) -> T:
        """``make()`` the first time ``key`` is asked for in this run; the same value after that. Other
        hosts asking meanwhile wait for it (``make`` may read facts of every host)."""
        with self.lock:
            lock = self.value_locks.setdefault(key, Semaphore())
        with lock:
            if key not in self.values:
                self.values[key] = make()
            return self.values[key]


_STORES: weakref.WeakKeyDictionary[Any, RunStore] = weakref.WeakKeyDictionary()


def store(state: Any) -> RunStore:
    """The run store of ``state``; a fresh, unshared one for a state that cannot be weakly referenced."""
    try:
        return _STORES.setdefault(state, RunStore())
    except TypeError:
        return RunStore()


def _version(state: Any, member: Any, run: RunStore) -> tuple[int, int] | None:
    executed = executed_operations(state, member)
    if executed is None:
        return None
    return executed, run.moved_in.get(member.name, 0)


def changed(state: Any, host_name: str) -> None:
    """Record that this run changed ``host_name`` in a way its own operations do not show (a VM moved
    to it by an operation on another host): its next ``hypervisor_view`` reads the state again."""
    run = store(state)
    run.moved_in[host_name] = run.moved_in.get(host_name, 0) + 1


def _why_again(kept: _View, uri: str, version: tuple[int, int] | None) -> str:
    if kept.uri != uri:
        return f"asked for {uri}, read for {kept.uri}"
    if version is None or kept.version is None:
        return "this run's changes to the host cannot be counted"
    ran, moved = version[0] - kept.version[0], version[1] - kept.version[1]
    reasons = []
    if ran:
        reasons.append(f"{ran} operation(s) ran commands on it")
    if moved:
        reasons.append(f"{moved} move(s) brought VMs to it")
    return "since the last read " + " and ".join(reasons)


def hypervisor_view(member: Any, uri: str, timeout: int) -> HostState | None:
    """``member``'s ``Hypervisor`` fact, or None when reading it failed (pyinfra then marks the host
    failed and hands back an empty default, which would take every domain for absent).

    Read once per run: a later call returns the same value unless this run changed the host since
    (see the module docstring). Exceptions of the read (an unreachable host) reach the caller and
    nothing is kept.
    """
    state = member.state
    run = store(state)
    with run.lock:
        lock = run.view_locks.setdefault(member.name, Semaphore())
    with lock:
        version = _version(state, member, run)
        kept = run.views.get(member.name)
        if kept is not None and version is not None and (kept.uri, kept.version) == (uri, version):
            return kept.value
        if kept is not None:
            logger.debug(f"{member.name}: libvirt state read again: {_why_again(kept, uri, version)}")
        # The probe's watchdog ends it after ``timeout``; coreutils timeout 10 s later; this bounds the
        # session.
        value = member.get_fact(Hypervisor, uri=uri, timeout=timeout, _timeout=session_limit(1, timeout + 10))
        if member in getattr(state, "failed_hosts", ()):
            value = None
        run.views[member.name] = _View(uri, value, version)
        return value
