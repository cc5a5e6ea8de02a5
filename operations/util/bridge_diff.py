"""``differences``: why a host needs the bridge change (the committed stamp and the live links)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from operations.util.bridge_spec import BridgeSpec


def differences(spec: BridgeSpec, backend: str, current: Mapping[str, Any]) -> list[str]:
    """Why the host needs the change; empty when the committed stamp and the live links match.

    ``current`` is the ``facts.bridge.BridgeState`` fact.
    """
    problems: list[str] = []
    stamp = current.get("stamp")
    if stamp != spec.stamp(backend):
        problems.append(
            "configuration differs from the last committed one" if stamp else "not configured yet"
        )
    links: Mapping[str, Mapping[str, Any]] = current.get("links") or {}
    bridge = links.get(spec.bridge)
    if bridge is None:
        problems.append(f"{spec.bridge} does not exist")
    elif not bridge.get("up"):
        problems.append(f"{spec.bridge} is down")
    expected = {port: spec.bridge for port in spec.bridge_ports}
    if spec.bond:
        expected.update({member: spec.bond.name for member in spec.bond.members})
    for device, master in expected.items():
        link = links.get(device)
        if link is None:
            problems.append(f"{device} does not exist")
        elif link.get("master") != master:
            problems.append(f"{device} is not in {master}")
    if spec.address and spec.address not in (current.get("addrs") or {}).get(spec.bridge, []):
        problems.append(f"{spec.bridge} lacks {spec.address}")
    return problems
