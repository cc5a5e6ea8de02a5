"""The one view of the cluster in this run, read once, that placement, drain, drift and prune derive their
plans from (``cluster_view()``), and the management node's DHCP reservations, read once when a plan first
needs them (``cluster_reservations()``).

Every hypervisor's libvirt state is read once and in parallel. A hypervisor that this run did not read
(outside ``--limit``, unreachable, or whose libvirt state could not be read) is in the view as None, with
why (``ClusterView.unread``): a workflow never takes it for one without VMs. Each state is read through
the run store (``operations/util/run_store.py``), so the steps after the view (the capacity preflight,
the clones, the moves) use the same read until a step changes the host. The plans themselves stay with
their workflows: ``deploys/placement.py`` (moves, targets) and ``deploys/cluster_drift.py`` (findings,
prune plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gevent
from pyinfra import host, logger

from deploys._settings import flag, seconds, setting, vmspecs
from facts.dnsmasq import DnsmasqReservations
from facts.util.host_state import HostState
from inventories.manifest_model import VmSpec
from operations.util.run_store import hypervisor_view, store
from operations.util.virsh import session_limit

HostStates = dict[str, HostState | None]
Reservations = dict[str, dict[str, str]]  # MAC -> {ip, hostname, short, owner}


@dataclass(frozen=True)
class ClusterView:
    """The cluster as this run sees it (the same object for every host of the run)."""

    hypervisors: list[Any]  # every hypervisor of the inventory, read in this run or not
    states: HostStates  # each hypervisor's Hypervisor fact value; None when this run did not read it
    unread: dict[str, str]  # each hypervisor not read: why, and how to proceed (``why_unread``)
    manifest: dict[str, list[VmSpec]]  # each hypervisor's manifest VMs
    mgmt_node: Any | None  # the management node (the first of group mgmt in this run, else the first)
    mgmt: str  # the management node's name when it is in this run, else ""

    @property
    def members(self) -> list[Any]:
        """The hypervisors whose state this run read."""
        return [m for m in self.hypervisors if self.states[m.name] is not None]


@dataclass(frozen=True)
class MgmtReservations:
    """The management node's DHCP reservations as read in this run."""

    entries: Reservations | None  # None: not read
    node: str  # the management node's name ("" without one)
    why: str  # when the node is not in this run: why (``why_unread``), else ""


def why_unread(state: Any, member: Any) -> str:
    """Why this run has no state of ``member``, and how to proceed (completes "<member> ...")."""
    name = member.name
    if not state.is_host_in_limit(member):
        return f"is outside --limit: run without --limit, or include {name} in it"
    if member not in state.activated_hosts:
        return f"could not be reached: bring {name} back, then run again"
    return f"did not answer for its libvirt state: bring libvirtd on {name} back, then run again"


def cluster_view() -> ClusterView:
    """The cluster of this run: the first host to ask reads it, the others wait and get the same view."""
    return store(host.state).once("cluster view", _read_cluster)


def cluster_reservations() -> MgmtReservations:
    """The management node's DHCP reservations, read the first time a plan asks for them in this run."""
    return store(host.state).once("management node reservations", _read_reservations)


def _read(member: Any, uri: str, timeout: int) -> HostState | None:
    try:
        return hypervisor_view(member, uri, timeout)
    except Exception as exc:  # an unreachable host: no state (it fails on its own)
        logger.warning(f"[{member.name}] libvirt state not read: {exc}")
        return None


def _read_states(everyone: list[Any]) -> HostStates:
    state = host.state
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


def _read_cluster() -> ClusterView:
    state = host.state
    # Hosts outside --limit, unreachable ones and ones whose libvirt state cannot be read are not read:
    # nothing moves to or from them, and a VM that may be defined there is neither built nor moved
    # (unless provably new, see plan_placement); they fail on their own.
    everyone = list(state.inventory.get_group("kvm_hosts", default=[]))
    states = _read_states(everyone)
    nodes = list(state.inventory.get_group("mgmt", default=[]))
    active = [m for m in nodes if m in state.active_hosts]
    return ClusterView(
        hypervisors=everyone,
        states=states,
        unread={m.name: why_unread(state, m) for m in everyone if states[m.name] is None},
        manifest={m.name: vmspecs(m) for m in everyone},
        mgmt_node=(active or nodes or [None])[0],
        mgmt=active[0].name if active else "",
    )


def _read_reservations() -> MgmtReservations:
    state = host.state
    member = cluster_view().mgmt_node
    if member is None:
        return MgmtReservations(None, "", "")
    if member not in state.active_hosts:
        return MgmtReservations(None, member.name, why_unread(state, member))
    try:
        read = member.get_fact(
            DnsmasqReservations,
            hostsfile=setting("dhcp_hostsfile", member=member),
            addn_hosts=setting("dns_addn_hosts", member=member),
            _sudo=flag("mgmt_sudo", member=member),
            _timeout=session_limit(1, seconds("command_timeout")),
        )
    except Exception as exc:  # unreachable now: not read
        logger.warning(f"[{member.name}] DHCP reservations not read: {exc}")
        read = None
    if member in state.failed_hosts or not isinstance(read, dict):
        read = None
    return MgmtReservations(read, member.name, "")
