"""The data keys every deploy reads, their defaults, and the one ``setting()`` that looks them up.

Each key can be set as host/group data or with ``--data key=value``. ``DEFAULTS`` is handed to pyinfra
as the ``data_defaults`` of every deploy function (``deploys/vms.py``, ``deploys/hosts.py``), so inside a
deploy ``host.data.<key>`` already falls back to it; ``setting()`` adds the same fallback outside a
deploy. List keys also accept a comma-separated string and dict keys a JSON object, since ``--data``
values arrive as strings. Paths and the libvirt URI come from ``inventories/defaults.py``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from inventories import defaults
from inventories.manifest_model import VmSpec
from operations._output import log

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

WORKFLOW_DEFAULTS: dict[str, Any] = {
    "libvirt_uri": defaults.LIBVIRT_URI,
    "kvm_primary_pool": defaults.PRIMARY_POOL,
    "kvm_primary_storage": defaults.PRIMARY_STORAGE,
    "kvm_secondary_pool": defaults.SECONDARY_POOL,
    "kvm_secondary_storage": defaults.SECONDARY_STORAGE,
    "keep_disks": False,
    "force": False,
    "stop_timeout": 60,
    "vcpu_allocation_ratio": 4.0,
    "memory_allocation_ratio": 1.0,
    "overcommit": None,
    "command_timeout": defaults.COMMAND_TIMEOUT,
    "copy_timeout": defaults.COPY_TIMEOUT,
    "xml_dir": "xml",
    # deploys/dumpxml.py: these domains instead of the manifest's VMs (e.g. a base VM).
    "xml_domains": [],
    "dnsmasq_conf": defaults.DNSMASQ_CONF,
    "dnsmasq_pid_file": defaults.DNSMASQ_PID_FILE,
    "dhcp_hostsfile": defaults.DHCP_HOSTSFILE,
    "dns_addn_hosts": defaults.DNS_ADDN_HOSTS,
    "dhcp_range": None,
    "mgmt_sudo": False,
    # Owner tag of this manifest's reservations (None = derived from the manifest path, deploys/_owner.py).
    "dhcp_owner": None,
    # deploys/prune.py: also remove stale reservations without an owner tag (written before owner tags).
    "prune_untagged": False,
    # Readiness (deploys/wait.py): seconds until a VM without a lease or an SSH answer counts as not
    # ready, dnsmasq's lease database, and the port probed.
    "wait_timeout": 300,
    "dhcp_leasefile": defaults.DHCP_LEASEFILE,
    "wait_ssh_port": 22,
}
KVM_HOST_DEFAULTS: dict[str, Any] = {
    # Accounts appended to libvirt + kvm (+ libvirt-qemu on Debian/Ubuntu); missing ones are created.
    "kvm_users": [],
    "kvm_primary_storage": WORKFLOW_DEFAULTS["kvm_primary_storage"],
    "kvm_secondary_storage": WORKFLOW_DEFAULTS["kvm_secondary_storage"],
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
    "kvm_secondary_storage": WORKFLOW_DEFAULTS["kvm_secondary_storage"],
    # Extra mount options; must be spelled as /proc/mounts shows them or every run remounts.
    "nfs_mount_options": [],
}

MGMT_DEFAULTS: dict[str, Any] = {
    "dns_domain": None,
    "dns_upstream_servers": [],
    # None = no DHCP; else the dnsmasq dhcp-range value, e.g. "10.10.5.100,10.10.5.200,255.255.255.0,12h".
    "dhcp_range": WORKFLOW_DEFAULTS["dhcp_range"],
    "dhcp_router": None,
    "dhcp_lease_max": 150,
    # None = the management node's ssh_hostname when that is an IP address; dnsmasq never listens on
    # every network.
    "dns_listen_address": None,
    # None = no PXE/TFTP.
    "tftp_root": None,
    "dnsmasq_conf": WORKFLOW_DEFAULTS["dnsmasq_conf"],
    "dnsmasq_pid_file": WORKFLOW_DEFAULTS["dnsmasq_pid_file"],
    "dhcp_hostsfile": WORKFLOW_DEFAULTS["dhcp_hostsfile"],
    "dns_addn_hosts": WORKFLOW_DEFAULTS["dns_addn_hosts"],
}

# Every key of every deploy: the data_defaults of all deploy functions.
# deploys/installer.py: the installer VM a base image is made with.
INSTALLER_DEFAULTS: dict[str, Any] = {
    "installer_name": "centos7",
    "installer_iso": None,
    "installer_iso_pool": None,  # default: installer_pool
    "installer_pool": "secondary",
    "installer_boot_size_gib": 40,
    "installer_vcpus": 2,
    "installer_memory_mib": 2048,
    "uefi": True,
    "console": True,
    "installer_graphics": "vnc",
    "installer_bridge": "br0",
    "installer_domain_type": "kvm",
}

# Moving VMs between hypervisors (deploys/placement.py: build and drain).
PLACEMENT_DEFAULTS: dict[str, Any] = {
    # Seconds one migration (or the offline copy of a VM's local disks) may take.
    "migrate_timeout": defaults.MIGRATE_TIMEOUT,
    # Per destination host: its libvirt as the source host reaches it
    # (default qemu+ssh://<ssh_user or root>@<ssh_hostname or name>/system).
    "migration_uri": None,
    # Per destination host: where its qemu listens for the migration stream (default: libvirt's choice).
    "migration_address": None,
    # Per destination host: pass --unsafe, for shared storage libvirt cannot recognise as such (the
    # preflight checks the cache mode of shared disks anyway).
    "migration_unsafe": False,
}

# deploys/snapshot.py, cloud-init seeds and clean clones.
SNAPSHOT_DEFAULTS: dict[str, Any] = {"snapshot": None, "snapshot_action": "create"}
SEED_DEFAULTS: dict[str, Any] = {"cloud_init_users": []}
SYSPREP_DEFAULTS: dict[str, Any] = {"sysprep": False}

DEFAULTS: dict[str, Any] = {
    **WORKFLOW_DEFAULTS,
    **KVM_HOST_DEFAULTS,
    **NFS_DEFAULTS,
    **MGMT_DEFAULTS,
    **INSTALLER_DEFAULTS,
    **SNAPSHOT_DEFAULTS,
    **SEED_DEFAULTS,
    **SYSPREP_DEFAULTS,
    **PLACEMENT_DEFAULTS,
}

# Paths reach server.mount, which does not quote its arguments, and config files that would need
# their own quoting rules: keep them to characters that are safe everywhere.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
# Hostnames, addresses, CIDRs and the wildcards exports(5) allows for client specs.
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.:_*?/\[\]-]+$")
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9_.=:,-]+$")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(PyinfraError, ValueError):
    """Invalid host data; raised while a deploy loads, before anything runs on any host.

    A ``PyinfraError``, so pyinfra prints the one-line message (which names the key), not a traceback.
    """


# Per host: the parameters of the deploy functions running now, innermost last (see ``given``).
_GIVEN: dict[str, list[dict[str, Any]]] = {}


@contextmanager
def given(values: dict[str, Any]) -> Iterator[None]:
    """A deploy function's parameters (data key -> value; None = not given) win over host data while
    its body runs on the current host."""
    stack = _GIVEN.setdefault(host.name, [])
    stack.append({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        stack.pop()


def setting(key: str) -> Any:
    """The value of data key ``key``: a deploy function's parameter, else host, group or ``--data``
    data, else its default in ``DEFAULTS``."""
    for layer in reversed(_GIVEN.get(host.name, [])):
        if key in layer:
            return layer[key]
    return host.data.get(key, DEFAULTS[key])


def flag(key: str) -> bool:
    """A boolean setting; ``--data keep_disks=true`` arrives as a string."""
    value = setting(key)
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


def _specs(key: str, data: Any) -> list[VmSpec]:
    specs = list(data.get(key) or [])
    for spec in specs:
        if not isinstance(spec, VmSpec):
            raise SettingError(f"{key}: expected VmSpec objects (inventories/manifest.py), got {spec!r}")
    return specs


def vmspecs(member: Any = None) -> list[VmSpec]:
    """The VMs the manifest puts on this host (or ``member``); empty on hosts that are not hypervisors."""
    return _specs("kvm_vmspecs", (member or host).data)


def all_vmspecs() -> list[VmSpec]:
    """Every VM of the manifest (group data of the management node)."""
    return _specs("kvm_all_vmspecs", host.data)


def is_hypervisor() -> bool:
    return "kvm_hosts" in host.groups


def is_mgmt() -> bool:
    return "mgmt" in host.groups

def str_list(key: str) -> list[str]:
    value = setting(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise SettingError(f"{key}={value!r}: expected a list")


def str_dict(key: str) -> dict[str, str]:
    value = setting(key)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingError(f"{key}: expected a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SettingError(f"{key}={value!r}: expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def safe_path(key: str) -> str:
    value = setting(key)
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise SettingError(f"{key}={value!r}: expected an absolute path of letters, digits and ._/+-")
    return value.rstrip("/") or "/"


def safe_host(value: str, key: str) -> str:
    if not isinstance(value, str) or not _SAFE_HOST.fullmatch(value):
        raise SettingError(f"{key}: {value!r} is not a hostname, address or network")
    return value


def safe_options(values: list[str], key: str) -> list[str]:
    for value in values:
        if not _SAFE_OPTION.fullmatch(value):
            raise SettingError(f"{key}: option {value!r} has characters outside [A-Za-z0-9_.=:,-]")
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
    return str(member.data.get("ssh_hostname") or member.name)


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
        replaced = [key for key in keys if host.data.get(key) is None]
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
