"""Deploy-side helpers built on the one settings resolver (``inventories/settings.py``).

The table of every setting, ``setting()`` and the typed accessors live in ``inventories/settings.py``
and are re-exported here for the deploys; this module adds what only deploys need: the manifest's
vmspecs of a host, group membership, host addresses, the allocation ratios (with the deprecated
``overcommit``) and the address dnsmasq binds. The settings reference is docs/settings.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyinfra import host

from inventories.manifest_model import VmSpec
from inventories.settings import (
    DEFAULTS,
    SETTINGS,
    TABLE,
    SettingError,
    connection_value,
    flag,
    given,
    inventory_value,
    is_set,
    number,
    safe_host,
    safe_options,
    safe_path,
    seconds,
    setting,
    str_dict,
    str_list,
    whole,
)
from operations.util.output import log

__all__ = [
    "DEFAULTS",
    "SETTINGS",
    "TABLE",
    "SettingError",
    "connection_value",
    "flag",
    "given",
    "inventory_value",
    "is_set",
    "number",
    "safe_host",
    "safe_options",
    "safe_path",
    "seconds",
    "setting",
    "str_dict",
    "str_list",
    "whole",
]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _specs(key: str, member: Any) -> list[VmSpec]:
    specs = list(inventory_value(key, member) or [])
    for spec in specs:
        if not isinstance(spec, VmSpec):
            raise SettingError(f"{key}: expected VmSpec objects (inventories/manifest.py), got {spec!r}")
    return specs


def vmspecs(member: Any = None) -> list[VmSpec]:
    """The VMs the manifest puts on this host (or ``member``); empty on hosts that are not hypervisors."""
    return _specs("kvm_vmspecs", member)


def all_vmspecs() -> list[VmSpec]:
    """Every VM of the manifest (group data of the management node)."""
    return _specs("kvm_all_vmspecs", None)


def is_hypervisor() -> bool:
    return "kvm_hosts" in host.groups


def is_mgmt() -> bool:
    return "mgmt" in host.groups


def dns_listen_address() -> str:
    """The address dnsmasq binds on the management node (the current host).

    ``dns_listen_address``, else the node's ``ssh_hostname`` when that is an IP address. Without
    either, the data is refused: serving DNS (and DHCP/TFTP) on every network is never a default.
    """
    value = setting("dns_listen_address")
    key = "dns_listen_address"
    if not value:
        value, key = connection_value("ssh_hostname"), "ssh_hostname"
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            raise SettingError(
                f"dns_listen_address is not set and the management node {host.name} has no IP address "
                f"to bind (ssh_hostname={value!r}): set dns_listen_address to the management node's "
                "cluster-network address; dnsmasq never serves every network by default"
            ) from None
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        raise SettingError(f"{key}={value!r}: expected an IP address for dnsmasq to listen on") from None
    if address.is_unspecified or address.is_multicast:
        raise SettingError(
            f"{key}={value!r}: dnsmasq must listen on one address of the management node, "
            "not on every network"
        )
    return str(address)


def os_family(distro: Mapping[str, Any]) -> str | None:
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


def distro_label(distro: Mapping[str, Any]) -> str:
    name = distro.get("name") or "unknown"
    major = distro.get("major")
    return f"{name} {major}" if major is not None else str(name)


def group_hosts(group: str) -> list[Any]:
    return list(host.inventory.get_group(group, default=[]))


def address_of(member: Any) -> str:
    """How other machines reach an inventory host: its ssh_hostname, else its inventory name."""
    return str(connection_value("ssh_hostname", member) or member.name)


def nfs_server_hosts() -> list[Any]:
    """The ``nfs_server`` group if the inventory has one, else the management node."""
    return group_hosts("nfs_server") or group_hosts("mgmt")


def allocation_ratios() -> tuple[float, float]:
    """``(vcpu_allocation_ratio, memory_allocation_ratio)``: finite and greater than 0, else SettingError.

    ``overcommit`` is the deprecated single ratio: when set it stands for whichever of the two ratios is
    not set itself, with a warning.
    """
    vcpu = number("vcpu_allocation_ratio", positive=True)
    memory = number("memory_allocation_ratio", positive=True)
    if setting("overcommit") is not None:
        legacy = number("overcommit", positive=True)
        keys = ("vcpu_allocation_ratio", "memory_allocation_ratio")
        # Only the ratios the operator did not set: inside a deploy, host data answers with defaults.
        replaced = [key for key in keys if not is_set(key)]
        if "vcpu_allocation_ratio" in replaced:
            vcpu = legacy
        if "memory_allocation_ratio" in replaced:
            memory = legacy
        if replaced:
            log(
                f"overcommit is deprecated: it sets {' and '.join(replaced)} to {legacy:g}; "
                "use those keys instead",
                "warning",
            )
    return vcpu, memory
