"""Placement by manifest and drain: move VMs between hypervisors with a view of the whole cluster.

The moves are decided from the run's one view of the cluster (``deploys.cluster_state.cluster_view``:
every hypervisor's ``Hypervisor`` fact, read once per run) and the manifest by
``operations.util.placement``, once per run; each source host runs ``operations.migrate.domains_moved``
for its moves.

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
from collections.abc import Callable
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
)
from deploys.cluster_state import ClusterView, MgmtReservations, cluster_reservations, cluster_view
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


def _reservations_note(read: MgmtReservations) -> str:
    """Why the management node's reservations cannot prove a VM new (they were not read)."""
    if not read.node:
        return "there is no management node whose DHCP reservations could prove it new"
    note = f"the DHCP reservations on {read.node}, which could prove it new, were not read"
    return f"{note} ({read.node} {read.why})" if read.why else note


def migration_targets() -> dict[str, dict[str, Any]]:
    """Each hypervisor read in this run as a move's destination: ``{"uri", "address", "unsafe"}``."""
    return store(host.state).once("migration targets", lambda: _targets(cluster_view().members))


def _plan(kind: str, make: Callable[[ClusterView], Placement]) -> Placement:
    return store(host.state).once(f"placement plan {kind}", lambda: make(cluster_view()))


def _placement(view: ClusterView, shared: tuple[Any, ...], ratios: tuple[float, float]) -> Placement:
    # Only when a hypervisor was not read can the management node's reservations prove a VM new: only
    # then are they read.
    read = cluster_reservations() if view.unread else None
    entries = read.entries if read else None
    note = _reservations_note(read) if read and entries is None else NO_RESERVATIONS
    return plan_placement(
        view.manifest, view.states, shared, *ratios,
        unread_why=view.unread, reservations=entries, reservations_note=note,
    )  # fmt: skip


def placement() -> Placement:
    """The moves the manifest asks for (the same object for every host of the run)."""
    ratios = allocation_ratios()
    shared = (setting("kvm_secondary_storage"),)
    return _plan("placement", lambda view: _placement(view, shared, ratios))


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
        targets=migration_targets(),
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
    if drained not in view.manifest:
        raise SettingError(
            f"drain={drained!r}: not a hypervisor of the manifest ({', '.join(view.manifest)})"
        )
    if not is_hypervisor():
        return
    vcpu_ratio, memory_ratio = allocation_ratios()
    shared = (setting("kvm_secondary_storage"),)
    plan = _plan(
        "drain",
        lambda v: plan_drain(drained, v.manifest, v.states, shared, vcpu_ratio, memory_ratio, v.unread),
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
