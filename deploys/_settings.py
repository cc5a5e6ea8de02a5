"""Settings every workflow deploy reads: host/group data or ``--data key=value``, with documented defaults."""

from __future__ import annotations

import math
from typing import Any

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from inventories.manifest_model import VmSpec
from operations._virsh import DEFAULT_COPY_TIMEOUT, DEFAULT_TIMEOUT

DEFAULTS: dict[str, Any] = {
    "libvirt_uri": "qemu:///system",
    "kvm_primary_pool": "default",
    "kvm_primary_storage": "/data01/primary",
    "kvm_secondary_pool": "secondary",
    "kvm_secondary_storage": "/secondary",
    "keep_disks": False,
    "force": False,
    "stop_timeout": 60,
    "vcpu_allocation_ratio": 4.0,
    "memory_allocation_ratio": 1.0,
    "overcommit": None,
    "command_timeout": DEFAULT_TIMEOUT,
    "copy_timeout": DEFAULT_COPY_TIMEOUT,
    "xml_dir": "xml",
    "dnsmasq_conf": "/etc/dnsmasq.conf",
    "dnsmasq_pid_file": "/run/dnsmasq/dnsmasq.pid",
    "dhcp_hostsfile": "/etc/kvm-qemu/dnsmasq/dhcp-hosts",
    "dns_addn_hosts": "/etc/kvm-qemu/dnsmasq/hosts",
    "dhcp_range": None,
    "mgmt_sudo": False,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(PyinfraError, ValueError):
    """Invalid host data; raised while a deploy loads, before anything runs on any host.

    A ``PyinfraError``, so pyinfra prints the one-line message (which names the key), not a traceback.
    """


def setting(key: str, defaults: dict[str, Any] = DEFAULTS) -> Any:
    return host.data.get(key, defaults[key])


def flag(key: str, defaults: dict[str, Any] = DEFAULTS) -> bool:
    """A boolean setting; ``--data keep_disks=true`` arrives as a string."""
    value = setting(key, defaults)
    if isinstance(value, str):
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise SettingError(f"{key}={value!r}: expected true or false")
    return bool(value)


def number(key: str, positive: bool = False) -> float:
    """A finite number (``nan`` and ``inf`` are refused); ``positive``: greater than zero."""
    value = setting(key)
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{key}={value!r}: expected a number") from None
    if not math.isfinite(result):
        raise SettingError(f"{key}={value!r}: expected a finite number")
    if positive and result <= 0:
        raise SettingError(f"{key}={value!r}: expected a number greater than 0")
    return result


def seconds(key: str) -> int:
    """A time limit in whole seconds, at least 1 (``--data command_timeout=30``)."""
    value = setting(key)
    try:
        result = int(str(value).strip())
    except (TypeError, ValueError):
        result = 0
    if result < 1 or isinstance(value, bool):
        raise SettingError(f"{key}={value!r}: expected a whole number of seconds, at least 1")
    return result


def vmspecs() -> list[VmSpec]:
    """The VMs the manifest puts on this host (empty on hosts that are not hypervisors)."""
    return [VmSpec(**spec) for spec in host.data.get("kvm_vmspecs", [])]


def all_vmspecs() -> list[VmSpec]:
    """Every VM of the manifest (group data of the management node)."""
    return [VmSpec(**spec) for spec in host.data.get("kvm_all_vmspecs", [])]


def is_hypervisor() -> bool:
    return "kvm_hosts" in host.groups


def is_mgmt() -> bool:
    return "mgmt" in host.groups
