"""Every hypervisor's libvirt state in this run, read once and in parallel: the one view of the cluster
that placement, drain, drift and prune derive their plans from.

A hypervisor that this run did not read (outside ``--limit``, unreachable, or whose libvirt state could
not be read) is in the view as None: a workflow never takes it for one without VMs. Each state is read
through the run store (``operations/util/run_store.py``), so the steps after the view (the capacity
preflight, the clones, the moves) use the same read until a step changes the host.
"""

from __future__ import annotations

from typing import Any

import gevent
from pyinfra import host, logger

from deploys._settings import seconds, setting
from facts.util.host_state import HostState
from operations.util.run_store import hypervisor_view, store

HostStates = dict[str, HostState | None]


def hypervisors() -> list[Any]:
    """Every hypervisor of the inventory, read in this run or not."""
    return list(host.inventory.get_group("kvm_hosts", default=[]))


def hypervisor_states() -> HostStates:
    """``{hypervisor: its Hypervisor fact value, or None when this run did not read it}``."""
    return store(host.state).once("hypervisor states", _read_all)


def _read(member: Any, uri: str, timeout: int) -> HostState | None:
    try:
        return hypervisor_view(member, uri, timeout)
    except Exception as exc:  # an unreachable host: no state (it fails on its own)
        logger.warning(f"[{member.name}] libvirt state not read: {exc}")
        return None


def _read_all() -> HostStates:
    state = host.state
    everyone = hypervisors()
    active = set(getattr(state, "active_hosts", ()))
    failed = set(getattr(state, "failed_hosts", ()))
    timeout = seconds("command_timeout")  # a bad value stops the run here, naming the key
    jobs = {
        m.name: gevent.spawn(_read, m, setting("libvirt_uri", member=m), timeout)
        for m in everyone
        if m in active and m not in failed
    }
    gevent.joinall(list(jobs.values()))
    return {m.name: jobs[m.name].value if m.name in jobs else None for m in everyone}
