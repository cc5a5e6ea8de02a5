"""The cluster network: one network namespace holding a bridge with the management node's address.

Every hypervisor's libvirtd runs inside this namespace, so the taps of its VMs land on the bridge,
and the management node's dnsmasq serves DHCP and DNS on the bridge address. The cluster's
addresses (10.10.5.0/24) exist only inside the namespace, never in the root namespace: the
controller reaches guests with an SSH ProxyCommand that enters it (`ip netns exec NS nc %h %p`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from .proc import SandboxError, run

NETNS = "kvm-qemu-sandbox"
NETNS_DIR = Path("/run/netns")
BRIDGE = "br-cluster"
NETWORK = ipaddress.ip_network("10.10.5.0/24")
MGMT_IP = "10.10.5.1"
# Dynamic addresses for DHCP clients without a reservation; reservations may use any address of
# the network, and the manifests of the tests and the demo use addresses from this range.
DHCP_RANGE = "10.10.5.10,10.10.5.250,255.255.255.0,1h"
BUSYBOX = "/usr/bin/busybox"


def netns_path(name: str = NETNS) -> Path:
    return NETNS_DIR / name


def exists(name: str = NETNS) -> bool:
    return netns_path(name).exists()


def in_use(name: str = NETNS) -> bool:
    """True while any process runs inside the namespace."""
    return bool(run(["ip", "netns", "pids", name], check=False).stdout.strip())


def create(name: str = NETNS) -> list[str]:
    """Create the namespace with lo and the bridge up; returns paths created outside the state dir."""
    if exists(name):
        raise SandboxError(
            f"network namespace {name} already exists; run down first (or `ip netns del {name}`)"
        )
    created = [] if NETNS_DIR.exists() else [str(NETNS_DIR)]
    run(["ip", "netns", "add", name])
    try:
        ns = ["ip", "-n", name]
        run([*ns, "link", "set", "lo", "up"])
        # No STP, no forwarding delay: a VM's tap forwards from its first frame (its DHCP discover).
        run([*ns, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        run([*ns, "address", "add", f"{MGMT_IP}/{NETWORK.prefixlen}", "dev", BRIDGE])
        run([*ns, "link", "set", BRIDGE, "up"])
    except BaseException:
        delete(name)
        raise
    return created


def delete(name: str = NETNS) -> None:
    """Remove the namespace (its bridge and every tap go with it); no-op when it is gone."""
    if exists(name):
        run(["ip", "netns", "delete", name], check=False)
    if exists(name):
        raise SandboxError(f"could not delete network namespace {name}")


def remove_netns_dir() -> None:
    """Undo what the first `ip netns add` did to /run/netns (a self bind mount), when it is empty."""
    if NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
        run(["umount", str(NETNS_DIR)], check=False)
        try:
            NETNS_DIR.rmdir()
        except OSError:
            pass


def proxy_command(name: str = NETNS) -> str:
    """The ProxyCommand that carries an SSH connection into the namespace."""
    return f"ip netns exec {name} {BUSYBOX} nc %h %p"


def ssh_config(name: str = NETNS) -> str:
    """An ssh_config for the guests: every host is reached through the cluster namespace."""
    return f"Host *\n    ProxyCommand {proxy_command(name)}\n"


def addresses_in_root_namespace() -> list[str]:
    """Addresses or routes of the cluster network in the root namespace (must always be empty)."""
    found = []
    for what in ("address", "route"):
        out = run(["ip", "-4", "-o", what, "show"], check=False).stdout
        found.extend(
            line.strip()
            for line in out.splitlines()
            if any(
                ipaddress.ip_address(word.split("/")[0]) in NETWORK
                for word in line.split()
                if _is_ipv4(word.split("/")[0])
            )
        )
    return found


def _is_ipv4(word: str) -> bool:
    try:
        ipaddress.IPv4Address(word)
    except ValueError:
        return False
    return True
