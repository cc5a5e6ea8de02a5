"""The snapshot workflow as a ``@deploy`` function (``deploys/snapshot.py`` runs it).

Without ``snapshot``: every VM's manifest ``snapshots`` are created where missing (never deleted).
With ``snapshot=NAME``: ``snapshot_action`` create (default), revert or delete NAME on every VM of the
manifest on the hosts of the run (narrow it with pyinfra's ``--limit``).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from deploys._settings import SettingError, is_hypervisor, seconds, setting, vmspecs
from operations import snapshot
from operations.util.snapshot_plan import ACTIONS, valid_name


def _choice() -> tuple[str | None, str]:
    name = setting("snapshot")
    action = str(setting("snapshot_action")).strip().lower()
    if action not in ACTIONS:
        raise SettingError(f"snapshot_action={action!r}: expected one of {', '.join(ACTIONS)}")
    if name is None or name == "":
        if action != "create":
            raise SettingError(f"snapshot_action={action}: needs --data snapshot=NAME")
        return None, action
    if not valid_name(str(name)):
        raise SettingError(
            f"snapshot={name!r}: a snapshot name uses letters, digits, '.', '_' and '-', starts with a "
            "letter or digit, and has at most 63 characters"
        )
    return str(name), action


@deploy("Snapshots")
def manage_snapshots() -> None:
    name, action = _choice()
    if not is_hypervisor():
        return
    specs = vmspecs()
    common: dict[str, Any] = {"uri": setting("libvirt_uri"), "command_timeout": seconds("command_timeout")}
    if name is None:
        snapshot.domain_snapshots(
            name="Snapshots of the manifest",
            snapshots={s.name: list(s.snapshots) for s in specs if s.snapshots},
            **common,
        )
    elif action == "revert":
        snapshot.domain_snapshot_reverted(
            name=f"Revert VMs to snapshot {name}",
            domains=[s.name for s in specs],
            snapshot_name=name,
            **common,
        )
    else:
        listed = [s.name for s in specs if name in s.snapshots]
        if action == "delete" and listed:
            logger.warning(
                f"{host.print_prefix}snapshot {name} is in the manifest of {', '.join(listed)}: "
                "deploys/snapshot.py without snapshot= creates it again"
            )
        snapshot.domain_snapshots(
            name=f"{'Create' if action == 'create' else 'Delete'} snapshot {name}",
            snapshots={s.name: [name] for s in specs},
            present=action == "create",
            **common,
        )
