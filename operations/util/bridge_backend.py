"""``choose_backend``: which tool manages a host's network (``kvm_bridge_backend``, ``auto``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from operations.util.bridge_spec import BACKENDS, BridgeSpecError

RHEL_IDS = {"rhel", "centos", "rocky", "almalinux"}
RHEL_NAMES = {"redhat", "centos", "rocky linux", "almalinux"}


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
    if ids & RHEL_IDS or name in RHEL_NAMES:
        if isinstance(major, int) and major <= 7:
            return "ifcfg", f"{name or 'RHEL'} {major} uses ifcfg files and the network service"
        return "networkmanager", "RHEL 8 and later use NetworkManager"
    return None, f"no bridge backend for distribution {name or 'unknown'!r}; set kvm_bridge_backend"
