"""The netplan backend's one file, ``/etc/netplan/60-kvm-qemu-bridge.yaml``."""

from __future__ import annotations

from collections.abc import Sequence

from operations.util.bridge_spec import FILE_HEADER, Bond, BridgeSpec


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _netplan_addressing(spec: BridgeSpec, indent: str) -> list[str]:
    lines = [f"{indent}dhcp4: {'true' if spec.dhcp else 'false'}", f"{indent}dhcp6: false"]
    if spec.address:
        lines.append(f"{indent}addresses: {_yaml_list([spec.address])}")
    if spec.gateway:
        lines.append(f"{indent}routes:")
        lines.append(f'{indent}  - to: "default"')
        lines.append(f'{indent}    via: "{spec.gateway}"')
    if spec.dns or spec.dns_search:
        lines.append(f"{indent}nameservers:")
        if spec.dns:
            lines.append(f"{indent}  addresses: {_yaml_list(spec.dns)}")
        if spec.dns_search:
            lines.append(f"{indent}  search: {_yaml_list(spec.dns_search)}")
    return lines


def _netplan_bond(bond: Bond) -> list[str]:
    lines = ["  bonds:", f'    "{bond.name}":', f"      interfaces: {_yaml_list(bond.members)}"]
    lines += [
        "      dhcp4: false",
        "      dhcp6: false",
        "      parameters:",
        f'        mode: "{bond.mode}"',
    ]
    lines.append(f"        mii-monitor-interval: {bond.miimon}")
    if bond.xmit_hash_policy:
        lines.append(f'        transmit-hash-policy: "{bond.xmit_hash_policy}"')
    if bond.lacp_rate:
        lines.append(f'        lacp-rate: "{bond.lacp_rate}"')
    return lines


def render_netplan(spec: BridgeSpec) -> str:
    """``/etc/netplan/60-kvm-qemu-bridge.yaml``: ports and members lose their own addressing."""
    lines = [f"# {FILE_HEADER}", "network:", "  version: 2", "  ethernets:"]
    members = spec.bond.members if spec.bond else ()
    for device in (*members, *spec.ports):
        lines += [f'    "{device}":', "      dhcp4: false", "      dhcp6: false"]
    if spec.bond:
        lines += _netplan_bond(spec.bond)
    lines += ["  bridges:", f'    "{spec.bridge}":', f"      interfaces: {_yaml_list(spec.bridge_ports)}"]
    lines += _netplan_addressing(spec, "      ")
    lines += [
        "      parameters:",
        f"        stp: {'true' if spec.stp else 'false'}",
        "        forward-delay: 0",
    ]
    return "\n".join(lines) + "\n"
