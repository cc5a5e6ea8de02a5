"""Idempotent libvirt operations, named like pyinfra core's (a noun, and state arguments):

* ``pool``: a directory storage pool (``present=``);
* ``vms``: the manifest's VMs as domains (``present=``: cloned and converged, or deleted);
* ``vms_running``: their power state (``running=``);
* ``vm_reservations``: their DHCP reservations and DNS names on the management node (``present=``;
  removal follows the deletes of the same run);
* ``domain``: a domain defined from a controller-side XML file (the base VM);
* ``vm_xml_files``: copies of the VMs' XML definitions on the controller.

VMs are ``VmSpec`` objects (inventories/manifest_model.py), as the manifest inventory puts them in
host data.

Each operation takes the host's ``Hypervisor`` fact from the run store (``operations/util/run_store.py``:
one round trip for all pools, volumes and domains, shared by every step of the run until a step changes
the host), plans with the pure planners in ``operations/util`` (``vm_plan``), logs one line per VM, and
yields one command per VM.
At prepare time (``--dry``) a missing base VM or pool is reported, not raised: an earlier operation of
the same run may create it; at execute time the host fails with the message instead.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from inventories.manifest_model import VmSpec
from operations import dnsmasq
from operations.util.clone_plan import build_plans
from operations.util.delete_plan import delete_plan
from operations.util.domain_diff import build_diff, delete_diff, power_diff
from operations.util.domain_source import digest, recorded_digest, with_source
from operations.util.domain_xml import CloneError, domain_name, xml_covers
from operations.util.output import log
from operations.util.plan_commands import (
    UNREAD,
    hypervisor_state,
    limited,
    log_plans,
    plan_commands,
    show_diff,
)
from operations.util.power_plan import power_plan
from operations.util.preflight import capacity_refusal
from operations.util.pyinfra_adapter import nested_commands
from operations.util.run_store import store
from operations.util.virsh import (
    DEFAULT_COPY_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_URI,
    all_of,
    fail,
    session_limit,
    virsh,
)

Commands = Generator[Any, None, None]


def _specs(vmspecs: list[VmSpec]) -> list[VmSpec]:
    """The VmSpecs, or OperationValueError naming what is not one (a dict is not: build a VmSpec)."""
    specs = list(vmspecs)
    for spec in specs:
        if not isinstance(spec, VmSpec):
            raise OperationValueError(f"vmspecs: expected VmSpec objects, got {spec!r}")
    return specs


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

    + pool_name: the libvirt pool's name
    + path: its directory on the host (changing it for an existing pool is refused: redefining it
      would orphan its volumes)
    + autostart: started by libvirtd at boot
    + present: defined and running, or undefined (its files are kept)
    + uri: libvirt connection
    + command_timeout: seconds each virsh call may take

    **Example:**

    .. code:: python

        libvirt.pool(name="Primary storage pool", pool_name="default", path="/data01/primary")
    """
    t = command_timeout
    host_state = hypervisor_state(uri, t)
    if host_state is None:
        yield fail(UNREAD)
        return
    pools = host_state.pools
    current = pools.get(pool_name)
    if not present:
        if current is None:
            host.noop(f"pool {pool_name} is absent")
            return
        steps = [virsh(uri, "pool-destroy", pool_name, timeout=t)] if current.active else []
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
    if os.path.normpath(current.path or "") != os.path.normpath(path):
        message = (
            f"pool {pool_name} already exists with path {current.path}, not {path}; "
            "refusing to redefine it (undefine it first, or use another pool name)"
        )
        log(message, "warning")
        yield fail(message)
        return
    steps = []
    if not current.active:
        steps += [
            virsh(uri, "pool-build", pool_name, timeout=t),
            virsh(uri, "pool-start", pool_name, timeout=t),
        ]
    if current.autostart != autostart:
        steps.append(
            virsh(uri, "pool-autostart", *([] if autostart else ["--disable"]), pool_name, timeout=t)
        )
    if not steps:
        host.noop(f"pool {pool_name} is defined at {path} and running")
        return
    yield StringCommand(all_of(steps), _timeout=session_limit(len(steps), t))


@operation()
def vms(
    vmspecs: list[VmSpec],
    present: bool = True,
    create: bool = True,
    keep_disks: bool = False,
    shared_dirs: list[str] | None = None,
    uri: str = DEFAULT_URI,
    vcpu_ratio: float | None = None,
    memory_ratio: float | None = None,
    command_timeout: int = DEFAULT_TIMEOUT,
    copy_timeout: int = DEFAULT_COPY_TIMEOUT,
) -> Commands:
    """The VMs of this host as libvirt domains: cloned from their base and converged, or deleted.

    + vmspecs: the VMs (``VmSpec``), as the manifest inventory puts them in host data ``kvm_vmspecs``
    + present: ``True``: each VM exists and matches its vmspec (vCPUs, memory live where libvirt
      allows it and in the persistent config, missing data disks added, autostart); ``False``: each
      VM is destroyed and undefined, and the files it alone owns are deleted (see below)
    + create: clone missing VMs from their base (``False``: only converge existing ones, report the
      missing ones)
    + keep_disks: with ``present=False``, keep the VMs' disk files
    + shared_dirs: with ``present=False``, storage other hosts use too (the secondary pool's NFS
      share): leftovers of an already deleted VM are never taken from there
    + uri: libvirt connection
    + vcpu_ratio / memory_ratio: with ``present=True``, a capacity preflight: when this host's VMs
      (plus the other domains defined on it) exceed its CPUs/memory times the ratios, or a full clone
      would not fit in its pool, this host alone fails with a per-host table and nothing changes on it
    + command_timeout: seconds each remote step may take
    + copy_timeout: seconds a full copy of a base disk may take

    Deleting removes only the files a VM owns: files in a storage pool directory named ``<vm>-vd*``
    that are not a disk or backing file of any other domain (read from every domain's definition and
    the image headers, inactive pools included); never the base image, an ISO or anything outside a
    pool. A VM that is already gone has its remaining owned files removed, so a delete that failed
    halfway finishes on a re-run. At execute time each deleted (or absent) VM is recorded for
    ``vm_reservations(present=False)``.

    **Example:**

    .. code:: python

        libvirt.vms(name="Clone and converge VMs", vmspecs=host.data.kvm_vmspecs)
        libvirt.vms(name="Delete VMs", vmspecs=host.data.kvm_vmspecs, present=False)
    """
    specs = _specs(vmspecs)
    if not present:
        yield from _deleted(
            [spec.name for spec in specs], keep_disks, uri, command_timeout, tuple(shared_dirs or ())
        )
        return
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    if vcpu_ratio is not None or memory_ratio is not None:
        refusal = capacity_refusal(specs, host_state, vcpu_ratio, memory_ratio)
        if refusal:
            yield fail(refusal)
            return
    plans = build_plans(
        specs, host_state, uri, clone=create, timeout=command_timeout, copy_timeout=copy_timeout
    )
    log_plans(plans)
    show_diff(build_diff(specs, host_state, {p.vm for p in plans if p.command is not None}))
    if not any(p.changes for p in plans):
        host.noop(f"{len(plans)} domain(s) match the manifest")
        return
    yield from plan_commands(plans)


@operation()
def vms_running(
    vmspecs: list[VmSpec],
    running: bool = True,
    force: bool = False,
    stop_timeout: int = 60,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """The power state of the VMs: running (started or resumed) or shut off.

    + vmspecs: the VMs (``VmSpec``); those not defined on this host are reported
    + running: ``True``: started (or resumed); ``False``: graceful shutdown, destroyed after
      ``stop_timeout`` seconds
    + force: with ``running=False``, destroy at once (the original tool's stop)
    + stop_timeout: seconds a graceful shutdown may take
    + uri: libvirt connection
    + command_timeout: seconds each virsh call may take

    **Example:**

    .. code:: python

        libvirt.vms_running(name="Start VMs", vmspecs=host.data.kvm_vmspecs)
        libvirt.vms_running(name="Stop VMs", vmspecs=host.data.kvm_vmspecs, running=False)
    """
    domains = [spec.name for spec in _specs(vmspecs)]
    timeout = stop_timeout
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    known = host_state.domains
    missing = [d for d in domains if d not in known]
    if missing:
        log(f"not defined here: {', '.join(missing)}", "warning")
    plan = power_plan(
        domains, known, running, uri, force=force, timeout=timeout, step_timeout=command_timeout
    )
    if plan is None:
        host.noop(f"{len(domains) - len(missing)} domain(s) already {'running' if running else 'shut off'}")
        return
    log_plans([plan])
    show_diff(power_diff(domains, known, "running" if running else "shut off"))
    yield limited(plan)


def _record_gone(state: Any, host: Any, vms: list[str]) -> bool:
    store(state).gone.setdefault(host.name, set()).update(vms)
    return True


def gone_in_this_run(state: Any, host_name: str) -> set[str]:
    """The VMs ``vms(present=False)`` deleted on ``host_name``, or found absent, while ``state`` executed."""
    return set(store(state).gone.get(host_name, set()))


def _deleted(
    domains: list[str], keep_disks: bool, uri: str, command_timeout: int, shared: tuple[str, ...]
) -> Commands:
    """The commands of ``vms(present=False)``."""
    state = host.state
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:  # never take an unread host for one whose domains are all gone
        yield fail(UNREAD)
        return
    plans = {d: delete_plan(d, host_state, uri, keep_disks, command_timeout, shared) for d in domains}
    absent = [d for d, p in plans.items() if p is None and d not in host_state.domains]
    if getattr(state, "is_executing", False) and absent:
        _record_gone(state, host, absent)
    todo = [p for p in plans.values() if p is not None]
    if not todo:
        host.noop(f"{len(domains)} domain(s) already absent")
        return
    log_plans(todo)
    show_diff(delete_diff([p.vm for p in todo], host_state.domains))
    for plan in todo:
        yield limited(plan)
        yield FunctionCommand(_record_gone, ([plan.vm],), {})


@operation()
def vm_reservations(
    vmspecs: list[VmSpec],
    present: bool = True,
    vm_hosts: dict[str, str] | None = None,
    **dnsmasq_options: Any,
) -> Commands:
    """The DHCP reservations and DNS names of the VMs on the management node.

    + vmspecs: the VMs (``VmSpec``), as the manifest inventory puts them in group data
      ``kvm_all_vmspecs``; each becomes a reservation (``inventories.dnsmasq_format.reservation``)
    + present: ``True``: every VM's reservation is present; ``False``: the reservations of the VMs
      that ``vms(present=False)`` deleted in this run (or found absent) are removed, the others kept
    + vm_hosts: with ``present=False``, VM name -> the inventory name of its hypervisor
    + dnsmasq_options: the other arguments of ``dnsmasq.dhcp_reservations`` (files, ``dhcp_range``,
      ``release_leases_on`` ...)

    **Example:**

    .. code:: python

        libvirt.vm_reservations(name="DHCP reservations", vmspecs=host.data.kvm_all_vmspecs)

    Why this is sound: pyinfra runs an operation on every host before it starts the next one, so this
    operation (on the management node) executes after ``vms(present=False)`` has finished everywhere.
    That operation records a VM only after the VM's delete command exited 0 on its host (a callback
    that pyinfra runs only when every earlier command of the operation succeeded), or when the
    execute-time fact showed the VM absent. A VM on a host that could not be reached, whose fact
    failed, or whose delete failed is not recorded, so its reservation stays. If the schedule is
    changed (``--serial``, ``--no-wait``) and this runs first, nothing is recorded yet and nothing is
    removed; the output says so and a re-run removes them. At prepare time (``--dry``) every entry
    is shown, as a complete delete would remove it.
    """
    specs = _specs(vmspecs)
    if present:
        yield from nested_commands(dnsmasq.dhcp_reservations, entries=specs, present=True, **dnsmasq_options)
        return
    state = host.state
    chosen = specs
    if getattr(state, "is_executing", False):
        on = vm_hosts or {}
        gone = {vm for vm, member in on.items() if vm in gone_in_this_run(state, member)}
        chosen = [spec for spec in specs if spec.name in gone]
        kept = sorted(spec.name for spec in specs if spec.name not in gone)
        if kept:
            log(
                f"keeping the DHCP reservations and DNS names of {', '.join(kept)}: not deleted in this "
                "run (their hypervisor failed or was not reached)",
                "warning",
            )
    if not chosen:
        host.noop("no reservation of a deleted VM to remove")
        return
    yield from nested_commands(dnsmasq.dhcp_reservations, entries=chosen, present=False, **dnsmasq_options)


@operation()
def domain(xml_file: str, uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT) -> Commands:
    """A domain defined from a controller-side XML file: defined when absent or when the file changed
    (the original ``-x``, for the base VM).

    + xml_file: the domain XML on the controller; its ``<name>`` names the domain
    + uri: libvirt connection
    + command_timeout: seconds the define may take

    **Example:**

    .. code:: python

        libvirt.domain(name="Define base VM", xml_file="centos7.xml")

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
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    current = host_state.domains.get(vm)
    if current is not None:
        recorded = recorded_digest(current.xml)
        if recorded == file_digest or (recorded is None and xml_covers(xml, current.xml)):
            host.noop(f"domain {vm} matches {xml_file}")
            return
    try:
        definition = with_source(xml, file_digest, current.uuid if current else None)
    except CloneError as exc:
        raise OperationValueError(f"cannot redefine {vm} from {xml_file}: {exc}") from None
    log(
        f"{vm}: {'redefine' if current else 'define'} from {xml_file}"
        + (f" (keeping UUID {current.uuid})" if current else "")
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
def vm_xml_files(
    domains: list[str], directory: str, uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT
) -> Commands:
    """Copies of the domains' persistent XML on the controller, as ``<directory>/<domain>.xml``.

    + domains: domain names (the manifest's VMs, or a base VM); those not defined on this host are
      reported
    + directory: controller-side directory of the files
    + uri: libvirt connection
    + command_timeout: seconds reading the host's state may take

    The XML comes from the fact (no extra round trip); files already identical are left alone. It
    holds console passwords (read with the secure flag), so the files are readable by their owner only.

    **Example:**

    .. code:: python

        libvirt.vm_xml_files(name="Save VM XML", domains=["vm01", "centos7"], directory="xml/sm-01")
    """
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    known = host_state.domains
    changed = False
    for vm in domains:
        if vm not in known:
            log(f"{vm}: not defined here, no XML saved", "warning")
            continue
        path = os.path.join(directory, f"{vm}.xml")
        xml = known[vm].xml
        if os.path.exists(path) and Path(path).read_text() == xml:
            continue
        changed = True
        yield FunctionCommand(_write_file, (path, xml), {})
    if not changed:
        host.noop(f"XML of {len(domains)} domain(s) already saved in {directory}")
