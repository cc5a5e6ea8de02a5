"""Placement by manifest and drain: move VMs between hypervisors with a view of the whole cluster.

Every hypervisor's ``Hypervisor`` fact is read once per run (one round trip per host, shared by every
host's deploy code through the run's ``State``); the moves are decided from those facts and the manifest
by ``operations.util.placement``; each source host runs ``operations.migrate.domains_moved`` for its moves.

- ``vms_placed()`` (called by ``deploys/build.py`` before cloning): a manifest VM defined on another
  host moves to its manifest host instead of being cloned a second time.
- ``host_drained(drain)`` (``deploys/drain.py``): every manifest VM on ``drain`` moves to the other hosts
  within capacity; the manifest change that makes it permanent is printed, and after the moves a patched
  copy of the manifest is written next to it (``<manifest>.drain-<host>.json``; the manifest itself is
  never written).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api.deploy import deploy

from deploys._settings import (
    SettingError,
    allocation_ratios,
    connection_value,
    flag,
    is_hypervisor,
    seconds,
    setting,
    vmspecs,
)
from deploys.cluster_state import hypervisor_states, hypervisors
from facts.dnsmasq import DnsmasqReservations
from inventories.loader import manifest_path
from operations import migrate
from operations.util.placement import (
    NO_RESERVATIONS,
    Placement,
    drained_manifest,
    plan_drain,
    plan_placement,
)
from operations.util.run_store import store
from operations.util.virsh import session_limit


def _migrate_timeout() -> int:
    value = setting("migrate_timeout")
    try:
        result = int(str(value).strip())
    except ValueError:
        result = 0
    if result < 1 or isinstance(value, bool):
        raise SettingError(f"migrate_timeout={value!r}: expected a whole number of seconds, at least 1")
    return result


def _member_setting(member: Any, key: str) -> Any:
    return setting(key, member=member)


def _uri_host(address: str) -> str:
    """The host part of a URI: an IPv6 literal in brackets (``fd00::2`` -> ``[fd00::2]``), else as is."""
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        ipaddress.IPv6Address(bare.split("%", 1)[0])
    except ValueError:
        return address
    return f"[{bare.replace('%25', '%').replace('%', '%25')}]"


def _targets(members: list[Any]) -> dict[str, dict[str, Any]]:
    targets = {}
    for member in members:
        uri = _member_setting(member, "migration_uri")
        if not uri:
            address = _uri_host(str(connection_value("ssh_hostname", member) or member.name))
            user = connection_value("ssh_user", member) or "root"
            uri = f"qemu+ssh://{user}@{address}/system"
        targets[member.name] = {
            "uri": str(uri),
            "address": _member_setting(member, "migration_address") or None,
            "unsafe": flag("migration_unsafe", member=member),
        }
    return targets


def why_unread(state: Any, member: Any) -> str:
    """Why this run has no state of ``member``, and how to proceed (completes "<member> ...")."""
    name = member.name
    if not state.is_host_in_limit(member):
        return f"is outside --limit: run without --limit, or include {name} in it"
    if member not in state.activated_hosts:
        return f"could not be reached: bring {name} back, then run again"
    return f"did not answer for its libvirt state: bring libvirtd on {name} back, then run again"


def _reservations(state: Any) -> tuple[dict[str, Any] | None, str]:
    """The management node's DHCP reservations (None when not read) and, when not read, why."""
    nodes = list(state.inventory.get_group("mgmt", default=[]))
    if not nodes:
        return None, "there is no management node whose DHCP reservations could prove it new"
    member = nodes[0]
    note = f"the DHCP reservations on {member.name}, which could prove it new, were not read"
    if member not in state.active_hosts:
        return None, f"{note} ({member.name} {why_unread(state, member)})"
    try:
        read = member.get_fact(
            DnsmasqReservations,
            hostsfile=_member_setting(member, "dhcp_hostsfile"),
            addn_hosts=_member_setting(member, "dns_addn_hosts"),
            _sudo=flag("mgmt_sudo", member=member),
            _timeout=session_limit(1, seconds("command_timeout")),
        )
    except Exception as exc:  # unreachable now: no proof
        logger.warning(f"[{member.name}] DHCP reservations not read: {exc}")
        return None, note
    if member in state.failed_hosts or not isinstance(read, dict):
        return None, note
    return read, ""


def cluster_view() -> dict[str, Any]:
    """``{"members", "manifest", "states", "unread", "reservations", "targets"}`` of this run: each
    hypervisor's state read once (the run store's, shared with every later step); every hypervisor of
    the inventory is in ``states``, None when its state was not read (``unread``: why, and how to
    proceed)."""
    return store(host.state).once("placement view", _read_cluster)


def _read_cluster() -> dict[str, Any]:
    state = host.state
    # Hosts outside --limit, unreachable ones and ones whose libvirt state cannot be read are not read:
    # nothing moves to or from them, and a VM that may be defined there is neither built nor moved
    # (unless provably new, see plan_placement); they fail on their own.
    everyone = hypervisors()
    states = hypervisor_states()
    members = [m for m in everyone if states[m.name] is not None]
    unread = {m.name: why_unread(state, m) for m in everyone if states[m.name] is None}
    reservations, note = _reservations(state) if unread else (None, "")
    return {
        "members": members,
        "states": states,
        "unread": unread,
        "reservations": reservations,
        "reservations_note": note,
        "manifest": {m.name: vmspecs(m) for m in everyone},
        "targets": _targets(members),
    }


def _plan(kind: str, make: Any) -> Placement:
    view = cluster_view()
    return store(host.state).once(f"placement plan {kind}", lambda: make(view))


def placement() -> Placement:
    """The moves the manifest asks for (the same object for every host of the run)."""
    vcpu_ratio, memory_ratio = allocation_ratios()
    shared = (setting("kvm_secondary_storage"),)
    return _plan(
        "placement",
        lambda v: plan_placement(
            v["manifest"], v["states"], shared, vcpu_ratio, memory_ratio,
            unread_why=v["unread"], reservations=v["reservations"],
            reservations_note=v["reservations_note"] or NO_RESERVATIONS,
        ),  # fmt: skip
    )


def defined_elsewhere() -> set[str]:
    """This host's manifest VMs that are, or may be, defined on another hypervisor (moved here, refused,
    or held because a hypervisor was not read): never cloned here."""
    return placement().not_cloned(host.name)


def _log_plan(plan: Placement, what: str) -> None:
    prefix = getattr(host, "print_prefix", "")
    for move in plan.leaving(host.name):
        logger.info(f"{prefix}{what}: {move.describe()}")
    for line in plan.held.get(host.name, []):
        logger.warning(f"{prefix}{line}")


def _moved(plan: Placement, after: Any = None, label: str = "Move VMs to their manifest hosts") -> None:
    migrate.domains_moved(
        name=label,
        moves=[m.to_dict() for m in plan.leaving(host.name)],
        targets=cluster_view()["targets"],
        refusals=plan.refusals,
        held=plan.held.get(host.name, []),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
        migrate_timeout=_migrate_timeout(),
        after=after,
    )


@deploy("Move VMs to their manifest hosts")
def vms_placed() -> None:
    """On every hypervisor: move the manifest's VMs that are defined on another host to their manifest
    host. Any refusal of the preflight fails every hypervisor's step, and nothing moves. A VM held back
    because a hypervisor was not read (``Placement.held``) fails its host's step alone, after its moves."""
    if not is_hypervisor():
        return
    plan = placement()
    _log_plan(plan, "placement")
    _moved(plan)


def _write_patched(path: Path, data: list[dict[str, Any]]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)
    logger.info(f"kvm-qemu: wrote {path} (the manifest with the drain applied); use it from now on")


@deploy("Drain a hypervisor")
def host_drained(drain: str | None = None) -> None:
    """Move every manifest VM off the hypervisor ``drain`` (``--data drain=sm-02``) onto the others.

    Print the plan and the manifest change; after the moves, write the patched manifest next to the
    original (never the original itself).
    """
    drained = setting("drain", drain or None)
    if not drained:
        raise SettingError("drain: name the hypervisor to drain (--data drain=<host>)")
    view = cluster_view()
    if drained not in view["manifest"]:
        raise SettingError(
            f"drain={drained!r}: not a hypervisor of the manifest ({', '.join(view['manifest'])})"
        )
    if not is_hypervisor():
        return
    vcpu_ratio, memory_ratio = allocation_ratios()
    shared = (setting("kvm_secondary_storage"),)
    plan = _plan(
        "drain",
        lambda v: plan_drain(
            drained, v["manifest"], v["states"], shared, vcpu_ratio, memory_ratio, v["unread"]
        ),
    )
    after = None
    if host.name == drained:
        _log_plan(plan, "drain")
        source = manifest_path()
        patched = source.with_name(f"{source.name}.drain-{drained}.json")
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise SettingError(f"drain: cannot read the manifest {source}: {exc}") from None
        new = drained_manifest(data, plan.moves)
        if plan.moves and not plan.refusals:
            change: dict[str, list[Any]] = {}
            for move in plan.moves:
                spec = next(v for e in data for v in e.get("vmspecs", []) if v.get("name") == move.vm)
                change.setdefault(move.destination, []).append(spec)
            logger.info(
                f"{getattr(host, 'print_prefix', '')}manifest change that makes the drain permanent "
                f"(these vmspecs leave host entry {drained} for the entries named):\n"
                + json.dumps(change, indent=2)
                + f"\nafter the moves the whole manifest is written to {patched}"
            )
            after = lambda: _write_patched(patched, new)  # noqa: E731
    _moved(plan, after, f"Drain {drained}")
