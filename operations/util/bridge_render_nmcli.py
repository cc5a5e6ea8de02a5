"""The NetworkManager backend: ``nmcli`` profiles named ``kvm-<device>``, as argument lists."""

from __future__ import annotations

from operations.util.bridge_spec import Bond, BridgeSpec

# Port profiles win autoconnect over a distribution's own profile for the same device at boot.
NM_PORT_PRIORITY = "10"
_ADD = ["nmcli", "connection", "add", "save", "yes", "type"]


def nm_profiles(spec: BridgeSpec) -> list[str]:
    """Names of the NetworkManager profiles the change owns, master first."""
    names = [f"kvm-{spec.bridge}"]
    if spec.bond:
        names.append(f"kvm-{spec.bond.name}")
        names += [f"kvm-{spec.bond.name}-{member}" for member in spec.bond.members]
    names += [f"kvm-{spec.bridge}-{port}" for port in spec.ports]
    return names


def _bridge_add(spec: BridgeSpec) -> list[str]:
    add = [*_ADD, "bridge", "con-name", f"kvm-{spec.bridge}", "ifname", spec.bridge]
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
    return add


def _bond_adds(bond: Bond, bridge: str) -> list[list[str]]:
    commands = [
        [*_ADD, "bond", "con-name", f"kvm-{bond.name}"]
        + ["ifname", bond.name, "bond.options", ",".join(bond.options)]
        + ["connection.master", bridge, "connection.slave-type", "bridge"]
        + ["connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes"]
    ]
    for member in bond.members:
        commands.append(_port_add(f"kvm-{bond.name}-{member}", member, bond.name, "bond"))
    return commands


def _port_add(profile: str, device: str, master: str, kind: str) -> list[str]:
    return (
        [*_ADD, "ethernet"]
        + ["con-name", profile, "ifname", device]
        + ["connection.master", master, "connection.slave-type", kind]
        + ["connection.autoconnect", "yes", "connection.autoconnect-priority", NM_PORT_PRIORITY]
    )


def render_nmcli(spec: BridgeSpec) -> list[list[str]]:
    """The ``nmcli`` argument lists that create the bridge (and bond) profiles and activate them."""
    commands = [_bridge_add(spec)]
    if spec.bond:
        commands += _bond_adds(spec.bond, spec.bridge)
    for port in spec.ports:
        commands.append(_port_add(f"kvm-{spec.bridge}-{port}", port, spec.bridge, "bridge"))
    commands.append(["nmcli", "--wait", "60", "connection", "up", "id", f"kvm-{spec.bridge}"])
    return commands
