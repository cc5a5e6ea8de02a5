"""Cluster-wide drift report and prune: ``drift_report()`` (read-only) and ``orphans_pruned()``.

Both need the whole cluster at once, while pyinfra loads a deploy separately for each host. So the first
host to load finds the drift once for the run (``drift()``) from the run's one view of the cluster
(``deploys.cluster_state``: every hypervisor's ``Hypervisor`` fact, one round trip per host, all hosts
at the same time) and the management node's reservations; the other hosts wait for that and use the
same findings. The findings and the prune plan are pure (``operations/util/drift.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyinfra import host, logger
from pyinfra.api import deploy

from deploys._owner import reservation_owner
from deploys._settings import flag, is_hypervisor, is_mgmt, seconds, setting
from deploys.cluster_state import cluster_reservations, cluster_view
from deploys.vms import dnsmasq_arguments
from inventories.manifest_model import VmSpec
from operations import dnsmasq, orphans
from operations.util.drift import Finding, PrunePlan, find, prune_plan, report_lines
from operations.util.run_store import store


@dataclass(frozen=True)
class Drift:
    """The cluster's drift in this run, derived from the one cluster view (the same for every host)."""

    findings: list[Finding]
    plan: PrunePlan  # what prune removes


def drift() -> Drift:
    """The findings and the prune plan of this run (the first host to ask finds them, the others wait)."""
    return store(host.state).once("drift findings", _find)


def _find() -> Drift:
    view = cluster_view()
    node = view.mgmt_node
    owner = reservation_owner(node) if view.mgmt else ""
    reservations = cluster_reservations().entries if view.mgmt else None
    shared = tuple(
        sorted(
            {str(setting("kvm_secondary_storage", member=m)) for m in view.hypervisors}
            | {setting("kvm_secondary_storage")}
        )
    )
    findings = find(view.manifest, view.states, reservations, shared, mgmt=view.mgmt or "mgmt")
    if reservations is not None:
        untagged = flag("prune_untagged", member=node)
        findings = owned_findings(findings, view.manifest, reservations, owner, untagged)
    return Drift(findings, prune_plan(findings, reservations))


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
    if _reporter():
        _print(report_lines(drift().findings))


def _reporter() -> bool:
    if is_mgmt():
        return True
    view = cluster_view()
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
    view = drift()
    if _reporter():
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
