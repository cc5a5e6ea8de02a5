"""Data keys and defaults of the host setup deploys (kvm_host, nfs_server, nfs_client, mgmt_server).

Every key can be set as host/group data or with ``--data key=value``; list keys also accept a
comma-separated string and dict keys a JSON object, since ``--data`` values arrive as strings.
Keys shared with the workflow deploys take their default from ``deploys._settings`` so the two
never disagree about where storage or the dnsmasq files live.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from pyinfra import host

from deploys import _settings
from deploys._settings import DEFAULTS as _WORKFLOW_DEFAULTS
from deploys._settings import SettingError

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

KVM_HOST_DEFAULTS: dict[str, Any] = {
    # Accounts appended to libvirt + kvm (+ libvirt-qemu on Debian/Ubuntu); missing ones are created.
    "kvm_users": [],
    "kvm_primary_storage": _WORKFLOW_DEFAULTS["kvm_primary_storage"],
    "kvm_secondary_storage": _WORKFLOW_DEFAULTS["kvm_secondary_storage"],
    # libguestfs-tools (virt-sysprep, virt-customize) pulls in a kernel and an appliance; opt in.
    "kvm_guestfs_tools": False,
    "kvm_extra_packages": [],
    "libvirt_service": "libvirtd",
    # Address VNC/SPICE consoles listen on; reach them through an SSH tunnel.
    "kvm_graphics_listen": "127.0.0.1",
    # TLS listener (port 16514) with client certificates; the three paths are controller-side files.
    "libvirt_listen_tls": False,
    "libvirt_tls_cert": None,
    "libvirt_tls_key": None,
    "libvirt_tls_cacert": None,
    "libvirt_tls_allowed_dn_list": [],
    # Written to /etc/sysctl.d/90-kvm-qemu.conf; empty = no file, no live change.
    "kvm_sysctl": {},
    # Allow qemu to use the storage paths under AppArmor (Debian/Ubuntu with /etc/apparmor.d only).
    "kvm_apparmor": True,
}

NFS_DEFAULTS: dict[str, Any] = {
    "nfs_export": "/secondary",
    # Hostname/address the clients mount from; None = the NFS server host's ssh_hostname (or name).
    "nfs_server": None,
    # Client specs allowed in the export; None = every kvm_hosts host (ssh_hostname or name).
    "nfs_clients": None,
    "nfs_export_options": ["rw", "sync", "no_subtree_check"],
    "nfs_no_root_squash": False,
    "nfs_export_owner": "root",
    "nfs_export_group": "root",
    # None = 1777 with root_squash (client root, i.e. libvirtd, is squashed to nobody and must still
    # create volumes; the sticky bit stops users deleting each other's files), 0755 without.
    "nfs_export_mode": None,
    "kvm_secondary_storage": _WORKFLOW_DEFAULTS["kvm_secondary_storage"],
    # Extra mount options; must be spelled as /proc/mounts shows them or every run remounts.
    "nfs_mount_options": [],
}

MGMT_DEFAULTS: dict[str, Any] = {
    "dns_domain": None,
    "dns_upstream_servers": [],
    # None = no DHCP; else the dnsmasq dhcp-range value, e.g. "10.10.5.100,10.10.5.200,255.255.255.0,12h".
    "dhcp_range": _WORKFLOW_DEFAULTS["dhcp_range"],
    "dhcp_router": None,
    "dhcp_lease_max": 150,
    # None = the management node's ssh_hostname when that is an IP address; dnsmasq never listens on
    # every network.
    "dns_listen_address": None,
    # None = no PXE/TFTP.
    "tftp_root": None,
    "dnsmasq_conf": _WORKFLOW_DEFAULTS["dnsmasq_conf"],
    "dnsmasq_pid_file": _WORKFLOW_DEFAULTS["dnsmasq_pid_file"],
    "dhcp_hostsfile": _WORKFLOW_DEFAULTS["dhcp_hostsfile"],
    "dns_addn_hosts": _WORKFLOW_DEFAULTS["dns_addn_hosts"],
}

ALL_DEFAULTS: dict[str, Any] = {**KVM_HOST_DEFAULTS, **NFS_DEFAULTS, **MGMT_DEFAULTS}

# Paths reach server.mount, which does not quote its arguments, and config files that would need
# their own quoting rules: keep them to characters that are safe everywhere.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
# Hostnames, addresses, CIDRs and the wildcards exports(5) allows for client specs.
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.:_*?/\[\]-]+$")
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9_.=:,-]+$")


# One error type and one lookup for all deploys; these bind them to the host setup defaults.
HostDataError = SettingError


def setting(key: str) -> Any:
    return _settings.setting(key, ALL_DEFAULTS)


def flag(key: str) -> bool:
    return _settings.flag(key, ALL_DEFAULTS)


def str_list(key: str) -> list[str]:
    value = setting(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise HostDataError(f"{key}={value!r}: expected a list")


def str_dict(key: str) -> dict[str, str]:
    value = setting(key)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise HostDataError(f"{key}: expected a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise HostDataError(f"{key}={value!r}: expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def safe_path(key: str) -> str:
    value = setting(key)
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise HostDataError(f"{key}={value!r}: expected an absolute path of letters, digits and ._/+-")
    return value.rstrip("/") or "/"


def safe_host(value: str, key: str) -> str:
    if not isinstance(value, str) or not _SAFE_HOST.fullmatch(value):
        raise HostDataError(f"{key}: {value!r} is not a hostname, address or network")
    return value


def safe_options(values: list[str], key: str) -> list[str]:
    for value in values:
        if not _SAFE_OPTION.fullmatch(value):
            raise HostDataError(f"{key}: option {value!r} has characters outside [A-Za-z0-9_.=:,-]")
    return values


def dns_listen_address() -> str:
    """The address dnsmasq binds on the management node (the current host).

    ``dns_listen_address``, else the node's ``ssh_hostname`` when that is an IP address. Without
    either, the data is refused: serving DNS (and DHCP/TFTP) on every network is never a default.
    """
    value = setting("dns_listen_address")
    key = "dns_listen_address"
    if not value:
        value, key = host.data.get("ssh_hostname"), "ssh_hostname"
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            raise HostDataError(
                f"dns_listen_address is not set and the management node {host.name} has no IP address "
                f"to bind (ssh_hostname={value!r}): set dns_listen_address to the management node's "
                "cluster-network address; dnsmasq never serves every network by default"
            ) from None
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        raise HostDataError(f"{key}={value!r}: expected an IP address for dnsmasq to listen on") from None
    if address.is_unspecified or address.is_multicast:
        raise HostDataError(
            f"{key}={value!r}: dnsmasq must listen on one address of the management node, "
            "not on every network"
        )
    return str(address)


def os_family(distro: dict[str, Any]) -> str | None:
    """``debian`` (apt) or ``rhel`` (dnf) from the LinuxDistribution fact; None = unsupported.

    ID/ID_LIKE from os-release cover derivatives (Pop!_OS says ``ubuntu debian``, Rocky and Alma
    say ``rhel centos fedora``); Fedora itself is not a target, its package set differs.
    """
    meta = distro.get("release_meta") or {}
    ids = {str(meta.get("ID", "")).lower(), *str(meta.get("ID_LIKE", "")).lower().split()}
    name = str(distro.get("name") or "").lower()
    if ids & {"debian", "ubuntu"} or name in {"debian", "ubuntu"}:
        return "debian"
    if ids & {"rhel", "centos", "rocky", "almalinux"} or name in {
        "redhat",
        "centos",
        "rocky linux",
        "almalinux",
    }:
        return "rhel"
    return None


def distro_label(distro: dict[str, Any]) -> str:
    name = distro.get("name") or "unknown"
    major = distro.get("major")
    return f"{name} {major}" if major is not None else str(name)


def group_hosts(group: str) -> list[Any]:
    return list(host.inventory.get_group(group, default=[]))


def address_of(member: Any) -> str:
    """How other machines reach an inventory host: its ssh_hostname, else its inventory name."""
    return str(member.data.get("ssh_hostname") or member.name)


def nfs_server_hosts() -> list[Any]:
    """The ``nfs_server`` group if the inventory has one, else the management node."""
    return group_hosts("nfs_server") or group_hosts("mgmt")
