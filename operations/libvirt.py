"""Idempotent libvirt operations: pools, clones from a base VM, resources, power, delete, define, dump.

Each operation reads the ``Hypervisor`` fact once (one round trip for all pools, volumes and domains),
plans with the pure functions in ``_domain_plan``, logs one line per VM, and yields one command per VM.
At prepare time (``--dry``) a missing base VM or pool is reported, not raised: an earlier operation of
the same run may create it; at execute time the host fails with the message instead.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from facts.libvirt import Hypervisor
from inventories.manifest_model import VmSpec
from operations._domain_diff import build_diff, delete_diff, power_diff
from operations._domain_plan import VmPlan, build_plans, delete_plan, power_plan
from operations._domain_source import digest, recorded_digest, with_source
from operations._domain_xml import CloneError, domain_name, xml_covers
from operations._preflight import capacity_refusal
from operations._virsh import DEFAULT_URI, all_of, fail, virsh

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
            yield StringCommand(plan.command, _stdin=plan.stdin) if plan.stdin else plan.command


def _specs(vmspecs: list[dict[str, Any]] | list[VmSpec]) -> list[VmSpec]:
    return [v if isinstance(v, VmSpec) else VmSpec(**v) for v in vmspecs]


@operation()
def pool(
    pool_name: str, path: str, autostart: bool = True, present: bool = True, uri: str = DEFAULT_URI
) -> Commands:
    """A directory storage pool: defined, built, started, autostarted (or undefined, files kept).

    Changing the path of an existing pool is refused: redefining it would orphan its volumes.
    """
    pools = host.get_fact(Hypervisor, uri=uri)["pools"]
    current = pools.get(pool_name)
    if not present:
        if current is None:
            host.noop(f"pool {pool_name} is absent")
            return
        steps = [virsh(uri, "pool-destroy", pool_name)] if current["state"] == "running" else []
        yield all_of(steps + [virsh(uri, "pool-undefine", pool_name)])
        return
    if current is None:
        steps = [
            virsh(uri, "pool-define-as", pool_name, "dir", "--target", path),
            virsh(uri, "pool-build", pool_name),
            virsh(uri, "pool-start", pool_name),
        ]
        if autostart:
            steps.append(virsh(uri, "pool-autostart", pool_name))
        yield all_of(steps)
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
        steps += [virsh(uri, "pool-build", pool_name), virsh(uri, "pool-start", pool_name)]
    if bool(current.get("autostart")) != autostart:
        steps.append(virsh(uri, "pool-autostart", *([] if autostart else ["--disable"]), pool_name))
    if not steps:
        host.noop(f"pool {pool_name} is defined at {path} and running")
        return
    yield all_of(steps)


@operation()
def domains_built(
    vmspecs: list[dict[str, Any]],
    clone: bool = True,
    uri: str = DEFAULT_URI,
    vcpu_ratio: float | None = None,
    memory_ratio: float | None = None,
) -> Commands:
    """Every vmspec of this host as a domain: cloned from its base when missing, else converged.

    Converging sets vCPUs/memory (live where libvirt allows it, and in the persistent config), adds
    missing data disks and sets autostart. With ``clone=False`` missing domains are only reported.
    With ``vcpu_ratio``/``memory_ratio`` a capacity preflight runs first: when this host's VMs (plus the
    other domains defined on it) exceed its CPUs/memory times the ratios, or a full clone would not fit
    in its pool, this host alone fails with a per-host table and nothing is changed on it.
    """
    specs = _specs(vmspecs)
    snapshot = host.get_fact(Hypervisor, uri=uri)
    if vcpu_ratio is not None or memory_ratio is not None:
        refusal = capacity_refusal(specs, snapshot, vcpu_ratio, memory_ratio)
        if refusal:
            yield fail(refusal)
            return
    plans = build_plans(specs, snapshot, uri, clone=clone)
    _log(plans)
    _diff(build_diff(specs, snapshot, {p.vm for p in plans if p.command is not None}))
    if not any(p.changes for p in plans):
        host.noop(f"{len(plans)} domain(s) match the manifest")
        return
    yield from _yield_plans(plans)


@operation()
def domains_power(
    domains: list[str], running: bool = True, force: bool = False, timeout: int = 60, uri: str = DEFAULT_URI
) -> Commands:
    """Start (or resume) the domains, or stop them: graceful shutdown, destroyed after ``timeout`` seconds.

    ``force`` destroys at once (the original tool's stop). Domains not defined here are reported.
    """
    known = host.get_fact(Hypervisor, uri=uri)["domains"]
    missing = [d for d in domains if d not in known]
    if missing:
        logger.warning(f"{getattr(host, 'print_prefix', '')}not defined here: {', '.join(missing)}")
    plan = power_plan(domains, known, running, uri, force=force, timeout=timeout)
    if plan is None:
        host.noop(f"{len(domains) - len(missing)} domain(s) already {'running' if running else 'shut off'}")
        return
    _log([plan])
    _diff(power_diff(domains, known, "running" if running else "shut off"))
    yield plan.command


@operation()
def domains_deleted(domains: list[str], keep_disks: bool = False, uri: str = DEFAULT_URI) -> Commands:
    """Destroy and undefine the domains, then delete only the volumes each one owns (unless keep_disks).

    Owned: the domain's disk files in a storage pool named ``<vm>-vd*`` that back no other volume; never
    the base image, an ISO or anything outside a pool. A domain that is already gone is a no-op.
    """
    snapshot = host.get_fact(Hypervisor, uri=uri)
    plans = [p for p in (delete_plan(d, snapshot, uri, keep_disks) for d in domains) if p is not None]
    if not plans:
        host.noop(f"{len(domains)} domain(s) already absent")
        return
    _log(plans)
    _diff(delete_diff([p.vm for p in plans], snapshot["domains"]))
    for plan in plans:
        yield plan.command


@operation()
def domain_defined(xml_file: str, uri: str = DEFAULT_URI) -> Commands:
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
    current = host.get_fact(Hypervisor, uri=uri)["domains"].get(vm)
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
    yield StringCommand(virsh(uri, "define", "/dev/stdin"), ">/dev/null", _stdin=definition)


def _write_file(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text)
    temporary.replace(target)


@operation()
def domains_xml_saved(domains: list[str], directory: str, uri: str = DEFAULT_URI) -> Commands:
    """Save each domain's persistent XML on the controller as ``<directory>/<domain>.xml``.

    The XML comes from the fact (no extra round trip); files already identical are left alone.
    """
    known = host.get_fact(Hypervisor, uri=uri)["domains"]
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
