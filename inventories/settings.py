"""Every setting of kvm-qemu: the one table (key, default, type, meaning) and the one resolver.

A setting is a data key an operator may give per host, per group or with ``--data key=value``. Every
deploy reads it through ``setting(key)`` or a typed accessor (``flag``, ``number``, ``seconds``,
``str_list``, ``str_dict``, ``safe_path``), which look in this order:

1. the call argument: ``setting("force", force)``, or the parameters a deploy function registered for
   its body with ``given({...})`` (None = not given);
2. the operator's data: ``--data`` overrides, host data, group data, the inventory's global data;
3. ``data_defaults`` of a caller's own ``@deploy`` wrapping ours (pyinfra's deploy data), if any;
4. the default in ``TABLE``.

``is_set(key)`` says whether the key came from 1 or 2, i.e. whether the operator chose the value (even
one equal to the default): pyinfra's ``host.data.get(key)`` cannot say so inside a
``@deploy(data_defaults=...)``, which is how ``overcommit`` was once ignored in every deploy.
``setting(key, member=other_host)`` reads another inventory host's setting (2, then 4).

Nothing else reads host data for a setting. Data that is not a setting has its own named reader here:
``connection_value`` (pyinfra's connection data such as ``ssh_hostname``/``ssh_user``) and
``inventory_value`` (what the inventory files generate from the manifest: ``kvm_vmspecs``,
``kvm_all_vmspecs``, ``kvm_vmspec``). ``python -m inventories.settings`` prints docs/settings.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from copy import copy
from dataclasses import dataclass
from typing import Any

import gevent.local
from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import HostData

from inventories import defaults


class SettingError(PyinfraError, ValueError):
    """Invalid host data; raised while a deploy loads, before anything runs on any host.

    A ``PyinfraError``, so pyinfra prints the one-line message (which names the key), not a traceback.
    """


# Types of setting: how a value is written (``--data`` values arrive as strings).
KINDS: dict[str, str] = {
    "text": "a string",
    "flag": "true or false (also yes/no, on/off, 1/0)",
    "seconds": "a whole number of seconds, at least 1",
    "number": "a finite number",
    "whole": "a whole number",
    "list": "a list; with `--data` a comma-separated string",
    "mapping": "a mapping; with `--data` a JSON object",
    "json": "a structured value; with `--data` its JSON text",
    "path": "an absolute path on the target host (letters, digits and `._/+-`)",
    "file": "a file on the controller (the machine running pyinfra)",
}


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    kind: str  # a key of KINDS
    meaning: str  # one line
    group: str  # the section of docs/settings.md


_WORKFLOWS = "VM workflows (build, start, stop, delete, status, dumpxml)"
_HOST = "Hypervisor setup (deploys/kvm_host.py)"
_NFS = "NFS share (deploys/nfs_server.py, deploys/nfs_client.py)"
_MGMT = "Management node: DNS and DHCP (deploys/mgmt_server.py)"
_WAIT = "Readiness (deploys/wait.py)"
_PLACEMENT = "Placement and drain (deploys/build.py, deploys/drain.py)"
_EXTRAS = "Snapshots, cloud-init seeds, clean clones"
_INSTALLER = "Installer VM and base VM (deploys/installer.py, deploys/base_vm.py)"
_BRIDGE = "Bridge networking (deploys/bridge.py)"

TABLE: tuple[Setting, ...] = (
    # --- VM workflows ---
    Setting("libvirt_uri", defaults.LIBVIRT_URI, "text", "libvirt connection of every hypervisor",
            _WORKFLOWS),
    Setting("kvm_primary_pool", defaults.PRIMARY_POOL, "text", "name of the primary (local) storage pool",
            _WORKFLOWS),
    Setting("kvm_primary_storage", defaults.PRIMARY_STORAGE, "path", "directory of the primary storage pool",
            _WORKFLOWS),
    Setting("kvm_secondary_pool", defaults.SECONDARY_POOL, "text",
            "name of the secondary (NFS-shared) storage pool", _WORKFLOWS),
    Setting("kvm_secondary_storage", defaults.SECONDARY_STORAGE, "path",
            "NFS mount point and secondary pool directory (shared by every hypervisor)", _WORKFLOWS),
    Setting("keep_disks", False, "flag", "delete: keep the deleted VMs' disk files", _WORKFLOWS),
    Setting("force", False, "flag", "stop: destroy the VMs at once instead of shutting them down",
            _WORKFLOWS),
    Setting("stop_timeout", 60, "number", "stop: seconds a graceful shutdown may take before destroy",
            _WORKFLOWS),
    Setting("vcpu_allocation_ratio", 4.0, "number",
            "vCPUs a hypervisor offers per CPU (capacity preflight of build and placement)", _WORKFLOWS),
    Setting("memory_allocation_ratio", 1.0, "number",
            "memory a hypervisor offers per byte of RAM (capacity preflight of build and placement)",
            _WORKFLOWS),
    Setting("overcommit", None, "number",
            "deprecated: stands for whichever allocation ratio the operator did not set", _WORKFLOWS),
    Setting("command_timeout", defaults.COMMAND_TIMEOUT, "seconds",
            "seconds one remote step (a virsh call, the probe, creating a disk) may take", _WORKFLOWS),
    Setting("copy_timeout", defaults.COPY_TIMEOUT, "seconds", "seconds a full copy of a base disk may take",
            _WORKFLOWS),
    Setting("xml_dir", "xml", "text", "dumpxml: controller directory the XML files are saved under",
            _WORKFLOWS),
    Setting("xml_domains", [], "list",
            "dumpxml: these domains instead of the manifest's VMs (e.g. a base VM)",
            _WORKFLOWS),
    # --- hypervisor setup ---
    Setting("kvm_users", [], "list", "accounts added to libvirt and kvm (missing ones are created)", _HOST),
    # Not writable by group or others: new disks are filled by root, and libvirt (DAC) hands each image
    # to qemu when a VM starts, so qemu only passes through the directory, as with /var/lib/libvirt/images.
    Setting("kvm_primary_storage_mode", "0711", "text",
            "octal mode of the primary pool directory; group- or world-writable only when set so", _HOST),
    Setting("kvm_guestfs_tools", False, "flag", "also install libguestfs-tools (virt-sysprep; large)", _HOST),
    Setting("kvm_extra_packages", [], "list", "more packages to install on every hypervisor", _HOST),
    Setting("libvirt_service", "libvirtd", "text", "the libvirt service to enable and restart", _HOST),
    Setting("kvm_graphics_listen", "127.0.0.1", "text",
            "address VNC/SPICE consoles listen on (reach them through an SSH tunnel)", _HOST),
    Setting("libvirt_listen_tls", False, "flag", "TLS listener (port 16514) with client certificates", _HOST),
    Setting("libvirt_tls_cert", None, "file", "server certificate for the TLS listener", _HOST),
    Setting("libvirt_tls_key", None, "file", "server key for the TLS listener", _HOST),
    Setting("libvirt_tls_cacert", None, "file", "CA certificate for the TLS listener", _HOST),
    Setting("libvirt_tls_allowed_dn_list", [], "list", "client certificate DNs the TLS listener allows",
            _HOST),
    Setting("kvm_sysctl", {}, "mapping",
            "sysctls written to /etc/sysctl.d/90-kvm-qemu.conf and applied (empty: no file)", _HOST),
    Setting("kvm_apparmor", True, "flag",
            "allow qemu to use the storage paths under AppArmor (Debian/Ubuntu with /etc/apparmor.d)", _HOST),
    # --- NFS ---
    Setting("nfs_export", "/secondary", "path", "the exported directory", _NFS),
    Setting("nfs_server", None, "text",
            "address clients mount from (none: the NFS server host's ssh_hostname or name)", _NFS),
    Setting("nfs_clients", None, "list", "clients allowed to mount (none: every kvm_hosts host)", _NFS),
    Setting("nfs_export_options", ["rw", "sync", "no_subtree_check"], "list",
            "export options (root_squash is always added unless nfs_no_root_squash)", _NFS),
    Setting("nfs_no_root_squash", False, "flag", "export with no_root_squash instead of root_squash", _NFS),
    Setting("nfs_export_owner", "root", "text", "owner of the exported directory", _NFS),
    Setting("nfs_export_group", "root", "text", "group of the exported directory", _NFS),
    Setting("nfs_export_mode", None, "text",
            "mode of the exported directory (none: 1777 with root_squash, 0755 without)", _NFS),
    Setting("nfs_mount_options", [], "list", "extra mount options, spelled as /proc/mounts shows them", _NFS),
    # --- management node ---
    Setting("dns_domain", None, "text", "the cluster's local DNS domain (none: no domain)", _MGMT),
    Setting("dns_upstream_servers", [], "list", "upstream resolvers dnsmasq forwards to", _MGMT),
    Setting("dhcp_range", None, "text",
            "dnsmasq dhcp-range, e.g. 10.10.5.100,10.10.5.200,255.255.255.0,12h (none: no DHCP)", _MGMT),
    Setting("dhcp_router", None, "text", "DHCP router option (none: not sent)", _MGMT),
    Setting("dhcp_lease_max", 150, "whole", "most DHCP leases dnsmasq hands out", _MGMT),
    Setting("dns_listen_address", None, "text",
            "the one address dnsmasq listens on (none: the node's ssh_hostname if it is an IP address)",
            _MGMT),
    Setting("tftp_root", None, "path", "TFTP root for PXE (none: no TFTP)", _MGMT),
    Setting("dnsmasq_conf", defaults.DNSMASQ_CONF, "path", "dnsmasq's configuration file", _MGMT),
    Setting("dnsmasq_pid_file", defaults.DNSMASQ_PID_FILE, "path", "dnsmasq's pid file", _MGMT),
    Setting("dhcp_hostsfile", defaults.DHCP_HOSTSFILE, "path", "the DHCP reservations file the tool owns",
            _MGMT),
    Setting("dns_addn_hosts", defaults.DNS_ADDN_HOSTS, "path", "the DNS names file the tool owns", _MGMT),
    Setting("mgmt_sudo", False, "flag", "use sudo for the steps on the management node", _MGMT),
    Setting("dhcp_owner", None, "text",
            "owner tag of this manifest's reservations (unset: derived from the manifest path)", _MGMT),
    Setting("prune_untagged", False, "flag",
            "deploys/prune.py also removes stale reservations without an owner tag (written before tags)",
            _MGMT),
    # --- readiness ---
    Setting("wait_timeout", 300, "number",
            "seconds until a VM without a lease or an SSH answer counts as not ready", _WAIT),
    Setting("dhcp_leasefile", defaults.DHCP_LEASEFILE, "path", "dnsmasq's lease database", _WAIT),
    Setting("wait_ssh_port", 22, "whole", "the TCP port probed on every VM", _WAIT),
    # --- placement ---
    Setting("migrate_timeout", defaults.MIGRATE_TIMEOUT, "seconds",
            "seconds one migration (or the offline copy of a VM's local disks) may take", _PLACEMENT),
    Setting("migration_uri", None, "text",
            "per destination: its libvirt as the source reaches it "
            "(none: qemu+ssh://<ssh_user or root>@<ssh_hostname or name>/system)", _PLACEMENT),
    Setting("migration_address", None, "text",
            "per destination: address its qemu listens on for the migration stream (none: libvirt's)",
            _PLACEMENT),
    Setting("migration_unsafe", False, "flag",
            "per destination: pass --unsafe, for shared storage libvirt cannot recognise", _PLACEMENT),
    Setting("drain", None, "text", "drain: the hypervisor to empty", _PLACEMENT),
    # --- snapshots, seeds, sysprep ---
    Setting("snapshot", None, "text", "snapshot: the snapshot to act on (none: the manifest's snapshots)",
            _EXTRAS),
    Setting("snapshot_action", "create", "text", "snapshot: create, revert or delete", _EXTRAS),
    Setting("cloud_init_users", [], "json",
            "users every cloud-init seed of the hypervisor carries: [{name, ssh_authorized_keys, sudo}]",
            _EXTRAS),
    Setting("sysprep", False, "flag", "run virt-sysprep on new clones whose vmspec does not say", _EXTRAS),
    # --- installer ---
    Setting("installer_host", None, "text", "the hypervisor the installer VM is made on (none: the first)",
            _INSTALLER),
    Setting("installer_name", "centos7", "text", "domain name of the installer VM (the base VM's name)",
            _INSTALLER),
    Setting("installer_iso", None, "text", "required: the ISO's volume name in installer_iso_pool",
            _INSTALLER),
    Setting("installer_iso_pool", None, "text", "pool holding the ISO (none: installer_pool)", _INSTALLER),
    Setting("installer_pool", "secondary", "text", "pool of the new boot disk", _INSTALLER),
    Setting("installer_boot_size_gib", 40, "whole", "boot disk size in GiB, 1-65536", _INSTALLER),
    Setting("installer_vcpus", 2, "whole", "vCPUs of the installer VM", _INSTALLER),
    Setting("installer_memory_mib", 2048, "whole", "memory of the installer VM in MiB", _INSTALLER),
    Setting("uefi", True, "flag", "UEFI (OVMF) firmware; false: BIOS", _INSTALLER),
    Setting("console", True, "flag", "serial console", _INSTALLER),
    Setting("installer_graphics", "vnc", "text", "vnc (127.0.0.1 only) or none", _INSTALLER),
    Setting("installer_bridge", "br0", "text", "bridge of the installer VM's NIC (empty: no NIC)",
            _INSTALLER),
    Setting("installer_domain_type", "kvm", "text", "kvm, or qemu (TCG, for hosts without KVM)", _INSTALLER),
    Setting("xml", None, "file", "base_vm: the base VM's XML file", _INSTALLER),
    # --- bridge ---
    Setting("kvm_bridge", "br0", "text", "bridge device the VMs' NICs attach to", _BRIDGE),
    Setting("kvm_bridge_ports", [], "list", "interfaces enslaved to the bridge directly", _BRIDGE),
    Setting("kvm_bond", None, "json",
            'a bond made a bridge port: {"name", "mode", "members", "miimon", "xmit_hash_policy", '
            '"lacp_rate"}', _BRIDGE),
    Setting("kvm_bridge_address", None, "text", "required: dhcp or an IPv4 address/prefix (10.10.5.2/24)",
            _BRIDGE),
    Setting("kvm_bridge_gateway", None, "text", "default route (static address only, inside its network)",
            _BRIDGE),
    Setting("kvm_bridge_dns", [], "list", "DNS servers of the bridge (static address only)", _BRIDGE),
    Setting("kvm_bridge_dns_search", [], "list", "DNS search domains of the bridge", _BRIDGE),
    Setting("kvm_bridge_stp", False, "flag", "spanning tree on the bridge", _BRIDGE),
    Setting("kvm_bridge_backend", "auto", "text",
            "auto, netplan, networkmanager, ifcfg or iproute2 (auto: by distribution)", _BRIDGE),
    Setting("kvm_bridge_rollback_seconds", 120, "whole",
            "the host restores its old network this long after arming unless the change was committed",
            _BRIDGE),
    Setting("kvm_bridge_verify_seconds", 30, "whole",
            "how long the controller keeps trying new SSH connections after the change", _BRIDGE),
)  # fmt: skip

SETTINGS: dict[str, Setting] = {s.key: s for s in TABLE}
# The default of every key (read-only use: the resolver hands out copies of list/dict defaults).
DEFAULTS: dict[str, Any] = {s.key: s.default for s in TABLE}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Paths reach server.mount, which does not quote its arguments, and config files that would need
# their own quoting rules: keep them to characters that are safe everywhere.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")
# Hostnames, addresses, CIDRs and the wildcards exports(5) allows for client specs.
_SAFE_HOST = re.compile(r"[A-Za-z0-9.:_*?/\[\]-]+")
_SAFE_OPTION = re.compile(r"[A-Za-z0-9_.=:,-]+")


# --- the layers -------------------------------------------------------------------------------------


def _operator_layers(member: Any) -> list[Mapping[str, Any]]:
    """The data an operator gives, highest first: assignments during the run, ``--data``, host data,
    group data, the inventory's global data. pyinfra's ``HostData`` searches these and then the
    running deploy's ``data_defaults``, and offers no way to ask which layer answered: this adapter
    rebuilds its order from public ``Inventory`` methods (tests/unit/test_settings.py fails if
    pyinfra's layering changes). ``pyinfra_testing``'s FakeHost keeps a plain dict of host data."""
    data = member.data
    if not isinstance(data, HostData):
        return [data]
    inventory = member.inventory
    return [
        data.override_datas,
        inventory.get_override_data(),
        inventory.get_host_data(member.name),
        inventory.get_groups_data(member.groups),
        inventory.get_data(),
    ]


def _deploy_layer(member: Any) -> Mapping[str, Any]:
    """``data_defaults`` of the ``@deploy`` running on the current host (a caller's own wrapper)."""
    if isinstance(member.data, HostData):
        return member.get_deploy_data() or {}
    return {}


# The parameters of the deploy functions running now, innermost last (see ``given``). pyinfra runs each
# host's deploy code in a greenlet of its own, so the stack is the greenlet's: a call context, not state
# shared across hosts.
_CALLS = gevent.local.local()


def _given_stack() -> list[dict[str, Any]]:
    stack: list[dict[str, Any]] | None = getattr(_CALLS, "stack", None)
    if stack is None:
        stack = _CALLS.stack = []
    return stack


@contextmanager
def given(values: dict[str, Any]) -> Iterator[None]:
    """A deploy function's parameters (data key -> value; None = not given) win over host data while
    its body runs on the current host."""
    for key in values:
        _entry(key)
    stack = _given_stack()
    stack.append({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        stack.pop()


def _entry(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise KeyError(f"{key}: not a setting (add it to TABLE in inventories/settings.py)") from None


_UNSET = object()


def _chosen(key: str, given_value: Any, member: Any) -> Any:
    """The value from the call argument or the operator's data, else ``_UNSET``."""
    _entry(key)
    if given_value is not None:
        return given_value
    if member is None:
        for layer in reversed(_given_stack()):
            if key in layer:
                return layer[key]
    for layer in _operator_layers(member if member is not None else host):
        if key in layer:
            return layer[key]
    return _UNSET


def setting(key: str, given: Any = None, *, member: Any = None) -> Any:
    """The value of ``key`` as it is: the call argument ``given`` (None = not given), else the
    operator's data, else a wrapping deploy's ``data_defaults``, else the table's default.

    ``member``: another inventory host (its operator data, else the table's default)."""
    value = _chosen(key, given, member)
    if value is _UNSET and member is None:
        value = _deploy_layer(host).get(key, _UNSET)
    if value is _UNSET:
        value = SETTINGS[key].default
    # A shallow copy, as pyinfra's HostData hands out: changing it changes no layer or default.
    return copy(value)


def is_set(key: str, given: Any = None, *, member: Any = None) -> bool:
    """True when the call argument or the operator's data sets ``key`` (to anything but None), even to
    the value of its default."""
    value = _chosen(key, given, member)
    return value is not _UNSET and value is not None


# Which types of setting each typed accessor reads (a mismatch is a programming error, not bad data).
ACCESSOR_KINDS: dict[str, frozenset[str]] = {
    "flag": frozenset({"flag"}),
    "number": frozenset({"number", "seconds", "whole"}),
    "seconds": frozenset({"seconds"}),
    "whole": frozenset({"whole"}),
    "str_list": frozenset({"list"}),
    "str_dict": frozenset({"mapping"}),
    "safe_path": frozenset({"path"}),
}


def _typed(key: str, accessor: str, given: Any, member: Any) -> Any:
    kind = _entry(key).kind
    if kind not in ACCESSOR_KINDS[accessor]:
        raise TypeError(f"{key} is a {kind} setting: {accessor}() does not read it")
    return setting(key, given, member=member)


# --- typed accessors: each parses and checks, naming the key in its SettingError --------------------


def flag(key: str, given: Any = None, *, member: Any = None) -> bool:
    """A boolean setting; ``--data keep_disks=true`` arrives as a string."""
    value = _typed(key, "flag", given, member)
    if isinstance(value, str):
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise SettingError(f"{key}={value!r}: expected true or false")
    return bool(value)


def number(key: str, positive: bool = False, given: Any = None, *, member: Any = None) -> float:
    """A finite number (``nan`` and ``inf`` are refused); ``positive``: greater than zero."""
    value = _typed(key, "number", given, member)
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{key}={value!r}: expected a number") from None
    if not math.isfinite(result):
        raise SettingError(f"{key}={value!r}: expected a finite number")
    if positive and result <= 0:
        raise SettingError(f"{key}={value!r}: expected a number greater than 0")
    return result


def seconds(key: str, given: Any = None, *, member: Any = None) -> int:
    """A time limit in whole seconds, at least 1 (``--data command_timeout=30``)."""
    value = _typed(key, "seconds", given, member)
    try:
        result = int(str(value).strip())
    except (TypeError, ValueError):
        result = 0
    if result < 1 or isinstance(value, bool):
        raise SettingError(f"{key}={value!r}: expected a whole number of seconds, at least 1")
    return result


def whole(key: str, given: Any = None, *, member: Any = None) -> int:
    """A whole number (``--data installer_vcpus=4``); range checks are the caller's."""
    value = _typed(key, "whole", given, member)
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise SettingError(f"{key}={value!r}: expected a whole number") from None


def str_list(key: str, given: Any = None, *, member: Any = None) -> list[str]:
    """A list of strings; a string is split at commas (``--data kvm_users=alice,bob``)."""
    value = _typed(key, "str_list", given, member)
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise SettingError(f"{key}={value!r}: expected a list")


def str_dict(key: str, given: Any = None, *, member: Any = None) -> dict[str, str]:
    """A mapping of strings; a string is read as a JSON object."""
    value = _typed(key, "str_dict", given, member)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingError(f"{key}: expected a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SettingError(f"{key}={value!r}: expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def safe_path(key: str, given: Any = None, *, member: Any = None) -> str:
    """An absolute path of letters, digits and ``._/+-`` without ``..``."""
    value = _typed(key, "safe_path", given, member)
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise SettingError(f"{key}={value!r}: expected an absolute path of letters, digits and ._/+-")
    return value.rstrip("/") or "/"


def safe_host(value: str, key: str) -> str:
    """``value`` (read from ``key``) when it is a hostname, address or network."""
    if not isinstance(value, str) or not _SAFE_HOST.fullmatch(value):
        raise SettingError(f"{key}: {value!r} is not a hostname, address or network")
    return value


def safe_options(values: list[str], key: str) -> list[str]:
    """``values`` (read from ``key``) when each is a mount or export option."""
    for value in values:
        if not _SAFE_OPTION.fullmatch(value):
            raise SettingError(f"{key}: option {value!r} has characters outside [A-Za-z0-9_.=:,-]")
    return values


# --- data that is not a setting ---------------------------------------------------------------------


def connection_value(key: str, member: Any = None) -> Any:
    """pyinfra's connection data of the current host (or ``member``), e.g. ``ssh_hostname``, ``ssh_user``:
    not settings of this tool, so not in the table; None when absent."""
    if not key.startswith("ssh_"):
        raise KeyError(f"{key}: not connection data (ssh_*)")
    return (member if member is not None else host).data.get(key)


INVENTORY_KEYS = ("kvm_vmspecs", "kvm_all_vmspecs", "kvm_vmspec")


def inventory_value(key: str, member: Any = None, default: Any = None) -> Any:
    """What the inventory files generate from the manifest (``INVENTORY_KEYS``) for the current host
    (or ``member``); ``default`` when absent."""
    if key not in INVENTORY_KEYS:
        raise KeyError(f"{key}: not data the inventory generates ({', '.join(INVENTORY_KEYS)})")
    return (member if member is not None else host).data.get(key, default)


# --- docs/settings.md -------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, list | tuple):
        return "`" + ",".join(str(v) for v in value) + "`" if value else "`[]`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def markdown() -> str:
    """docs/settings.md: the table as an operator reads it."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by `python -m inventories.settings > docs/settings.md`; do not edit by hand. -->",
        "",
        "Every setting is a data key: give it per host or per group in the inventory, or for one run with",
        "`--data key=value`. A deploy function's own parameter wins over the data, the data wins over the",
        "default below. Values given with `--data` arrive as text and are parsed by type:",
        "",
        "| type | written as |",
        "|---|---|",
        *(f"| {kind} | {meaning} |" for kind, meaning in KINDS.items()),
    ]
    groups: dict[str, list[Setting]] = {}
    for entry in TABLE:
        groups.setdefault(entry.group, []).append(entry)
    for group, entries in groups.items():
        lines += ["", f"## {group}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{e.key}` | {e.kind} | {_shown(e.default)} | {e.meaning} |" for e in entries]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
