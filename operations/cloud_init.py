"""cloud-init NoCloud seeds: one ``<vm>-seed.iso`` per VM with ``cloudInit``, built on the controller.

The image is made in Python (``util/iso9660``, no ISO tools on the hosts) and planned by
``util/cloud_init_seed``; this operation reads the ``Hypervisor`` fact once per host (it reports each
seed's SHA-256) and yields one command per VM whose seed is missing, out of date or not attached.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host, logger
from pyinfra.api import OperationValueError, operation

from inventories.manifest_model import VmSpec
from operations.util.cloud_init_seed import SeedError, seed_plan, stray_seed_note, validate_users
from operations.util.plan_commands import UNREAD, hypervisor_state, limited, log_plans
from operations.util.virsh import DEFAULT_TIMEOUT, DEFAULT_URI, fail

Commands = Generator[Any, None, None]


@operation()
def seeds(
    vmspecs: list[dict[str, Any]] | list[VmSpec],
    users: list[dict[str, Any]] | None = None,
    uri: str = DEFAULT_URI,
    command_timeout: int = DEFAULT_TIMEOUT,
) -> Commands:
    """Every vmspec with ``cloud_init`` gets its seed written to its pool and attached as a cdrom.

    + vmspecs: the VMs of this host (``VmSpec`` or its dict); those without ``cloud_init`` are skipped
    + users: ``[{name, ssh_authorized_keys: [...], sudo}]`` for the user-data (validated first)
    + uri: libvirt URI of the host
    + command_timeout: seconds any one remote step may take

    The seed holds meta-data (instance-id = the domain UUID, local-hostname = the manifest hostname),
    user-data (the users and their keys) and network-config v2 (the manifest MAC on DHCPv4). It is
    rewritten when its content differs from the file on the host (SHA-256), never through a link.
    Run it after ``libvirt.domains_built``: a new clone then boots with its seed.

    **Example:**

    .. code:: python

        cloud_init.seeds(
            name="cloud-init seeds",
            vmspecs=[spec.to_dict() for spec in vmspecs()],
            users=[{"name": "ops", "ssh_authorized_keys": ["ssh-ed25519 AAAA... ops"], "sudo": True}],
        )
    """
    specs = [v if isinstance(v, VmSpec) else VmSpec(**v) for v in vmspecs]
    try:
        checked = validate_users(users)
    except SeedError as exc:
        raise OperationValueError(str(exc)) from None
    wanted = [s for s in specs if s.cloud_init]
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    prefix = getattr(host, "print_prefix", "")
    for spec in specs:
        note = None if spec.cloud_init else stray_seed_note(spec, host_state)
        if note:
            logger.info(f"{prefix}{spec.name}: note: {note}")
    executing = bool(getattr(host.state, "is_executing", False))
    plans = [seed_plan(s, host_state, uri, checked, executing, command_timeout) for s in wanted]
    log_plans(plans)
    if not any(p.changes for p in plans):
        host.noop(f"{len(plans)} cloud-init seed(s) up to date")
        return
    for plan in sorted(plans, key=lambda p: p.error is not None):
        if plan.error:
            yield fail(f"{plan.vm}: {plan.error}")
        elif plan.command is not None:
            yield limited(plan)
