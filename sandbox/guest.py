"""Guest stand-ins: an SSH-reachable node with its own hostname, in place of a booted guest OS."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from .node import Mount, Node

GUEST_NETWORK = ipaddress.ip_network("127.0.3.0/24")
HOSTNAMECTL = Path("/usr/bin/hostnamectl")
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

# hostnamectl needs systemd-hostnamed over D-Bus, neither of which runs here. Guests get this
# stand-in (bound over /usr/bin/hostnamectl in their namespace only) so tools that prefer
# hostnamectl, such as pyinfra's server.hostname, behave as on a systemd guest.
HOSTNAMECTL_SHIM = """#!/bin/sh
# hostnamectl stand-in: keeps the kernel hostname and /etc/hostname in sync.
for arg do
    shift
    case "$arg" in --*) ;; *) set -- "$@" "$arg" ;; esac
done
command=${1:-status}
case "$command" in
    set-hostname|hostname)
        if [ -n "$2" ]; then
            hostname "$2" && printf '%s\\n' "$2" > /etc/hostname
        else
            hostname
        fi ;;
    status)
        echo " Static hostname: $(cat /etc/hostname)"
        echo "Transient hostname: $(hostname)" ;;
    *)
        echo "hostnamectl: '$command' is not supported here" >&2
        exit 1 ;;
esac
"""


def validate(guests: dict[str, str]) -> None:
    """Names must be valid hostnames and addresses distinct members of 127.0.3.0/24."""
    seen: set[str] = set()
    for name, address in guests.items():
        if not NAME_RE.match(name):
            raise ValueError(f"invalid guest name {name!r}")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise ValueError(f"invalid address {address!r} for guest {name}") from exc
        if ip not in GUEST_NETWORK or ip in (GUEST_NETWORK.network_address, GUEST_NETWORK.broadcast_address):
            raise ValueError(f"guest {name}: {address} is not a host address in {GUEST_NETWORK}")
        if address in seen:
            raise ValueError(f"address {address} is given to more than one guest")
        seen.add(address)


def prepare(node: Node, initial_hostname: str) -> None:
    """Private /etc/hostname (as a fresh clone of the base VM has), root home, hostnamectl shim."""
    node.private_file("/etc/hostname", "etc-hostname", f"{initial_hostname}\n")
    node.private_home()
    if HOSTNAMECTL.exists():
        shim = node.dir / "hostnamectl"
        shim.write_text(HOSTNAMECTL_SHIM)
        shim.chmod(0o755)
        node.mounts.append(Mount(str(shim), str(HOSTNAMECTL), is_file=True))
