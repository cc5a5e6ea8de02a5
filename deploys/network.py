"""Bridge networking on hypervisors (the original scripts' ``br0``, optionally over a bond), behind a
dead-man switch.

``deploys/bridge.py`` calls ``bridge_network()`` on every ``kvm_hosts`` host. Each parameter left at
None comes from host/group data or ``--data`` (the ``kvm_bridge*``/``kvm_bond`` keys of
docs/settings.md). All data is validated while the deploy loads, before any host is touched; a host
whose distribution has no backend fails on its own. The work is ``operations.bridge.bridge_network``;
the files and commands per backend are rendered by ``operations.util.bridge_*`` (start at
``bridge_spec``).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand
from pyinfra.api.deploy import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import server

from deploys._settings import SettingError, setting
from facts.bridge import BridgeState
from operations import bridge as bridge_ops
from operations.util.bridge_backend import choose_backend
from operations.util.bridge_spec import STAMP, STATE_DIR, BridgeSpecError
from operations.util.bridge_validate import parse_spec


@deploy("Bridge networking")
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
    values = {
        "kvm_bridge": setting("kvm_bridge", bridge),
        "kvm_bridge_ports": setting("kvm_bridge_ports", ports),
        "kvm_bond": setting("kvm_bond", bond),
        "kvm_bridge_address": setting("kvm_bridge_address", address),
        "kvm_bridge_gateway": setting("kvm_bridge_gateway", gateway),
        "kvm_bridge_dns": setting("kvm_bridge_dns", dns),
        "kvm_bridge_dns_search": setting("kvm_bridge_dns_search", dns_search),
        "kvm_bridge_stp": setting("kvm_bridge_stp", stp),
        "kvm_bridge_backend": setting("kvm_bridge_backend", backend),
        "kvm_bridge_rollback_seconds": setting("kvm_bridge_rollback_seconds", rollback_seconds),
        "kvm_bridge_verify_seconds": setting("kvm_bridge_verify_seconds", verify_seconds),
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
