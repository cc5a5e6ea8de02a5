"""The wanted host bridge (and bond), validated: ``BridgeSpec``, and where the switch keeps its files.

How the pieces fit: ``deploys/network.py`` builds a ``BridgeSpec`` from host data with
``bridge_validate.parse_spec`` and picks a backend with ``bridge_backend.choose_backend``; the
operation (``operations/bridge.py``) compares the host with it (``bridge_diff``), renders the switch
script (``bridge_switch``: the file ``operations/scripts/bridge-switch.sh`` plus the backend's part,
``bridge_family``, built from the ``bridge_render_*`` renderers) and drives it through its five steps
(stage, arm, apply, verify, commit).

Backends (``kvm_bridge_backend``; ``auto`` picks by distribution):

- ``netplan`` (Ubuntu and derivatives; Debian where netplan is installed): one owned file,
  ``/etc/netplan/60-kvm-qemu-bridge.yaml``, then ``netplan apply``.
- ``networkmanager`` (RHEL/CentOS/Rocky/Alma 8 and later): ``nmcli`` profiles named ``kvm-<device>``.
- ``ifcfg`` (RHEL/CentOS 7, where the legacy network service and ifcfg files are the norm):
  ``ifcfg-<device>`` files with ``NM_CONTROLLED=no``, then ``systemctl restart network``.
- ``iproute2``: runtime only, nothing survives a reboot; never chosen by ``auto``. For hosts whose
  persistent configuration comes from elsewhere, and to exercise the switch for real where no
  network manager runs (network namespaces).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from inventories import defaults

STATE_DIR = defaults.BRIDGE_STATE_DIR
STAMP = defaults.BRIDGE_STAMP
NETPLAN_FILE = "/etc/netplan/60-kvm-qemu-bridge.yaml"
IFCFG_DIR = "/etc/sysconfig/network-scripts"
ROLLBACK_UNIT = "kvm-qemu-bridge-rollback"
BACKENDS = ("netplan", "networkmanager", "ifcfg")
# States of the switch in which a rollback is still armed: a new change must wait for it.
PENDING_STATES = ("armed", "applying", "applied")
# First line of every configuration file the change owns.
FILE_HEADER = "Managed by kvm-qemu (deploys/bridge.py); a re-run rewrites this file."


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

    @property
    def options(self) -> list[str]:
        """The bonding driver's options (``mode=... miimon=...``), as ifcfg and nmcli spell them."""
        options = [f"mode={self.mode}", f"miimon={self.miimon}"]
        if self.xmit_hash_policy:
            options.append(f"xmit_hash_policy={self.xmit_hash_policy}")
        if self.lacp_rate:
            options.append(f"lacp_rate={self.lacp_rate}")
        return options


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
