"""Idempotent libvirt operations: pools, clones from a base VM, resources, power, delete, define, dump.

Each operation reads the ``Hypervisor`` fact once (one round trip for all pools, volumes and domains),
plans with the pure functions in ``_domain_plan``, logs one line per VM, and yields one command per VM.
At prepare time (``--dry``) a missing base VM or pool is reported, not raised: an earlier operation of
the same run may create it; at execute time the host fails with the message instead.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from facts.libvirt import Hypervisor
from inventories.manifest_model import VmSpec
from operations import dnsmasq
from operations._domain_diff import build_diff, delete_diff, power_diff
from operations._domain_plan import VmPlan, build_plans, delete_plan, power_plan
from operations._domain_source import digest, recorded_digest, with_source
from operations._domain_xml import CloneError, domain_name, xml_covers
from operations._preflight import capacity_refusal
from operations._virsh import (
    DEFAULT_COPY_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_URI,
    all_of,
    fail,
    session_limit,
    virsh,
)

Commands = Generator[Any, None, None]


def _log(plans: list[VmPlan], everything: bool = False) -> None:
    prefix = getattr(host, "print_prefix", "")
    for plan in plans:
        if everything or plan.changes or plan.notes:
            logger.info(f"{prefix}{plan.summary()}")


def _diff(lines: list[str]) -> None:
    """With ``--diff``: before -> after lines, once (at prepare, or at execute when there was none: -y)."""
    state = host.state
    config = getattr(state, "config", None)
    if not getattr(config, "DIFF", False):
        return
    if getattr(state, "is_executing", False) and getattr(state, "check_for_changes", True):
        return
    prefix = getattr(host, "print_prefix", "")
    for line in lines:
        logger.info(f"{prefix}    {line}")


def _yield_plans(plans: list[VmPlan]) -> Commands:
    # Errors go last so every other VM of the host is still handled before the host fails.
    for plan in sorted(plans, key=lambda p: p.error is not None):
        if plan.error:
            yield fail(f"{plan.vm}: {plan.error}")
        elif plan.command is not None:
            yield _limited(plan)


UNREAD = "the libvirt state of this host could not be read (see the error above); nothing was changed"


def _hypervisor(uri: str, timeout: int) -> dict[str, Any] | None:
    """The Hypervisor fact, or None when reading it failed (pyinfra then returns the empty default and
    marks the host failed: planning on that would take every domain for absent)."""
    # The probe's watchdog ends it after ``timeout``; coreutils timeout 10 s later; this bounds the session.
    snapshot = host.get_fact(Hypervisor, uri=uri, timeout=timeout, _timeout=session_limit(1, timeout + 10))
    if host in getattr(host.state, "failed_hosts", ()):
        return None
    return snapshot


def _limited(plan: VmPlan) -> StringCommand:
    """The plan's command with its stdin and the controller-side time limit."""
    extra: dict[str, Any] = {"_timeout": plan.limit} if plan.limit else {}
    if plan.stdin:
        extra["_stdin"] = plan.stdin
    command = plan.command
    assert command is not None, f"{plan.vm}: a plan without a command has nothing to run"
    return StringCommand(command, **extra) if extra else command


def _specs(vmspecs: list[dict[str, Any]] | list[VmSpec]) -> list[VmSpec]:
    return [v if isinstance(v, VmSpec) else VmSpec(**v) for v in vmspecs]


@operation()
def pool(
    pool_name: str,
    path: str,
    autostart: bool = True,
    present: bool = True,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """A directory storage pool: defined, built, started, autostarted (or undefined, files kept).

    Changing the path of an existing pool is refused: redefining it would orphan its volumes.
    """
    t = command_timeout
    snapshot = _hypervisor(uri, t)
    if snapshot is None:
        yield fail(UNREAD)
        return
    pools = snapshot["pools"]
    current = pools.get(pool_name)
    if not present:
        if current is None:
            host.noop(f"pool {pool_name} is absent")
            return
        steps = [virsh(uri, "pool-destroy", pool_name, timeout=t)] if current["state"] == "running" else []
        steps.append(virsh(uri, "pool-undefine", pool_name, timeout=t))
        yield StringCommand(all_of(steps), _timeout=session_limit(len(steps), t))
        return
    if current is None:
        steps = [
            virsh(uri, "pool-define-as", pool_name, "dir", "--target", path, timeout=t),
            virsh(uri, "pool-build", pool_name, timeout=t),
            virsh(uri, "pool-start", pool_name, timeout=t),
        ]
        if autostart:
            steps.append(virsh(uri, "pool-autostart", pool_name, timeout=t))
        yield StringCommand(all_of(steps), _timeout=session_limit(len(steps), t))
        return
    if os.path.normpath(current.get("path") or "") != os.path.normpath(path):
        message = (
            f"pool {pool_name} already exists with path {current.get('path')}, not {path}; "
            "refusing to redefine it (undefine it first, or use another pool name)"
        )
        logger.warning(f"{getattr(host, 'print_prefix', '')}{message}")
        yield fail(message)
        return
    steps = []
    if current["state"] != "running":
        steps += [
            virsh(uri, "pool-build", pool_name, timeout=t),
            virsh(uri, "pool-start", pool_name, timeout=t),
        ]
    if bool(current.get("autostart")) != autostart:
        steps.append(
            virsh(uri, "pool-autostart", *([] if autostart else ["--disable"]), pool_name, timeout=t)
        )
    if not steps:
        host.noop(f"pool {pool_name} is defined at {path} and running")
        return
    yield StringCommand(all_of(steps), _timeout=session_limit(len(steps), t))


@operation()
def domains_built(
    vmspecs: list[dict[str, Any]],
    clone: bool = True,
    uri: str = DEFAULT_URI,
    vcpu_ratio: float | None = None,
    memory_ratio: float | None = None,
    command_timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> Commands:
    """Every vmspec of this host as a domain: cloned from its base when missing, else converged.

    Converging sets vCPUs/memory (live where libvirt allows it, and in the persistent config), adds
    missing data disks and sets autostart. With ``clone=False`` missing domains are only reported.
    With ``vcpu_ratio``/``memory_ratio`` a capacity preflight runs first: when this host's VMs (plus the
    other domains defined on it) exceed its CPUs/memory times the ratios, or a full clone would not fit
    in its pool, this host alone fails with a per-host table and nothing is changed on it. Every remote
    step is bounded by ``command_timeout`` seconds, a full copy of a base disk by ``copy_timeout``.
    """
    specs = _specs(vmspecs)
    snapshot = _hypervisor(uri, command_timeout)
    if snapshot is None:
        yield fail(UNREAD)
        return
    if vcpu_ratio is not None or memory_ratio is not None:
        refusal = capacity_refusal(specs, snapshot, vcpu_ratio, memory_ratio)
        if refusal:
            yield fail(refusal)
            return
    plans = build_plans(specs, snapshot, uri, clone=clone, timeout=command_timeout, copy_timeout=copy_timeout)
    _log(plans)
    _diff(build_diff(specs, snapshot, {p.vm for p in plans if p.command is not None}))
    if not any(p.changes for p in plans):
        host.noop(f"{len(plans)} domain(s) match the manifest")
        return
    yield from _yield_plans(plans)


@operation()
def domains_power(
    domains: list[str],
    running: bool = True,
    force: bool = False,
    timeout: int = 60,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """Start (or resume) the domains, or stop them: graceful shutdown, destroyed after ``timeout`` seconds.

    ``force`` destroys at once (the original tool's stop). Domains not defined here are reported.
    Each virsh call is bounded by ``command_timeout`` seconds.
    """
    snapshot = _hypervisor(uri, command_timeout)
    if snapshot is None:
        yield fail(UNREAD)
        return
    known = snapshot["domains"]
    missing = [d for d in domains if d not in known]
    if missing:
        logger.warning(f"{getattr(host, 'print_prefix', '')}not defined here: {', '.join(missing)}")
    plan = power_plan(
        domains, known, running, uri, force=force, timeout=timeout, step_timeout=command_timeout
    )
    if plan is None:
        host.noop(f"{len(domains) - len(missing)} domain(s) already {'running' if running else 'shut off'}")
        return
    _log([plan])
    _diff(power_diff(domains, known, "running" if running else "shut off"))
    yield _limited(plan)


# VMs each host deleted (or found absent) during the current run, per State: filled at execute time by
# ``domains_deleted``, read by ``reservations_of_deleted`` on the management node.
_GONE: weakref.WeakKeyDictionary[Any, dict[str, set[str]]] = weakref.WeakKeyDictionary()


def _record_gone(state: Any, host: Any, vms: list[str]) -> bool:
    _GONE.setdefault(state, {}).setdefault(host.name, set()).update(vms)
    return True


def gone_in_this_run(state: Any, host_name: str) -> set[str]:
    """The VMs ``domains_deleted`` deleted on ``host_name``, or found absent, while ``state`` executed."""
    return set(_GONE.get(state, {}).get(host_name, set()))


@operation()
def domains_deleted(
    domains: list[str],
    keep_disks: bool = False,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
    shared_dirs: list[str] | None = None,
) -> Commands:
    """Destroy and undefine the domains, then delete only the files each one owns (unless keep_disks).

    Owned: files in a storage pool directory named ``<vm>-vd*`` that are not a disk or backing file of
    any other domain (read from every domain's definition and the image headers, inactive pools
    included); never the base image, an ISO or anything outside a pool. Every file is checked before
    the domain is undefined. A domain that is already gone has its remaining owned files removed, so
    a delete that failed halfway finishes on a re-run; with nothing left it is a no-op. Such
    leftovers are never taken from ``shared_dirs`` (storage other hosts use too, e.g. the secondary
    pool's NFS share) or network pools.

    At execute time each VM is recorded once its command succeeded (or when it was already absent),
    for ``reservations_of_deleted``.
    """
    state = host.state
    snapshot = _hypervisor(uri, command_timeout)
    if snapshot is None:  # never take an unread host for one whose domains are all gone
        yield fail(UNREAD)
        return
    shared = tuple(shared_dirs or ())
    plans = {d: delete_plan(d, snapshot, uri, keep_disks, command_timeout, shared) for d in domains}
    absent = [d for d, p in plans.items() if p is None and d not in snapshot.get("domains", {})]
    if getattr(state, "is_executing", False) and absent:
        _record_gone(state, host, absent)
    todo = [p for p in plans.values() if p is not None]
    if not todo:
        host.noop(f"{len(domains)} domain(s) already absent")
        return
    _log(todo)
    _diff(delete_diff([p.vm for p in todo], snapshot["domains"]))
    for plan in todo:
        yield _limited(plan)
        yield FunctionCommand(_record_gone, ([plan.vm],), {})


@operation()
def reservations_of_deleted(
    entries: list[dict[str, Any]], vm_hosts: dict[str, str], **dnsmasq_options: Any
) -> Commands:
    """Remove the DHCP reservations and DNS names of the VMs that are gone, keep the others.

    ``entries``: ``{vm, mac, ...}`` per VM; ``vm_hosts``: VM -> its hypervisor; ``dnsmasq_options``:
    the arguments of ``dnsmasq.dhcp_reservations``. Run it after ``domains_deleted`` in the same deploy.

    Why this is sound: pyinfra runs an operation on every host before it starts the next one, so this
    operation (on the management node) executes after ``domains_deleted`` has finished everywhere.
    That operation records a VM only after the VM's delete command exited 0 on its host (a callback
    that pyinfra runs only when every earlier command of the operation succeeded), or when the
    execute-time fact showed the VM absent. A VM on a host that could not be reached, whose fact
    failed, or whose delete failed is not recorded, so its reservation stays. If the schedule is
    changed (``--serial``, ``--no-wait``) and this runs first, nothing is recorded yet and nothing is
    removed; the output says so and a re-run removes them. At prepare time (``--dry``) every entry
    is shown, as a complete delete would remove it.
    """
    state = host.state
    chosen = list(entries)
    if getattr(state, "is_executing", False):
        gone = {vm for vm, on in vm_hosts.items() if vm in gone_in_this_run(state, on)}
        chosen = [e for e in entries if e["vm"] in gone]
        kept = sorted(e["vm"] for e in entries if e["vm"] not in gone)
        if kept:
            logger.warning(
                f"{getattr(host, 'print_prefix', '')}keeping the DHCP reservations and DNS names of "
                f"{', '.join(kept)}: not deleted in this run (their hypervisor failed or was not reached)"
            )
    if not chosen:
        host.noop("no reservation of a deleted VM to remove")
        return
    yield from dnsmasq.dhcp_reservations._inner(
        entries=[{k: v for k, v in e.items() if k != "vm"} for e in chosen], present=False, **dnsmasq_options
    )


@operation()
def domain_defined(xml_file: str, uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT) -> Commands:
    """Define a domain from a controller-side XML file when absent or when the file changed (``-x``).

    The define records the file's SHA-256 in the domain's ``<metadata>``; later runs compare that digest,
    not libvirt's expanded XML (units, machine type, UUID, passwords differ from any hand-written file).
    A redefinition keeps the domain's UUID. A domain without the digest that already contains everything
    the file asks for is left alone.
    """
    try:
        data = Path(xml_file).read_bytes()
        xml = data.decode("utf-8")
        vm = domain_name(xml)
    except (OSError, UnicodeDecodeError, CloneError) as exc:
        raise OperationValueError(f"cannot use domain XML {xml_file}: {exc}") from None
    file_digest = digest(data)
    snapshot = _hypervisor(uri, command_timeout)
    if snapshot is None:
        yield fail(UNREAD)
        return
    current = snapshot["domains"].get(vm)
    if current is not None:
        recorded = recorded_digest(current["xml"])
        if recorded == file_digest or (recorded is None and xml_covers(xml, current["xml"])):
            host.noop(f"domain {vm} matches {xml_file}")
            return
    try:
        definition = with_source(xml, file_digest, current.get("uuid") if current else None)
    except CloneError as exc:
        raise OperationValueError(f"cannot redefine {vm} from {xml_file}: {exc}") from None
    logger.info(
        f"{getattr(host, 'print_prefix', '')}{vm}: {'redefine' if current else 'define'} from {xml_file}"
        + (f" (keeping UUID {current.get('uuid')})" if current else "")
    )
    yield StringCommand(
        virsh(uri, "define", "/dev/stdin", timeout=command_timeout),
        ">/dev/null",
        _stdin=definition,
        _timeout=session_limit(1, command_timeout),
    )


def _write_file(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    temporary.replace(target)


@operation()
def domains_xml_saved(
    domains: list[str], directory: str, uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT
) -> Commands:
    """Save each domain's persistent XML on the controller as ``<directory>/<domain>.xml``.

    The XML comes from the fact (no extra round trip); files already identical are left alone. It
    holds console passwords (read with the secure flag), so the files are readable by their owner only.
    """
    snapshot = _hypervisor(uri, command_timeout)
    if snapshot is None:
        yield fail(UNREAD)
        return
    known = snapshot["domains"]
    changed = False
    for vm in domains:
        if vm not in known:
            logger.warning(f"{getattr(host, 'print_prefix', '')}{vm}: not defined here, no XML saved")
            continue
        path = os.path.join(directory, f"{vm}.xml")
        xml = known[vm]["xml"]
        if os.path.exists(path) and Path(path).read_text() == xml:
            continue
        changed = True
        yield FunctionCommand(_write_file, (path, xml), {})
    if not changed:
        host.noop(f"XML of {len(domains)} domain(s) already saved in {directory}")
