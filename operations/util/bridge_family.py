"""What differs between backends in the switch: files installed and saved, and the apply steps.

``family(spec, backend)`` gives the backend's part; ``bridge_switch`` puts it in front of the one
switch script every backend shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from operations.util.bridge_render_ifcfg import render_ifcfg
from operations.util.bridge_render_iproute2 import render_iproute2
from operations.util.bridge_render_netplan import render_netplan
from operations.util.bridge_render_nmcli import nm_profiles, render_nmcli
from operations.util.bridge_spec import BACKENDS, IFCFG_DIR, NETPLAN_FILE, BridgeSpec, BridgeSpecError
from operations.util.shell_quote import shell_line


@dataclass(frozen=True)
class Family:
    """What differs between backends: files installed, files snapshotted, apply and re-apply steps."""

    files: dict[str, tuple[str, str]]  # path -> (content, mode)
    snapshot: list[str]  # sh words (globs of constant paths) whose matches are saved and restored
    apply: list[str]  # shell lines run after the files are installed
    reapply: list[str]  # shell lines run after the old files are restored
    unapply: list[str] = field(default_factory=list)  # shell lines run before the old files are restored
    save_extra: list[str] = field(default_factory=list)  # shell lines run at stage (after the snapshot)


def _netplan(spec: BridgeSpec, root: str) -> Family:
    return Family(
        files={root + NETPLAN_FILE: (render_netplan(spec), "600")},
        snapshot=[shell_line(root + NETPLAN_FILE)],
        apply=["timeout 120 netplan generate", "timeout 120 netplan apply"],
        reapply=["timeout 120 netplan apply"],
    )


def _ifcfg(spec: BridgeSpec, root: str) -> Family:
    files = {root + path: (text, "644") for path, text in render_ifcfg(spec).items()}
    restart = (
        "if [ -d /run/systemd/system ]; then timeout 120 systemctl restart network.service; "
        "else timeout 120 /etc/init.d/network restart; fi"
    )
    return Family(
        files=files, snapshot=[shell_line(path) for path in files], apply=[restart], reapply=[restart]
    )


def _networkmanager(spec: BridgeSpec, root: str) -> Family:
    profiles = " ".join(shell_line(name) for name in nm_profiles(spec))
    delete_ours = (
        f'for c in {profiles}; do if nmcli -g NAME connection show | grep -qxF -- "$c"; then '
        'timeout 60 nmcli connection delete id "$c"; fi; done'
    )
    links = " ".join(shell_line(name) for name in spec.links)
    return Family(
        files={},
        # Where NetworkManager stores profiles: keyfiles, and ifcfg files on RHEL 8.
        snapshot=[
            shell_line(root + "/etc/NetworkManager/system-connections") + "/*",
            shell_line(root + IFCFG_DIR) + "/ifcfg-*",
        ],
        save_extra=[
            # The profiles active on the touched devices, brought up again by a rollback.
            "nmcli -g UUID,DEVICE connection show --active | while IFS=: read -r u d; do "
            f'for l in {links}; do [ "$d" = "$l" ] && printf \'%s\\n\' "$u"; done; done '
            '> "$D/old/nm-active"'
        ],
        apply=[delete_ours] + ["timeout 120 " + shell_line(*args) for args in render_nmcli(spec)],
        # Deleting our profiles removes their files too: before the saved ones are put back.
        unapply=[delete_ours],
        reapply=[
            "timeout 60 nmcli connection reload",
            'while IFS= read -r u; do timeout 90 nmcli --wait 60 connection up uuid "$u"; '
            'done < "$D/old/nm-active"',
        ],
    )


def _iproute2(spec: BridgeSpec, root: str) -> Family:
    return Family(files={}, snapshot=[], apply=render_iproute2(spec), reapply=[])


_FAMILIES: dict[str, Callable[[BridgeSpec, str], Family]] = {
    "netplan": _netplan,
    "ifcfg": _ifcfg,
    "networkmanager": _networkmanager,
    "iproute2": _iproute2,
}


def family(spec: BridgeSpec, backend: str, root: str = "") -> Family:
    """The backend's part of the switch; ``root`` prefixes every file path (tests use a scratch tree)."""
    build = _FAMILIES.get(backend)
    if build is None:
        raise BridgeSpecError(f"kvm_bridge_backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    return build(spec, root)
