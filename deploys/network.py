"""Bridge networking on hypervisors (the seed's ``br0``, optionally over a bond), behind a dead-man switch.

``deploys/bridge.py`` calls ``bridge_network()`` on every ``kvm_hosts`` host. Each parameter left at
None comes from host/group data or ``--data`` (keys in ``BRIDGE_DEFAULTS``). All data is validated
while the deploy loads, before any host is touched; a host whose distribution has no backend fails
on its own. The work is ``operations.bridge.bridge_network``; the files and commands per backend are
rendered by ``operations.util.bridge_*`` (start at ``bridge_spec``).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand
from pyinfra.api.deploy import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import server

from deploys._settings import SettingError
from facts.bridge import BridgeState
from operations import bridge as bridge_ops
from operations.util.bridge_backend import choose_backend
from operations.util.bridge_spec import STAMP, STATE_DIR, BridgeSpecError
from operations.util.bridge_validate import parse_spec

BRIDGE_DEFAULTS: dict[str, Any] = {
    # Bridge device the VMs' NICs attach to.
    "kvm_bridge": "br0",
    # Interfaces enslaved to the bridge directly (list, or "eth0,eth1" with --data).
    "kvm_bridge_ports": [],
    # None, or {"name": "bond0", "mode": "802.3ad", "members": [...], "miimon": 100,
    # "xmit_hash_policy": "layer3+4", "lacp_rate": "fast"}; the bond becomes a bridge port.
    "kvm_bond": None,
    # Required: "dhcp" or "10.10.5.2/24".
    "kvm_bridge_address": None,
    "kvm_bridge_gateway": None,
    "kvm_bridge_dns": [],
    "kvm_bridge_dns_search": [],
    "kvm_bridge_stp": False,
    # auto: netplan on Ubuntu (and Debian with netplan), networkmanager on RHEL 8+, ifcfg on RHEL/CentOS 7.
    "kvm_bridge_backend": "auto",
    # The host restores its old configuration this long after arming unless the change was committed.
    "kvm_bridge_rollback_seconds": 120,
    # How long the controller keeps trying new SSH connections after the change.
    "kvm_bridge_verify_seconds": 30,
}

# parameter -> data key
_PARAMETERS = {
    "bridge": "kvm_bridge",
    "ports": "kvm_bridge_ports",
    "bond": "kvm_bond",
    "address": "kvm_bridge_address",
    "gateway": "kvm_bridge_gateway",
    "dns": "kvm_bridge_dns",
    "dns_search": "kvm_bridge_dns_search",
    "stp": "kvm_bridge_stp",
    "backend": "kvm_bridge_backend",
    "rollback_seconds": "kvm_bridge_rollback_seconds",
    "verify_seconds": "kvm_bridge_verify_seconds",
}


@deploy("Bridge networking", data_defaults=BRIDGE_DEFAULTS)
def bridge_network(
    bridge: str | None = None,
    ports: list[str] | str | None = None,
    bond: dict[str, Any] | str | None = None,
    address: str | None = None,
    gateway: str | None = None,
    dns: list[str] | str | None = None,
    dns_search: list[str] | str | None = None,
    stp: bool | str | None = None,
    backend: str | None = None,
    rollback_seconds: int | str | None = None,
    verify_seconds: int | str | None = None,
    state_dir: str = STATE_DIR,
    stamp: str = STAMP,
    timer: str = "auto",
) -> None:
    """``state_dir``/``stamp``: where the switch works and the committed configuration is recorded;
    ``timer``: ``auto`` (systemd timer where systemd runs, else a detached process) or ``process``."""
    given = locals()
    values = {
        key: given[param] if given[param] is not None else host.data.get(key, BRIDGE_DEFAULTS[key])
        for param, key in _PARAMETERS.items()
    }
    try:
        spec = parse_spec(values)
        distro = host.get_fact(LinuxDistribution)
        chosen, reason = choose_backend(
            values["kvm_bridge_backend"],
            distro,
            lambda: host.get_fact(BridgeState, state_dir=state_dir, stamp=stamp).get("tools", []),
        )
    except BridgeSpecError as exc:
        raise SettingError(f"{host.name}: {exc}") from None
    if chosen is None:
        message = f"kvm-qemu: {host.name}: {reason}"
        # Raising would abort every host; a failing command fails this one only.
        server.shell(
            name="Bridge networking: no backend for this host",
            commands=[StringCommand("echo", QuoteString(message), ">&2", "&&", "exit", "1")],
        )
        return
    bridge_ops.bridge_network(
        name=f"Bridge {spec.bridge} ({chosen}) behind a {spec.rollback_seconds} s rollback",
        spec=spec,
        backend=chosen,
        state_dir=state_dir,
        stamp=stamp,
        timer=timer,
    )
