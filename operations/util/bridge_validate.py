"""``parse_spec``: the ``kvm_bridge*``/``kvm_bond`` data keys checked one by one into a ``BridgeSpec``.

Every value that later reaches a file or the switch script is validated here (names, addresses,
numbers); a bad one raises ``BridgeSpecError`` naming the key and the value.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from operations.util.bridge_spec import Bond, BridgeSpec, BridgeSpecError

BOND_MODES = (
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
)
XMIT_HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac")
# Bond modes that use a transmit hash policy.
HASHING_MODES = ("802.3ad", "balance-xor", "balance-tlb", "balance-alb")
LACP_RATES = ("slow", "fast")
# Linux interface names: at most 15 characters (IFNAMSIZ - 1); a subset safe in file names, YAML and sh.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_DOMAIN = re.compile(
    r"(?=.{1,253})[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

MIN_ROLLBACK_SECONDS = 30
MAX_ROLLBACK_SECONDS = 3600
MIN_VERIFY_SECONDS = 5
MAX_VERIFY_SECONDS = 600
# The rollback must not fire while the host is still being verified and committed.
ROLLBACK_MARGIN = 20


# --- one value ----------------------------------------------------------------------------------


def _list(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise BridgeSpecError(f"{key}={value!r}: expected a list of strings")
        return [item.strip() for item in value]
    raise BridgeSpecError(f"{key}={value!r}: expected a list (or a comma-separated string)")


def _ifname(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise BridgeSpecError(
            f"{key}={value!r}: not an interface name "
            "(1-15 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
        )
    return value


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise BridgeSpecError(f"{key}={value!r}: expected a whole number")
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise BridgeSpecError(f"{key}={value!r}: expected a whole number")
    if not low <= value <= high:
        raise BridgeSpecError(f"{key}={value}: must be between {low} and {high}")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise BridgeSpecError(f"{key}={value!r}: expected true or false")


def _ipv4(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9.]{7,15}", value):
        raise BridgeSpecError(f"{key}={value!r}: expected an IPv4 address")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise BridgeSpecError(f"{key}={value!r}: expected an IPv4 address") from None


# --- the bond -----------------------------------------------------------------------------------


def _bond_mapping(value: Any) -> Mapping[str, Any] | None:
    """``kvm_bond`` as a mapping (a JSON string from ``--data`` is decoded); None when unset."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BridgeSpecError(f"kvm_bond: expected a JSON object: {exc}") from None
    if not isinstance(value, Mapping):
        raise BridgeSpecError(f"kvm_bond={value!r}: expected a mapping with name, mode, members")
    unknown = sorted(set(value) - {"name", "mode", "members", "miimon", "xmit_hash_policy", "lacp_rate"})
    if unknown:
        raise BridgeSpecError(f"kvm_bond: unknown key(s) {', '.join(unknown)}")
    return value


def _bond_members(value: Any) -> list[str]:
    members = [_ifname("kvm_bond.members", member) for member in _list("kvm_bond.members", value)]
    if not members:
        raise BridgeSpecError("kvm_bond.members: a bond needs at least one member interface")
    if len(set(members)) != len(members):
        raise BridgeSpecError(f"kvm_bond.members={members!r}: an interface is listed twice")
    return members


def _bond_hashing(mode: str, policy: Any, rate: Any) -> None:
    """The transmit hash policy and LACP rate: known values, and only with a mode that uses them."""
    if policy is not None:
        if policy not in XMIT_HASH_POLICIES:
            raise BridgeSpecError(
                f"kvm_bond.xmit_hash_policy={policy!r}: expected one of {', '.join(XMIT_HASH_POLICIES)}"
            )
        if mode not in HASHING_MODES:
            raise BridgeSpecError(f"kvm_bond.xmit_hash_policy: not used by mode {mode}")
    if rate is not None:
        if rate not in LACP_RATES:
            raise BridgeSpecError(f"kvm_bond.lacp_rate={rate!r}: expected slow or fast")
        if mode != "802.3ad":
            raise BridgeSpecError("kvm_bond.lacp_rate: only used by mode 802.3ad")


def _bond(value: Any) -> Bond | None:
    data = _bond_mapping(value)
    if data is None:
        return None
    name = _ifname("kvm_bond.name", data.get("name", "bond0"))
    mode = data.get("mode", "active-backup")
    if mode not in BOND_MODES:
        raise BridgeSpecError(f"kvm_bond.mode={mode!r}: expected one of {', '.join(BOND_MODES)}")
    members = _bond_members(data.get("members"))
    policy = data.get("xmit_hash_policy")
    rate = data.get("lacp_rate")
    _bond_hashing(mode, policy, rate)
    miimon = _int("kvm_bond.miimon", data.get("miimon", 100), 0, 60000)
    return Bond(name, mode, tuple(members), miimon, policy, rate)


# --- the steps of parse_spec ---------------------------------------------------------------------


def _interfaces(values: Mapping[str, Any]) -> tuple[str, list[str], Bond | None]:
    """(bridge, ports, bond): valid names, at least one port or a bond, no interface used twice."""
    bridge = _ifname("kvm_bridge", values.get("kvm_bridge", "br0"))
    ports = [
        _ifname("kvm_bridge_ports", port)
        for port in _list("kvm_bridge_ports", values.get("kvm_bridge_ports"))
    ]
    bond = _bond(values.get("kvm_bond"))
    if not ports and bond is None:
        raise BridgeSpecError("kvm_bridge_ports: the bridge needs at least one port (or a kvm_bond)")
    names = [bridge, *ports, *((bond.name, *bond.members) if bond else ())]
    seen: set[str] = set()
    for item in names:
        if item in seen:
            raise BridgeSpecError(
                f"kvm_bridge_ports/kvm_bond: interface {item!r} is used twice "
                "(bridge, ports, bond and bond members must all differ)"
            )
        seen.add(item)
    return bridge, ports, bond


def _static_address(raw: Any) -> ipaddress.IPv4Interface:
    """A host address with its prefix (``10.10.5.2/24``), not the network or broadcast address."""
    if not isinstance(raw, str) or not re.fullmatch(r"[0-9.]{7,15}/[0-9]{1,2}", raw):
        raise BridgeSpecError(f"kvm_bridge_address={raw!r}: expected 'dhcp' or address/prefix (10.10.5.2/24)")
    try:
        interface = ipaddress.IPv4Interface(raw)
    except ValueError:
        raise BridgeSpecError(f"kvm_bridge_address={raw!r}: not a valid IPv4 address/prefix") from None
    network = interface.network
    edge = interface.ip in (network.network_address, network.broadcast_address)
    if network.prefixlen < 1 or (edge and network.prefixlen < 31):
        raise BridgeSpecError(f"kvm_bridge_address={raw!r}: not a host address of its network")
    return interface


def _address(values: Mapping[str, Any]) -> ipaddress.IPv4Interface | None:
    """``kvm_bridge_address``: None for DHCP, else the static address (required either way)."""
    raw = values.get("kvm_bridge_address")
    if raw is None or raw == "":
        raise BridgeSpecError(
            "kvm_bridge_address: required, 'dhcp' or an IPv4 address with prefix (10.10.5.2/24)"
        )
    return None if raw == "dhcp" else _static_address(raw)


def _gateway(values: Mapping[str, Any], interface: ipaddress.IPv4Interface | None) -> str | None:
    """``kvm_bridge_gateway``: only with a static address, and inside its network."""
    gateway = values.get("kvm_bridge_gateway")
    if gateway in (None, ""):
        return None
    if interface is None:
        raise BridgeSpecError(
            "kvm_bridge_gateway: only with a static kvm_bridge_address (DHCP sets the route)"
        )
    gateway = _ipv4("kvm_bridge_gateway", gateway)
    if ipaddress.IPv4Address(gateway) not in interface.network:
        raise BridgeSpecError(
            f"kvm_bridge_gateway={gateway}: not inside {interface.network} (kvm_bridge_address)"
        )
    return gateway


def _dns(values: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(servers, search domains)."""
    servers = [
        _ipv4("kvm_bridge_dns", server) for server in _list("kvm_bridge_dns", values.get("kvm_bridge_dns"))
    ]
    search = _list("kvm_bridge_dns_search", values.get("kvm_bridge_dns_search"))
    for domain in search:
        if not _DOMAIN.fullmatch(domain):
            raise BridgeSpecError(f"kvm_bridge_dns_search: {domain!r} is not a domain name")
    return servers, search


def _timers(values: Mapping[str, Any]) -> tuple[int, int]:
    """(rollback, verify) seconds; the rollback leaves time to verify and commit first."""
    rollback = _int(
        "kvm_bridge_rollback_seconds",
        values.get("kvm_bridge_rollback_seconds", 120),
        MIN_ROLLBACK_SECONDS,
        MAX_ROLLBACK_SECONDS,
    )
    verify = _int(
        "kvm_bridge_verify_seconds",
        values.get("kvm_bridge_verify_seconds", 30),
        MIN_VERIFY_SECONDS,
        MAX_VERIFY_SECONDS,
    )
    if verify + ROLLBACK_MARGIN > rollback:
        raise BridgeSpecError(
            f"kvm_bridge_rollback_seconds={rollback}: must be at least kvm_bridge_verify_seconds ({verify}) "
            f"+ {ROLLBACK_MARGIN}, or the rollback fires while the host is being verified"
        )
    return rollback, verify


def parse_spec(values: Mapping[str, Any]) -> BridgeSpec:
    """A ``BridgeSpec`` from the ``kvm_bridge*``/``kvm_bond`` data keys; ``BridgeSpecError`` names the key."""
    bridge, ports, bond = _interfaces(values)
    interface = _address(values)
    gateway = _gateway(values, interface)
    dns, search = _dns(values)
    stp = _bool("kvm_bridge_stp", values.get("kvm_bridge_stp", False))
    rollback, verify = _timers(values)
    return BridgeSpec(
        bridge=bridge,
        ports=tuple(ports),
        bond=bond,
        dhcp=interface is None,
        address=interface.with_prefixlen if interface else None,
        gateway=gateway,
        dns=tuple(dns),
        dns_search=tuple(search),
        stp=stp,
        rollback_seconds=rollback,
        verify_seconds=verify,
    )
