"""The iproute2 backend: runtime-only ``ip`` command lines (nothing persists a reboot)."""

from __future__ import annotations

from operations.util.bridge_spec import Bond, BridgeSpec
from operations.util.shell_quote import shell_line


def _ensure(device: str, *kind: str) -> str:
    """Create ``device`` unless it exists."""
    create = shell_line("ip", "link", "add", "name", device, *kind)
    return f"ip link show dev {shell_line(device)} >/dev/null 2>&1 || {create}"


def _bond_lines(bond: Bond) -> list[str]:
    lines = [
        _ensure(bond.name, "type", "bond", "mode", bond.mode),
        shell_line("ip", "link", "set", "dev", bond.name, "type", "bond", "miimon", str(bond.miimon)),
    ]
    for member in bond.members:
        lines += [
            shell_line("ip", "-4", "addr", "flush", "dev", member, "scope", "global"),
            shell_line("ip", "link", "set", "dev", member, "down"),
            shell_line("ip", "link", "set", "dev", member, "master", bond.name),
            shell_line("ip", "link", "set", "dev", member, "up"),
        ]
    return lines


def _bridge_lines(spec: BridgeSpec) -> list[str]:
    bridge = spec.bridge
    stp = "1" if spec.stp else "0"
    lines = [
        _ensure(bridge, "type", "bridge"),
        shell_line(
            "ip", "link", "set", "dev", bridge, "type", "bridge", "stp_state", stp, "forward_delay", "0"
        ),
    ]
    for port in spec.bridge_ports:
        lines += [
            shell_line("ip", "-4", "addr", "flush", "dev", port, "scope", "global"),
            shell_line("ip", "link", "set", "dev", port, "master", bridge),
            shell_line("ip", "link", "set", "dev", port, "up"),
        ]
    return lines


def _addressing_lines(spec: BridgeSpec) -> list[str]:
    bridge = spec.bridge
    lines = [shell_line("ip", "-4", "addr", "flush", "dev", bridge, "scope", "global")]
    if spec.address:
        lines.append(shell_line("ip", "addr", "add", spec.address, "dev", bridge))
    lines.append(shell_line("ip", "link", "set", "dev", bridge, "up"))
    if spec.gateway:
        lines.append(shell_line("ip", "route", "replace", "default", "via", spec.gateway, "dev", bridge))
    return lines


def render_iproute2(spec: BridgeSpec) -> list[str]:
    """Runtime-only ``ip`` command lines that build the same bridge (nothing persists)."""
    bond = _bond_lines(spec.bond) if spec.bond else []
    return bond + _bridge_lines(spec) + _addressing_lines(spec)
