"""Bridge (and bond) host networking: validated spec, per-family files and commands, the switch script.

Pure functions, no I/O. The deploy (``deploys/network.py``) builds a ``BridgeSpec`` from host data with
``parse_spec``; the operation (``operations/bridge.py``) renders ``switch_script`` for the host's backend
and drives it through its five steps (stage, arm, apply, verify, commit).

Backends (``kvm_bridge_backend``; ``auto`` picks by distribution, see ``choose_backend``):

- ``netplan`` (Ubuntu and derivatives; Debian where netplan is installed): one owned file,
  ``/etc/netplan/60-kvm-qemu-bridge.yaml``, then ``netplan apply``.
- ``networkmanager`` (RHEL/CentOS/Rocky/Alma 8 and later): ``nmcli`` profiles named ``kvm-<device>``.
- ``ifcfg`` (RHEL/CentOS 7, where the legacy network service and ifcfg files are the norm):
  ``ifcfg-<device>`` files with ``NM_CONTROLLED=no``, then ``systemctl restart network``.
- ``iproute2``: runtime only, nothing survives a reboot; never chosen by ``auto``. For hosts whose
  persistent configuration comes from elsewhere, and to exercise the switch for real where no
  network manager runs (network namespaces).

Every value that reaches the script is validated here and rendered through pyinfra's quoting.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra.api import QuoteString, StringCommand

from inventories import defaults

STATE_DIR = defaults.BRIDGE_STATE_DIR
STAMP = defaults.BRIDGE_STAMP
NETPLAN_FILE = "/etc/netplan/60-kvm-qemu-bridge.yaml"
IFCFG_DIR = "/etc/sysconfig/network-scripts"
ROLLBACK_UNIT = "kvm-qemu-bridge-rollback"
BACKENDS = ("netplan", "networkmanager", "ifcfg")
# States of the switch in which a rollback is still armed: a new change must wait for it.
PENDING_STATES = ("armed", "applying", "applied")

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
LACP_RATES = ("slow", "fast")
# Linux interface names: at most 15 characters (IFNAMSIZ - 1); a subset safe in file names, YAML and sh.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_DOMAIN = re.compile(
    r"(?=.{1,253})[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

MIN_ROLLBACK_SECONDS = 30
MAX_ROLLBACK_SECONDS = 3600
MIN_VERIFY_SECONDS = 5
# The rollback must not fire while the host is still being verified and committed.
ROLLBACK_MARGIN = 20


class BridgeSpecError(ValueError):
    """Invalid bridge data; the message names the key."""


@dataclass(frozen=True)
class Bond:
    name: str
    mode: str
    members: tuple[str, ...]
    miimon: int = 100
    xmit_hash_policy: str | None = None
    lacp_rate: str | None = None


@dataclass(frozen=True)
class BridgeSpec:
    bridge: str
    ports: tuple[str, ...] = ()
    bond: Bond | None = None
    dhcp: bool = False
    address: str | None = None  # "10.10.5.2/24"
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    stp: bool = False
    rollback_seconds: int = 120
    verify_seconds: int = 30
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def bridge_ports(self) -> tuple[str, ...]:
        """Interfaces enslaved to the bridge: the bond (if any), then the plain ports."""
        return ((self.bond.name,) if self.bond else ()) + self.ports

    @property
    def links(self) -> tuple[str, ...]:
        """Every interface the change touches: bridge, bond, bond members, ports."""
        members = self.bond.members if self.bond else ()
        return (self.bridge, *self.bridge_ports, *members)

    @property
    def virtual(self) -> tuple[str, ...]:
        """Interfaces the change creates (removed by a rollback if they did not exist before)."""
        return (self.bridge,) + ((self.bond.name,) if self.bond else ())

    def stamp(self, backend: str) -> dict[str, Any]:
        """What a committed change records on the host; a re-run with an equal stamp changes nothing."""
        data = asdict(self)
        data.pop("extra")
        # Timers do not change the network: editing them must not re-apply it.
        data.pop("rollback_seconds")
        data.pop("verify_seconds")
        # As the host's JSON file reads back (tuples become lists), so the two compare equal.
        result: dict[str, Any] = json.loads(json.dumps({"backend": backend, **data}, sort_keys=True))
        return result


# --- validation ---------------------------------------------------------------------------------


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


def _bond(value: Any) -> Bond | None:
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
    name = _ifname("kvm_bond.name", value.get("name", "bond0"))
    mode = value.get("mode", "active-backup")
    if mode not in BOND_MODES:
        raise BridgeSpecError(f"kvm_bond.mode={mode!r}: expected one of {', '.join(BOND_MODES)}")
    members = [
        _ifname("kvm_bond.members", member) for member in _list("kvm_bond.members", value.get("members"))
    ]
    if not members:
        raise BridgeSpecError("kvm_bond.members: a bond needs at least one member interface")
    if len(set(members)) != len(members):
        raise BridgeSpecError(f"kvm_bond.members={members!r}: an interface is listed twice")
    policy = value.get("xmit_hash_policy")
    if policy is not None:
        if policy not in XMIT_HASH_POLICIES:
            raise BridgeSpecError(
                f"kvm_bond.xmit_hash_policy={policy!r}: expected one of {', '.join(XMIT_HASH_POLICIES)}"
            )
        if mode not in ("802.3ad", "balance-xor", "balance-tlb", "balance-alb"):
            raise BridgeSpecError(f"kvm_bond.xmit_hash_policy: not used by mode {mode}")
    rate = value.get("lacp_rate")
    if rate is not None:
        if rate not in LACP_RATES:
            raise BridgeSpecError(f"kvm_bond.lacp_rate={rate!r}: expected slow or fast")
        if mode != "802.3ad":
            raise BridgeSpecError("kvm_bond.lacp_rate: only used by mode 802.3ad")
    miimon = _int("kvm_bond.miimon", value.get("miimon", 100), 0, 60000)
    return Bond(name, mode, tuple(members), miimon, policy, rate)


def parse_spec(values: Mapping[str, Any]) -> BridgeSpec:
    """A ``BridgeSpec`` from the ``kvm_bridge*``/``kvm_bond`` data keys; ``BridgeSpecError`` names the key."""
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

    raw = values.get("kvm_bridge_address")
    if raw is None or raw == "":
        raise BridgeSpecError(
            "kvm_bridge_address: required, 'dhcp' or an IPv4 address with prefix (10.10.5.2/24)"
        )
    dhcp = raw == "dhcp"
    address = None
    network = None
    if not dhcp:
        if not isinstance(raw, str) or not re.fullmatch(r"[0-9.]{7,15}/[0-9]{1,2}", raw):
            raise BridgeSpecError(
                f"kvm_bridge_address={raw!r}: expected 'dhcp' or address/prefix (10.10.5.2/24)"
            )
        try:
            interface = ipaddress.IPv4Interface(raw)
        except ValueError:
            raise BridgeSpecError(f"kvm_bridge_address={raw!r}: not a valid IPv4 address/prefix") from None
        if (
            interface.network.prefixlen < 1
            or interface.ip
            in (
                interface.network.network_address,
                interface.network.broadcast_address,
            )
            and interface.network.prefixlen < 31
        ):
            raise BridgeSpecError(f"kvm_bridge_address={raw!r}: not a host address of its network")
        address = interface.with_prefixlen
        network = interface.network

    gateway = values.get("kvm_bridge_gateway")
    if gateway in (None, ""):
        gateway = None
    else:
        if dhcp:
            raise BridgeSpecError(
                "kvm_bridge_gateway: only with a static kvm_bridge_address (DHCP sets the route)"
            )
        gateway = _ipv4("kvm_bridge_gateway", gateway)
        assert network is not None
        if ipaddress.IPv4Address(gateway) not in network:
            raise BridgeSpecError(f"kvm_bridge_gateway={gateway}: not inside {network} (kvm_bridge_address)")
    dns = [
        _ipv4("kvm_bridge_dns", server) for server in _list("kvm_bridge_dns", values.get("kvm_bridge_dns"))
    ]
    search = _list("kvm_bridge_dns_search", values.get("kvm_bridge_dns_search"))
    for domain in search:
        if not _DOMAIN.fullmatch(domain):
            raise BridgeSpecError(f"kvm_bridge_dns_search: {domain!r} is not a domain name")
    stp = _bool("kvm_bridge_stp", values.get("kvm_bridge_stp", False))
    rollback = _int(
        "kvm_bridge_rollback_seconds",
        values.get("kvm_bridge_rollback_seconds", 120),
        MIN_ROLLBACK_SECONDS,
        MAX_ROLLBACK_SECONDS,
    )
    verify = _int(
        "kvm_bridge_verify_seconds", values.get("kvm_bridge_verify_seconds", 30), MIN_VERIFY_SECONDS, 600
    )
    if verify + ROLLBACK_MARGIN > rollback:
        raise BridgeSpecError(
            f"kvm_bridge_rollback_seconds={rollback}: must be at least kvm_bridge_verify_seconds ({verify}) "
            f"+ {ROLLBACK_MARGIN}, or the rollback fires while the host is being verified"
        )
    return BridgeSpec(
        bridge=bridge,
        ports=tuple(ports),
        bond=bond,
        dhcp=dhcp,
        address=address,
        gateway=gateway,
        dns=tuple(dns),
        dns_search=tuple(search),
        stp=stp,
        rollback_seconds=rollback,
        verify_seconds=verify,
    )


def choose_backend(
    requested: Any, distro: Mapping[str, Any], tools: Callable[[], Sequence[str]]
) -> tuple[str | None, str]:
    """(backend, reason) for a host; backend None means unsupported (reason says why).

    ``tools`` lists the network tools installed on the host; it is only called for plain Debian.
    """
    if requested not in ("auto", *BACKENDS, "iproute2"):
        raise BridgeSpecError(
            f"kvm_bridge_backend={requested!r}: expected auto, {', '.join(BACKENDS)} "
            "(or iproute2, runtime only)"
        )
    if requested != "auto":
        return str(requested), "kvm_bridge_backend"
    meta = distro.get("release_meta") or {}
    ids = {str(meta.get("ID", "")).lower(), *str(meta.get("ID_LIKE", "")).lower().split()}
    name = str(distro.get("name") or "").lower()
    major = distro.get("major")
    if "ubuntu" in ids or name == "ubuntu":
        return "netplan", "Ubuntu uses netplan"
    if "debian" in ids or name == "debian":
        if "netplan" in tools():
            return "netplan", "netplan is installed"
        return (
            None,
            "Debian without netplan (ifupdown is not managed); install netplan.io or set kvm_bridge_backend",
        )
    if ids & {"rhel", "centos", "rocky", "almalinux"} or name in {
        "redhat",
        "centos",
        "rocky linux",
        "almalinux",
    }:
        if isinstance(major, int) and major <= 7:
            return "ifcfg", f"{name or 'RHEL'} {major} uses ifcfg files and the network service"
        return "networkmanager", "RHEL 8 and later use NetworkManager"
    return None, f"no bridge backend for distribution {name or 'unknown'!r}; set kvm_bridge_backend"


# --- per-family rendering -----------------------------------------------------------------------

HEADER = "Managed by kvm-qemu (deploys/bridge.py); a re-run rewrites this file."


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


def render_netplan(spec: BridgeSpec) -> str:
    """``/etc/netplan/60-kvm-qemu-bridge.yaml``: ports and members lose their own addressing."""
    lines = [f"# {HEADER}", "network:", "  version: 2", "  ethernets:"]
    members = spec.bond.members if spec.bond else ()
    for device in (*members, *spec.ports):
        lines += [f'    "{device}":', "      dhcp4: false", "      dhcp6: false"]
    if spec.bond:
        bond = spec.bond
        lines += ["  bonds:", f'    "{bond.name}":', f"      interfaces: {_yaml_list(bond.members)}"]
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
    lines += ["  bridges:", f'    "{spec.bridge}":', f"      interfaces: {_yaml_list(spec.bridge_ports)}"]
    lines += _netplan_addressing(spec, "      ")
    lines += [
        "      parameters:",
        f"        stp: {'true' if spec.stp else 'false'}",
        "        forward-delay: 0",
    ]
    return "\n".join(lines) + "\n"


def _ifcfg(pairs: Sequence[tuple[str, str]]) -> str:
    lines = [f"# {HEADER}"]
    for key, value in pairs:
        # Values are validated names/addresses; only a value with a space needs the shell-style quotes.
        lines.append(f'{key}="{value}"' if " " in value else f"{key}={value}")
    return "\n".join(lines) + "\n"


def render_ifcfg(spec: BridgeSpec) -> dict[str, str]:
    """``ifcfg-<device>`` files (path -> content) for the legacy network service (RHEL/CentOS 7)."""
    files: dict[str, str] = {}
    bridge: list[tuple[str, str]] = [
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
        bridge += [("IPADDR", ip), ("PREFIX", prefix)]
    if spec.gateway:
        bridge.append(("GATEWAY", spec.gateway))
    for index, server in enumerate(spec.dns, start=1):
        bridge.append((f"DNS{index}", server))
    if spec.dns_search:
        bridge.append(("DOMAIN", " ".join(spec.dns_search)))
    files[f"{IFCFG_DIR}/ifcfg-{spec.bridge}"] = _ifcfg(bridge)
    if spec.bond:
        bond = spec.bond
        options = [f"mode={bond.mode}", f"miimon={bond.miimon}"]
        if bond.xmit_hash_policy:
            options.append(f"xmit_hash_policy={bond.xmit_hash_policy}")
        if bond.lacp_rate:
            options.append(f"lacp_rate={bond.lacp_rate}")
        files[f"{IFCFG_DIR}/ifcfg-{bond.name}"] = _ifcfg(
            [
                ("DEVICE", bond.name),
                ("NAME", bond.name),
                ("TYPE", "Bond"),
                ("BONDING_MASTER", "yes"),
                ("BONDING_OPTS", " ".join(options)),
                ("ONBOOT", "yes"),
                ("NM_CONTROLLED", "no"),
                ("BOOTPROTO", "none"),
                ("BRIDGE", spec.bridge),
            ]
        )
        for member in bond.members:
            files[f"{IFCFG_DIR}/ifcfg-{member}"] = _ifcfg(
                [
                    ("DEVICE", member),
                    ("NAME", member),
                    ("TYPE", "Ethernet"),
                    ("ONBOOT", "yes"),
                    ("NM_CONTROLLED", "no"),
                    ("BOOTPROTO", "none"),
                    ("MASTER", bond.name),
                    ("SLAVE", "yes"),
                ]
            )
    for port in spec.ports:
        files[f"{IFCFG_DIR}/ifcfg-{port}"] = _ifcfg(
            [
                ("DEVICE", port),
                ("NAME", port),
                ("TYPE", "Ethernet"),
                ("ONBOOT", "yes"),
                ("NM_CONTROLLED", "no"),
                ("BOOTPROTO", "none"),
                ("BRIDGE", spec.bridge),
            ]
        )
    return files


def nm_profiles(spec: BridgeSpec) -> list[str]:
    """Names of the NetworkManager profiles the change owns, master first."""
    names = [f"kvm-{spec.bridge}"]
    if spec.bond:
        names.append(f"kvm-{spec.bond.name}")
        names += [f"kvm-{spec.bond.name}-{member}" for member in spec.bond.members]
    names += [f"kvm-{spec.bridge}-{port}" for port in spec.ports]
    return names


def _cmd(*args: str) -> str:
    """One shell command line; every argument goes through pyinfra's quoting."""
    return StringCommand(*(QuoteString(arg) for arg in args)).get_raw_value()


# Port profiles win autoconnect over a distribution's own profile for the same device at boot.
NM_PORT_PRIORITY = "10"


def render_nmcli(spec: BridgeSpec) -> list[list[str]]:
    """The ``nmcli`` argument lists that create the bridge (and bond) profiles and activate them."""
    bridge = f"kvm-{spec.bridge}"
    commands: list[list[str]] = []
    add = [
        "nmcli",
        "connection",
        "add",
        "save",
        "yes",
        "type",
        "bridge",
        "con-name",
        bridge,
        "ifname",
        spec.bridge,
    ]
    add += ["connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes"]
    add += ["bridge.stp", "yes" if spec.stp else "no", "bridge.forward-delay", "0"]
    if spec.dhcp:
        add += ["ipv4.method", "auto"]
    else:
        assert spec.address is not None
        add += ["ipv4.method", "manual", "ipv4.addresses", spec.address]
        if spec.gateway:
            add += ["ipv4.gateway", spec.gateway]
    if spec.dns:
        add += ["ipv4.dns", ",".join(spec.dns)]
    if spec.dns_search:
        add += ["ipv4.dns-search", ",".join(spec.dns_search)]
    add += ["ipv6.method", "ignore"]
    commands.append(add)
    if spec.bond:
        bond = spec.bond
        options = [f"mode={bond.mode}", f"miimon={bond.miimon}"]
        if bond.xmit_hash_policy:
            options.append(f"xmit_hash_policy={bond.xmit_hash_policy}")
        if bond.lacp_rate:
            options.append(f"lacp_rate={bond.lacp_rate}")
        commands.append(
            ["nmcli", "connection", "add", "save", "yes", "type", "bond", "con-name", f"kvm-{bond.name}"]
            + ["ifname", bond.name, "bond.options", ",".join(options)]
            + ["connection.master", spec.bridge, "connection.slave-type", "bridge"]
            + ["connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes"]
        )
        for member in bond.members:
            commands.append(
                ["nmcli", "connection", "add", "save", "yes", "type", "ethernet"]
                + ["con-name", f"kvm-{bond.name}-{member}", "ifname", member]
                + ["connection.master", bond.name, "connection.slave-type", "bond"]
                + ["connection.autoconnect", "yes", "connection.autoconnect-priority", NM_PORT_PRIORITY]
            )
    for port in spec.ports:
        commands.append(
            ["nmcli", "connection", "add", "save", "yes", "type", "ethernet"]
            + ["con-name", f"kvm-{spec.bridge}-{port}", "ifname", port]
            + ["connection.master", spec.bridge, "connection.slave-type", "bridge"]
            + ["connection.autoconnect", "yes", "connection.autoconnect-priority", NM_PORT_PRIORITY]
        )
    commands.append(["nmcli", "--wait", "60", "connection", "up", "id", bridge])
    return commands


def render_iproute2(spec: BridgeSpec) -> list[str]:
    """Runtime-only ``ip`` command lines that build the same bridge (nothing persists)."""
    bridge = spec.bridge
    lines: list[str] = []

    def ensure(device: str, *kind: str) -> None:
        create = _cmd("ip", "link", "add", "name", device, *kind)
        lines.append(f"ip link show dev {_cmd(device)} >/dev/null 2>&1 || {create}")

    if spec.bond:
        bond = spec.bond
        ensure(bond.name, "type", "bond", "mode", bond.mode)
        lines.append(_cmd("ip", "link", "set", "dev", bond.name, "type", "bond", "miimon", str(bond.miimon)))
        for member in bond.members:
            lines += [
                _cmd("ip", "-4", "addr", "flush", "dev", member, "scope", "global"),
                _cmd("ip", "link", "set", "dev", member, "down"),
                _cmd("ip", "link", "set", "dev", member, "master", bond.name),
                _cmd("ip", "link", "set", "dev", member, "up"),
            ]
    ensure(bridge, "type", "bridge")
    stp = "1" if spec.stp else "0"
    lines.append(
        _cmd("ip", "link", "set", "dev", bridge, "type", "bridge", "stp_state", stp, "forward_delay", "0")
    )
    for port in spec.bridge_ports:
        lines += [
            _cmd("ip", "-4", "addr", "flush", "dev", port, "scope", "global"),
            _cmd("ip", "link", "set", "dev", port, "master", bridge),
            _cmd("ip", "link", "set", "dev", port, "up"),
        ]
    lines.append(_cmd("ip", "-4", "addr", "flush", "dev", bridge, "scope", "global"))
    if spec.address:
        lines.append(_cmd("ip", "addr", "add", spec.address, "dev", bridge))
    lines.append(_cmd("ip", "link", "set", "dev", bridge, "up"))
    if spec.gateway:
        lines.append(_cmd("ip", "route", "replace", "default", "via", spec.gateway, "dev", bridge))
    return lines


# --- the switch script --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What differs between backends: files installed, files snapshotted, apply and re-apply steps."""

    files: dict[str, tuple[str, str]]  # path -> (content, mode)
    snapshot: list[str]  # sh words (globs of constant paths) whose matches are saved and restored
    apply: list[str]  # shell lines run after the files are installed
    reapply: list[str]  # shell lines run after the old files are restored
    unapply: list[str] = field(default_factory=list)  # shell lines run before the old files are restored
    save_extra: list[str] = field(default_factory=list)  # shell lines run at stage (after the snapshot)


def family(spec: BridgeSpec, backend: str, root: str = "") -> Family:
    """The backend's part of the switch; ``root`` prefixes every file path (tests use a scratch tree)."""
    if backend == "netplan":
        return Family(
            files={root + NETPLAN_FILE: (render_netplan(spec), "600")},
            snapshot=[_cmd(root + NETPLAN_FILE)],
            apply=["timeout 120 netplan generate", "timeout 120 netplan apply"],
            reapply=["timeout 120 netplan apply"],
        )
    if backend == "ifcfg":
        files = {root + path: (text, "644") for path, text in render_ifcfg(spec).items()}
        restart = (
            "if [ -d /run/systemd/system ]; then timeout 120 systemctl restart network.service; "
            "else timeout 120 /etc/init.d/network restart; fi"
        )
        return Family(
            files=files, snapshot=[_cmd(path) for path in files], apply=[restart], reapply=[restart]
        )
    if backend == "networkmanager":
        profiles = " ".join(_cmd(name) for name in nm_profiles(spec))
        delete_ours = (
            f'for c in {profiles}; do if nmcli -g NAME connection show | grep -qxF -- "$c"; then '
            'timeout 60 nmcli connection delete id "$c"; fi; done'
        )
        links = " ".join(_cmd(name) for name in spec.links)
        return Family(
            files={},
            # Where NetworkManager stores profiles: keyfiles, and ifcfg files on RHEL 8.
            snapshot=[
                _cmd(root + "/etc/NetworkManager/system-connections") + "/*",
                _cmd(root + IFCFG_DIR) + "/ifcfg-*",
            ],
            save_extra=[
                # The profiles active on the touched devices, brought up again by a rollback.
                "nmcli -g UUID,DEVICE connection show --active | while IFS=: read -r u d; do "
                f'for l in {links}; do [ "$d" = "$l" ] && printf \'%s\\n\' "$u"; done; done '
                '> "$D/old/nm-active"'
            ],
            apply=[delete_ours] + ["timeout 120 " + _cmd(*args) for args in render_nmcli(spec)],
            # Deleting our profiles removes their files too: before the saved ones are put back.
            unapply=[delete_ours],
            reapply=[
                "timeout 60 nmcli connection reload",
                'while IFS= read -r u; do timeout 90 nmcli --wait 60 connection up uuid "$u"; '
                'done < "$D/old/nm-active"',
            ],
        )
    if backend == "iproute2":
        return Family(files={}, snapshot=[], apply=render_iproute2(spec), reapply=[])
    raise BridgeSpecError(f"kvm_bridge_backend={backend!r}: expected one of {', '.join(BACKENDS)}")


_SCRIPT = r"""#!/bin/sh
# kvm-qemu bridge switch (generated by deploys/bridge.py): stage | arm | apply | commit | rollback.
# Between arm and commit a timer runs "rollback", which restores the saved configuration unless
# "commit" ran first. stage, commit and rollback take $D/lock, so the two can never both happen.
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 077
D={state_dir}
STAMP={stamp}
UNIT={unit}
ROLLBACK_SECONDS={rollback_seconds}
TIMER={timer}
APPLY_WAIT={apply_wait}
LINKS={links}
VIRTUAL={virtual}
TAB=$(printf '\t')

log() {{ printf '%s %s\n' "$(date '+%F %T')" "$*" >>"$D/log"; }}
fail() {{ log "error: $*"; printf 'kvm-qemu bridge: %s\n' "$*" >&2; exit 1; }}
state() {{ cat "$D/state" 2>/dev/null || echo none; }}
set_state() {{
  printf '%s\n' "$1" >"$D/state.new" && chmod 644 "$D/state.new" && mv -f "$D/state.new" "$D/state"
  log "state $1"
}}
lock() {{ exec 9>>"$D/lock" && flock -w "$1" 9 || fail "$D/lock is held by another run"; }}
master_of() {{ ip -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }}
addrs_of() {{ ip -o -4 addr show dev "$1" scope global 2>/dev/null | awk '{{print $4}}'; }}

snapshot_list() {{
  for f in {snapshot}; do [ -f "$f" ] && printf '%s\n' "$f"; done
  return 0
}}

write_new() {{
{write_new}
}}

install_new() {{
{install_new}
}}

family_apply() {{
{apply}
}}

family_unapply() {{
{unapply}
}}

family_reapply() {{
{reapply}
}}

save_extra() {{
{save_extra}
}}

restore_files() {{
  # Files the change installed or that now match the snapshot are removed unless saved; saved ones come back.
  {{ cut -f2 "$D/new/list"; snapshot_list; }} | sort -u | while IFS= read -r f; do
    grep -qxF -- "$f" "$D/old/files" || rm -f -- "$f"
  done
  while IFS="$TAB" read -r n f; do cp -p -- "$D/old/$n" "$f" || log "cannot restore $f"; done < "$D/old/list"
}}

restore_runtime() {{
  # The kernel state saved at stage: whatever the tools did, the old links, masters, addresses and
  # default route come back, so the host is reachable the way it was.
  for i in $VIRTUAL; do
    existed=$(awk -v i="$i" '$1 == i {{ print "yes" }}' "$D/old/links")
    if [ -z "$existed" ] && ip link show dev "$i" >/dev/null 2>&1; then
      ip link delete dev "$i" && log "removed $i"
    fi
  done
  while read -r i m up; do
    ip link show dev "$i" >/dev/null 2>&1 || {{ log "$i is gone; not restored"; continue; }}
    cur=$(master_of "$i")
    if [ "$m" = - ]; then
      [ -z "$cur" ] || ip link set dev "$i" nomaster
    elif [ "$cur" != "$m" ]; then
      ip link set dev "$i" master "$m"
    fi
  done < "$D/old/links"
  while read -r i m up; do
    ip link show dev "$i" >/dev/null 2>&1 || continue
    for a in $(addrs_of "$i"); do grep -qxF "$a" "$D/old/addr.$i" || ip addr del "$a" dev "$i"; done
    cur=$(addrs_of "$i")
    while read -r a; do
      printf '%s\n' $cur | grep -qxF "$a" || ip addr add "$a" dev "$i"
    done < "$D/old/addr.$i"
    [ "$up" = up ] && ip link set dev "$i" up
  done < "$D/old/links"
  if [ -s "$D/old/route" ] && [ "$(ip -4 route show default)" != "$(cat "$D/old/route")" ]; then
    while read -r r; do ip route replace $r; done < "$D/old/route"
  fi
  return 0
}}

disarm() {{
  if [ -f "$D/timer.pid" ]; then
    pid=$(cat "$D/timer.pid")
    case "$pid" in ''|*[!0-9]*) ;; *)
      if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$D/switch.sh"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      fi;;
    esac
    rm -f "$D/timer.pid"
  fi
  if [ -f "$D/timer.unit" ]; then
    systemctl stop "$UNIT.timer" >/dev/null 2>&1
    rm -f "$D/timer.unit"
  fi
  return 0
}}

do_stage() {{
  lock 30
  case "$(state)" in
    armed|applying|applied) fail "a change is pending (state $(state)); its rollback is still armed";;
  esac
  rm -rf "$D/old" "$D/new" "$D/stamp" "$D/timer.pid" "$D/timer.unit"
  mkdir -m 700 "$D/old" "$D/new" || fail "cannot create $D/old"
  : >"$D/old/list"; : >"$D/old/links"; : >"$D/new/list"
  n=0
  snapshot_list > "$D/old/files"
  while IFS= read -r f; do
    n=$((n + 1)); cp -p -- "$f" "$D/old/$n" || fail "cannot save $f"
    printf '%s\t%s\n' "$n" "$f" >>"$D/old/list"
  done < "$D/old/files"
  for i in $LINKS; do
    ip link show dev "$i" >/dev/null 2>&1 || continue
    m=$(master_of "$i")
    if ip -o link show dev "$i" | grep -q '[<,]UP[,>]'; then up=up; else up=down; fi
    printf '%s %s %s\n' "$i" "${{m:--}}" "$up" >>"$D/old/links"
    addrs_of "$i" > "$D/old/addr.$i"
  done
  ip -4 route show default | sed 's/ linkdown//; s/ dead//' > "$D/old/route"
  save_extra || fail "cannot save the active configuration"
  write_new || fail "cannot write the new files"
  printf '%s\n' {stamp_b64} | base64 -d > "$D/stamp" || fail "cannot write $D/stamp"
  set_state staged
  echo "staged: saved $(wc -l < "$D/old/list") file(s) and the state of: $LINKS"
}}

do_arm() {{
  lock 30
  [ "$(state)" = staged ] || fail "arm: state is $(state), expected staged"
  if [ "$TIMER" = auto ] && [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
    systemctl reset-failed "$UNIT.service" "$UNIT.timer" >/dev/null 2>&1
    systemd-run --quiet --unit="$UNIT" --on-active="$ROLLBACK_SECONDS" --timer-property=AccuracySec=1s \
      /bin/sh "$D/switch.sh" rollback || fail "systemd-run could not arm the rollback timer"
    echo "$UNIT" > "$D/timer.unit"
    how="systemd timer $UNIT.timer"
  else
    setsid sh -c 'sleep "$1"; exec sh "$2" rollback' sh "$ROLLBACK_SECONDS" "$D/switch.sh" \
      </dev/null >>"$D/log" 2>&1 9>&- &
    echo $! > "$D/timer.pid"
    how="background timer (pid $!)"
  fi
  set_state armed
  echo "armed: $how restores the old configuration in $ROLLBACK_SECONDS s unless committed"
}}

do_apply_worker() {{
  lock 30
  [ "$(state)" = applying ] || fail "apply: state is $(state), expected applying"
  if install_new && log "installed the new files" && family_apply >>"$D/log" 2>&1; then
    set_state applied
  else
    log "apply failed; rolling back now"
    family_unapply >>"$D/log" 2>&1; restore_files; family_reapply >>"$D/log" 2>&1
    restore_runtime >>"$D/log" 2>&1
    disarm
    set_state failed
  fi
}}

do_apply() {{
  [ "$(state)" = armed ] || fail "apply: state is $(state), expected armed"
  set_state applying
  # Detached: the change may cut the SSH session that started it.
  setsid sh "$D/switch.sh" apply-worker </dev/null >>"$D/log" 2>&1 9>&- &
  waited=0
  while [ "$waited" -lt "$APPLY_WAIT" ]; do
    case "$(state)" in
      applied) echo "applied"; return 0;;
      failed) tail -n 20 "$D/log" >&2; fail "apply failed; the old configuration was restored";;
    esac
    sleep 1; waited=$((waited + 1))
  done
  fail "apply still running after $APPLY_WAIT s; the rollback timer restores the old configuration"
}}

do_commit() {{
  lock 60
  [ "$(state)" = applied ] || fail "commit: state is $(state), expected applied (rolled back already?)"
  mkdir -p -- "$(dirname -- "$STAMP")" && cp -- "$D/stamp" "$STAMP.new" && chmod 644 "$STAMP.new" \
    && mv -f -- "$STAMP.new" "$STAMP" || fail "cannot write $STAMP"
  set_state committed
  disarm
  rm -rf "$D/old" "$D/new"
  echo "committed; rollback disarmed"
}}

do_rollback() {{
  lock 300
  case "$(state)" in
    armed|applying|applied) ;;
    *) log "rollback: state $(state), nothing to do"; exit 0;;
  esac
  log "rollback: restoring the old configuration"
  family_unapply >>"$D/log" 2>&1
  restore_files
  family_reapply >>"$D/log" 2>&1 || log "re-apply of the old files failed; restoring the kernel state anyway"
  restore_runtime >>"$D/log" 2>&1
  rm -f "$D/timer.pid" "$D/timer.unit"
  set_state rolledback
}}

case "${{1:-}}" in
  stage) do_stage;;
  arm) do_arm;;
  apply) do_apply;;
  apply-worker) do_apply_worker;;
  commit) do_commit;;
  rollback) do_rollback;;
  *) fail "usage: switch.sh stage|arm|apply|commit|rollback";;
esac
"""


def apply_seconds(spec: BridgeSpec) -> int:
    """How long the apply step may take: apply, verification and commit must all fit before the
    rollback fires (parse_spec guarantees at least 10 s)."""
    return spec.rollback_seconds - spec.verify_seconds - 10


def _indent(lines: Sequence[str]) -> str:
    return "\n".join(f"  {line}" for line in lines) if lines else "  :"


def switch_script(
    spec: BridgeSpec,
    backend: str,
    state_dir: str = STATE_DIR,
    stamp: str = STAMP,
    apply_wait: int | None = None,
    root: str = "",
    timer: str = "auto",
) -> str:
    """The host-side switch: one POSIX sh script, run as ``sh switch.sh <step>``.

    ``apply_wait`` (seconds the apply step waits for the detached apply) defaults to ``apply_seconds``.
    ``timer``: ``auto`` arms a systemd timer where systemd runs, else a detached process; ``process``
    always uses the detached process (it lives in the caller's network namespace, a systemd unit
    would not).
    """
    if timer not in ("auto", "process"):
        raise ValueError(f"timer={timer!r}: expected auto or process")
    fam = family(spec, backend, root)
    write_new = []
    install_new = []
    for index, (path, (content, mode)) in enumerate(sorted(fam.files.items()), start=1):
        encoded = base64.b64encode(content.encode()).decode()
        write_new.append(f"printf '%s\\n' {_cmd(encoded)} | base64 -d > \"$D/new/{index}\" || return 1")
        write_new.append(f"printf '%s\\t%s\\n' {index} {_cmd(path)} >>\"$D/new/list\"")
        staged = f"{path}.kvm-qemu-new"
        install_new.append(
            f'cp -- "$D/new/{index}" {_cmd(staged)} && {_cmd("chmod", str(mode), staged)} '
            f"&& {_cmd('mv', '-f', '--', staged, path)} || return 1"
        )
    stamp_json = json.dumps(spec.stamp(backend), sort_keys=True)
    return _SCRIPT.format(
        state_dir=_cmd(state_dir),
        stamp=_cmd(stamp),
        unit=_cmd(ROLLBACK_UNIT),
        rollback_seconds=spec.rollback_seconds,
        timer=timer,
        apply_wait=apply_seconds(spec) if apply_wait is None else apply_wait,
        links=_cmd(" ".join(spec.links)),
        virtual=_cmd(" ".join(spec.virtual)),
        snapshot=" ".join(fam.snapshot) if fam.snapshot else "",
        write_new=_indent(write_new),
        install_new=_indent(install_new),
        apply=_indent([f"{line} || return 1" for line in fam.apply]),
        unapply=_indent(fam.unapply),
        reapply=_indent(fam.reapply),
        save_extra=_indent(fam.save_extra),
        stamp_b64=_cmd(base64.b64encode(stamp_json.encode()).decode()),
    )


# --- comparing with the host --------------------------------------------------------------------


def differences(spec: BridgeSpec, backend: str, current: Mapping[str, Any]) -> list[str]:
    """Why the host needs the change; empty when the committed stamp and the live links match."""
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
