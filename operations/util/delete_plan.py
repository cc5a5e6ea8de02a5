"""Delete a VM: check its files, destroy, undefine, and remove only what it alone owns."""

from __future__ import annotations

import posixpath
from typing import Any

from pyinfra.api import StringCommand

from facts.util.host_state import HostState
from operations.util.storage_ownership import (
    owned_volumes,
)
from operations.util.virsh import (
    DEFAULT_TIMEOUT,
    all_of,
    bounded,
    q,
    session_limit,
    sh,
    virsh,
)
from operations.util.vm_plan import VmPlan


def delete_plan(
    vm: str,
    host: HostState,
    uri: str,
    keep_disks: bool = False,
    timeout: int = DEFAULT_TIMEOUT,
    shared_dirs: tuple[str, ...] = (),
) -> VmPlan | None:
    """Destroy and undefine ``vm``, then remove the files it owns; None when nothing is left to do.

    Every file is checked on the host before anything changes (still a plain file, not a link), so a
    refusal leaves the domain defined. Files are removed directly, not through a pool (an inactive
    pool cannot delete volumes), so a re-run after a failure finishes the job: when the domain is
    already gone, the files it owned that are still in the pool directories are removed.
    """
    domain = host.domains.get(vm)
    owned, kept = owned_volumes(vm, domain, host, shared_dirs)
    if domain is None and (keep_disks or not owned):
        return None
    pools = host.pools
    paths = [posixpath.join(pools[pool].path or "", base) for pool, base in owned]
    quoted: list[Any] = [q(p) for p in paths]
    plan = VmPlan(vm)
    commands: list[StringCommand] = []
    if paths and not keep_disks:
        commands.append(
            sh(
                "{ for f in",
                *quoted,
                '; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then',
                'echo "kvm-qemu: $f is not a plain file any more; refusing to delete',
                q(vm),
                '" >&2; exit 1; fi; done; }',
            )
        )
    if domain is None:
        plan.actions.append("domain already undefined")
    else:
        if domain.active:
            commands.append(virsh(uri, "destroy", vm, timeout=timeout))
            plan.actions.append("destroy")
        if domain.persistent:
            commands.append(
                sh(
                    virsh(
                        uri,
                        "undefine",
                        "--nvram",
                        "--managed-save",
                        "--snapshots-metadata",
                        "--checkpoints-metadata",
                        vm,
                        timeout=timeout,
                    ),
                    ">/dev/null",
                )
            )
            plan.actions.append("undefine (with NVRAM, managed save, snapshot metadata)")
    if keep_disks:
        plan.notes += [f"kept {pool}/{base} (keep_disks)" for pool, base in owned]
    elif paths:
        commands.append(bounded(f"removal of the disks of {vm}", timeout, "rm", "-f", "--", *quoted))
        plan.actions += [f"delete {path}" for path in paths]
        # Refreshing keeps libvirt's volume lists current; an inactive pool has none to refresh.
        for pool in sorted({p for p, _ in owned if pools[p].active}):
            commands.append(sh("{", virsh(uri, "pool-refresh", pool, timeout=timeout), ">/dev/null || :; }"))
    plan.notes += [f"kept {k}" for k in kept]
    if not commands:
        return None
    plan.command = all_of(commands)
    plan.limit = session_limit(len(commands), timeout)
    return plan
