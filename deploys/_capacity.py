"""The build's capacity preflight, run in deploy code so it refuses before any operation is planned."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger

from inventories.manifest_model import VmSpec
from operations._capacity import capacity_row


class CapacityError(Exception):
    """The manifest does not fit on a host at the configured overcommit ratio."""


def check_capacity(specs: list[VmSpec], overcommit: float, snapshot: dict[str, Any]) -> None:
    """Refuse the build on this host (raise) when the manifest does not fit; ``snapshot``: Hypervisor fact."""
    row = capacity_row(host.name, specs, snapshot, overcommit)
    logger.info(f"{host.print_prefix}capacity: {row.table_line()}")
    if row.problems:
        raise CapacityError(
            f"capacity preflight refused the build on {host.name} (nothing was changed):\n"
            f"  {row.table_line()}\n"
            "  raise --data overcommit=<ratio> or move VMs to another host in the manifest"
        )
