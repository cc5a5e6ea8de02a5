"""Remove orphan volumes the cluster drift report proved to be the tool's own
(``operations/util/drift.py``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from operations.util.drift import recheck, running_pools
from operations.util.plan_commands import UNREAD, hypervisor_state
from operations.util.virsh import (
    DEFAULT_TIMEOUT,
    DEFAULT_URI,
    all_of,
    bounded,
    fail,
    q,
    session_limit,
    sh,
    virsh,
)

Commands = Generator[Any, None, None]


def removal_command(paths: list[str], pools: list[str], uri: str, timeout: int) -> StringCommand:
    """Check that every path is still a plain file (not a link), remove them, refresh their pools."""
    quoted = [q(p) for p in paths]
    commands = [
        sh(
            "{ for f in",
            *quoted,
            '; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then',
            'echo "kvm-qemu: $f is not a plain file any more; refusing to delete it" >&2;',
            "exit 1; fi; done; }",
        ),
        bounded("removal of orphan volumes", timeout, "rm", "-f", "--", *quoted),
    ]
    commands += [sh("{", virsh(uri, "pool-refresh", p, timeout=timeout), ">/dev/null || :; }") for p in pools]
    return all_of(commands)


@operation()
def orphan_volumes_absent(
    paths: list[str], uri: str = DEFAULT_URI, command_timeout: int = DEFAULT_TIMEOUT
) -> Commands:
    """Remove orphan volumes of this hypervisor, each checked again on the host first.

    + paths: volume paths the cluster drift report found orphaned and prunable (``prune_plan``)
    + uri: libvirt connection URI
    + command_timeout: seconds any one remote step may take

    Right before removal the host's ``Hypervisor`` fact is read again: a path that a domain now uses
    (disk or backing file), that backs another file, that is no longer a plain file, whose ``<vm>``
    now has a domain, or that is no longer in a pool directory is kept, and the output says why. The
    command itself refuses a path that became a link or anything but a plain file.

    **Example:**

    .. code:: python

        orphans.orphan_volumes_absent(
            name="Remove orphan volumes",
            paths=["/data01/primary/old-vm-vdb"],
        )
    """
    host_state = hypervisor_state(uri, command_timeout)
    if host_state is None:
        yield fail(UNREAD)
        return
    free, kept = recheck(list(paths), host_state)
    prefix = getattr(host, "print_prefix", "")
    for line in kept:
        logger.info(f"{prefix}keeping {line}")
    if not free:
        host.noop("no orphan volume to remove")
        return
    for path in free:
        logger.info(f"{prefix}remove orphan volume {path}")
    pools = running_pools(free, host_state)
    yield StringCommand(
        removal_command(free, pools, uri, command_timeout),
        _timeout=session_limit(2 + len(pools), command_timeout),
    )
