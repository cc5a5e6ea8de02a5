"""The ifcfg backend's files, ``ifcfg-<device>`` for the legacy network service (RHEL/CentOS 7)."""

from __future__ import annotations

from collections.abc import Sequence

from operations.util.bridge_spec import FILE_HEADER, IFCFG_DIR, Bond, BridgeSpec

Pairs = list[tuple[str, str]]


def _ifcfg(pairs: Sequence[tuple[str, str]]) -> str:
    lines = [f"# {FILE_HEADER}"]
    for key, value in pairs:
        # Values are validated names/addresses; only a value with a space needs the shell-style quotes.
        lines.append(f'{key}="{value}"' if " " in value else f"{key}={value}")
    return "\n".join(lines) + "\n"


def _bridge_pairs(spec: BridgeSpec) -> Pairs:
    pairs: Pairs = [
        ("DEVICE", spec.bridge),
        ("NAME", spec.bridge),
        ("TYPE", "Bridge"),
        ("ONBOOT", "yes"),
        ("NM_CONTROLLED", "no"),
        ("BOOTPROTO", "dhcp" if spec.dhcp else "none"),
        ("STP", "yes" if spec.stp else "no"),
        ("DELAY", "0"),
    ]
    if spec.address:
        ip, prefix = spec.address.split("/")
        pairs += [("IPADDR", ip), ("PREFIX", prefix)]
    if spec.gateway:
        pairs.append(("GATEWAY", spec.gateway))
    for index, server in enumerate(spec.dns, start=1):
        pairs.append((f"DNS{index}", server))
    if spec.dns_search:
        pairs.append(("DOMAIN", " ".join(spec.dns_search)))
    return pairs


def _bond_pairs(bond: Bond, bridge: str) -> Pairs:
    return [
        ("DEVICE", bond.name),
        ("NAME", bond.name),
        ("TYPE", "Bond"),
        ("BONDING_MASTER", "yes"),
        ("BONDING_OPTS", " ".join(bond.options)),
        ("ONBOOT", "yes"),
        ("NM_CONTROLLED", "no"),
        ("BOOTPROTO", "none"),
        ("BRIDGE", bridge),
    ]


def _member_pairs(member: str, bond: Bond) -> Pairs:
    return [
        ("DEVICE", member),
        ("NAME", member),
        ("TYPE", "Ethernet"),
        ("ONBOOT", "yes"),
        ("NM_CONTROLLED", "no"),
        ("BOOTPROTO", "none"),
        ("MASTER", bond.name),
        ("SLAVE", "yes"),
    ]


def _port_pairs(port: str, bridge: str) -> Pairs:
    return [
        ("DEVICE", port),
        ("NAME", port),
        ("TYPE", "Ethernet"),
        ("ONBOOT", "yes"),
        ("NM_CONTROLLED", "no"),
        ("BOOTPROTO", "none"),
        ("BRIDGE", bridge),
    ]


def render_ifcfg(spec: BridgeSpec) -> dict[str, str]:
    """``ifcfg-<device>`` files (path -> content) for the legacy network service (RHEL/CentOS 7)."""
    files = {f"{IFCFG_DIR}/ifcfg-{spec.bridge}": _ifcfg(_bridge_pairs(spec))}
    if spec.bond:
        files[f"{IFCFG_DIR}/ifcfg-{spec.bond.name}"] = _ifcfg(_bond_pairs(spec.bond, spec.bridge))
        for member in spec.bond.members:
            files[f"{IFCFG_DIR}/ifcfg-{member}"] = _ifcfg(_member_pairs(member, spec.bond))
    for port in spec.ports:
        files[f"{IFCFG_DIR}/ifcfg-{port}"] = _ifcfg(_port_pairs(port, spec.bridge))
    return files
