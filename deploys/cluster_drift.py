"""Cluster-wide drift report and prune: ``drift_report()`` (read-only) and ``orphans_pruned()``.

Both need the whole cluster at once, while pyinfra loads a deploy separately for each host. So the first
host to load reads the cluster once for the run (``cluster_view``): every hypervisor's ``Hypervisor``
fact (one round trip per host, all hosts at the same time) and the management node's reservations;
the other hosts wait for that and use the same view. The findings and the prune plan are pure
(``operations/util/drift.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from deploys._owner import reservation_owner
from deploys._settings import flag, is_hypervisor, is_mgmt, seconds, setting, vmspecs
from deploys.cluster_state import hypervisor_states, hypervisors
from deploys.vms import dnsmasq_arguments
from facts.dnsmasq import DnsmasqReservations
from facts.util.host_state import HostState
from inventories.manifest_model import VmSpec
from operations import dnsmasq, orphans
from operations.util.drift import Finding, PrunePlan, find, prune_plan, report_lines
from operations.util.run_store import store


@dataclass
class ClusterView:
    placement: dict[str, list[VmSpec]]
    states: dict[str, HostState | None]
    reservations: dict[str, dict[str, str]] | None
    mgmt: str  # the management node's name ("" without one)
    findings: list[Finding]
    plan: PrunePlan




def _data(member: Any, key: str) -> Any:
    return setting(key, member=member)


def cluster_view() -> ClusterView:
    """The cluster as read once for this run (the first host to ask reads it, the others wait)."""
    return store(host.state).once("drift view", _read_cluster)


def _read_cluster() -> ClusterView:
    state = host.state
    inventory = state.inventory
    active = set(inventory.get_active_hosts())
    members = hypervisors()
    placement = {m.name: vmspecs(m) for m in members}
    states = hypervisor_states()
    mgmt_hosts = [m for m in inventory.get_group("mgmt", default=[]) if m in active]
    reservations = None
    owner = ""
    mgmt_name = mgmt_hosts[0].name if mgmt_hosts else ""
    if mgmt_hosts:
        member = mgmt_hosts[0]
        read = member.get_fact(
            DnsmasqReservations,
            hostsfile=_data(member, "dhcp_hostsfile"),
            addn_hosts=_data(member, "dns_addn_hosts"),
            _sudo=flag("mgmt_sudo", member=member),
        )
        reservations = None if member in state.failed_hosts else read
        owner = reservation_owner(member)
    shared = tuple(
        sorted(
            {str(_data(m, "kvm_secondary_storage")) for m in members}
            | {setting("kvm_secondary_storage")}
        )
    )
    findings = find(placement, states, reservations, shared, mgmt=mgmt_name or "mgmt")
    if reservations is not None:
        untagged = flag("prune_untagged", member=mgmt_hosts[0])
        findings = owned_findings(findings, placement, reservations, owner, untagged)
    view = ClusterView(
        placement, states, reservations, mgmt_name, findings, prune_plan(findings, reservations)
    )
    return view


def owned_findings(
    findings: list[Finding],
    placement: dict[str, list[VmSpec]],
    reservations: dict[str, dict[str, str]],
    owner: str,
    prune_untagged: bool,
) -> list[Finding]:
    """The findings as this manifest (owner tag ``owner``) may act on them.

    A reservation with another owner tag is another manifest's: never pruned, listed as such (its VMs
    live on hypervisors this manifest may not even name). One without a tag (written before owner
    tags) is pruned only with ``prune_untagged``. A manifest VM whose reservation carries another
    tag, or none, is listed too: the next build refuses the first and adopts the second.
    """
    macs = {spec.mac.lower(): spec.name for vms in placement.values() for spec in vms}
    result: list[Finding] = []
    for finding in findings:
        about = finding.kind in ("reservation", "stale-reservation")
        entry = reservations.get(finding.subject) if about else None
        tag = str(entry.get("owner") or "") if entry else ""
        if entry is None or tag == owner:
            result.append(finding)
        elif tag:
            what = f"{entry.get('ip')} {entry.get('hostname')}"
            other = f"belongs to another manifest (owner tag {tag}; this one is {owner}), left alone"
            result.append(replace(finding, kind="reservation", detail=f"{what}: {other}", prunable=False))
        elif finding.prunable and not prune_untagged:
            untagged = (
                "no owner tag (written before owner tags): prune removes it only with "
                "--data prune_untagged=true"
            )
            result.append(replace(finding, detail=f"{finding.detail}; {untagged}", prunable=False))
        else:
            result.append(finding)
    mgmt = next((f.host for f in findings if f.kind in ("reservation", "stale-reservation")), "mgmt")
    for mac, entry in sorted(reservations.items()):
        vm = macs.get(mac.lower())
        tag = str(entry.get("owner") or "")
        if vm is None or tag == owner:
            continue
        detail = (
            f"reserved by another manifest (owner tag {tag}; this one is {owner}): build refuses it"
            if tag
            else f"no owner tag (written before owner tags): the next build tags it {owner}"
        )
        result.append(Finding("reservation", vm, mgmt, detail))
    return result


def _print(lines: list[str]) -> None:
    for line in lines:
        logger.info(f"{host.print_prefix}{line}")


@deploy("Report cluster drift")
def drift_report() -> None:
    """Print the cluster's drift once (from the management node, else the first hypervisor); change nothing.

    Findings: hosts that could not be read, VMs defined on two hosts or on another host than the
    manifest's, domains no manifest entry names (neither as a VM nor as a base ``srcvm``), manifest VMs
    defined nowhere, configured resources that differ from the manifest, owned-pattern volumes with no
    domain, reservations missing or differing, and reservations for VMs that do not exist.
    """
    view = cluster_view()
    if _reporter(view):
        _print(report_lines(view.findings))


def _reporter(view: ClusterView) -> bool:
    if is_mgmt():
        return True
    names = sorted(view.states)
    return not view.mgmt and bool(names) and host.name == names[0]


@deploy("Prune orphans")
def orphans_pruned() -> None:
    """Remove the orphans the drift report proves to be the tool's own, nothing else.

    On each hypervisor: its orphan volumes (``<vm>-vd*`` in a pool directory, no domain ``<vm>``, used
    by nothing; in shared storage only when unused on every hypervisor), checked again on the host
    right before removal. On the management node: reservations whose MAC no manifest VM has and no
    domain on any hypervisor carries, removed through ``operations.dnsmasq.dhcp_reservations`` (which
    also releases their leases). With any hypervisor unread, no reservation and no shared volume is
    removed. Everything else is reported only.
    """
    view = cluster_view()
    if _reporter(view):
        _print(report_lines(view.findings))
        if view.plan.empty():
            _print(["prune: nothing to remove"])
    if is_hypervisor():
        paths = view.plan.volumes.get(host.name, [])
        if paths:
            orphans.orphan_volumes_absent(
                name="Remove orphan volumes",
                paths=paths,
                uri=setting("libvirt_uri"),
                command_timeout=seconds("command_timeout"),
            )
    if is_mgmt() and view.plan.reservations:
        dnsmasq.dhcp_reservations(
            name="Remove stale DHCP reservations and DNS names",
            entries=view.plan.reservations,
            present=False,
            **{**dnsmasq_arguments(), "remove_untagged": flag("prune_untagged")},
        )
