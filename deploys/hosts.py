"""The host setup deploys: KVM hypervisor, NFS secondary storage (server and clients), management node.

The deploy files (``deploys/kvm_host.py`` ...) only pick the hosts and call these functions; your own
deploy file can call them too. Each parameter left at None comes from host/group data or ``--data``
(the key is named in the function's docstring); data keys and defaults: docs/settings.md.

Everything invalid in the data is rejected while the deploy loads (before any host changes);
per-host problems found on the host itself (an unsupported distribution) fail that host only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.api.command import QuoteString
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory
from pyinfra.facts.server import LinuxDistribution
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, dnf, files, server, systemd
from pyinfra.operations.util import any_changed

from deploys._settings import (
    TEMPLATES,
    SettingError,
    address_of,
    distro_label,
    dns_listen_address,
    flag,
    given,
    group_hosts,
    os_family,
    safe_host,
    safe_options,
    safe_path,
    setting,
    str_dict,
    str_list,
)
from inventories.defaults import LIBVIRT_URI
from inventories.dnsmasq_format import EntryError, parse_dhcp_range
from operations.util.output import log

# Our templates put each setting on its own line; without these jinja leaves a blank line per tag.
JINJA = {"trim_blocks": True, "lstrip_blocks": True}

KVM_PACKAGES: dict[str, list[str]] = {
    "debian": [
        "qemu-system-x86",
        "qemu-utils",
        "libvirt-daemon-system",
        "libvirt-clients",
        "ovmf",
        "python3-libvirt",
        "virtinst",
    ],
    "rhel": [
        "qemu-kvm",
        "qemu-img",
        "libvirt-daemon-kvm",
        "libvirt-client",
        "edk2-ovmf",
        "python3-libvirt",
        "virt-install",
    ],
}
GUESTFS_PACKAGES: dict[str, list[str]] = {"debian": ["libguestfs-tools"], "rhel": ["libguestfs-tools"]}
# RHEL has no libvirt-qemu group (the original scripts assumed it on every distribution): qemu runs as
# qemu:qemu there.
KVM_GROUPS: dict[str, list[str]] = {"debian": ["libvirt", "kvm", "libvirt-qemu"], "rhel": ["libvirt", "kvm"]}
NFS_SERVER_PACKAGES: dict[str, list[str]] = {"debian": ["nfs-kernel-server"], "rhel": ["nfs-utils"]}
NFS_CLIENT_PACKAGES: dict[str, list[str]] = {"debian": ["nfs-common"], "rhel": ["nfs-utils"]}
# dnsmasq-utils brings dhcp_release, which delete uses to drop a deleted VM's lease (RHEL's dnsmasq
# package does not ship it either: it is the dnsmasq-utils subpackage there too).
DNSMASQ_PACKAGES: dict[str, list[str]] = {
    "debian": ["dnsmasq", "dnsmasq-utils"],
    "rhel": ["dnsmasq", "dnsmasq-utils"],
}

LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
QEMU_CONF = "/etc/libvirt/qemu.conf"
LIBVIRT_CONF = "/etc/libvirt/libvirt.conf"
SYSCTL_CONF = "/etc/sysctl.d/90-kvm-qemu.conf"
MODULES_LOAD_CONF = "/etc/modules-load.d/kvm-qemu.conf"
APPARMOR_LOCAL = "/etc/apparmor.d/local/abstractions/libvirt-qemu"
EXPORTS_FILE = "/etc/exports.d/kvm-qemu.exports"
# Where libvirtd looks for its TLS material by default; the files come from the controller.
TLS_FILES: dict[str, tuple[str, str]] = {
    "libvirt_tls_cert": ("/etc/pki/libvirt/servercert.pem", "0644"),
    "libvirt_tls_key": ("/etc/pki/libvirt/private/serverkey.pem", "0600"),
    "libvirt_tls_cacert": ("/etc/pki/CA/cacert.pem", "0644"),
}
# The original scripts wrote this misspelt key; sysctl rejects it, so say what was meant.
SYSCTL_TYPOS: dict[str, str] = {"net.ipv4.tcp_timestamp": "net.ipv4.tcp_timestamps"}
_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_/-]+)+$")
_SYSCTL_VALUE = re.compile(r"^[A-Za-z0-9_.:/ -]+$")
_UNIT = re.compile(r"^[A-Za-z0-9_.@-]+$")
_MODE = re.compile(r"[0-7]{3,4}")
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


# --- shared helpers -----------------------------------------------------------------------------


def host_family() -> str | None:
    """The host's package family; an unsupported host gets a failing operation and None."""
    distro = host.get_fact(LinuxDistribution)
    family = os_family(distro)
    if family is None:
        message = (
            f"kvm-qemu: unsupported distribution {distro_label(distro)!r} on {host.name}: "
            "supported are Debian/Ubuntu (apt) and RHEL/CentOS/Rocky/AlmaLinux (dnf)"
        )
        # Raising here would abort the run for every host; a failing command fails this host only.
        server.shell(
            name=f"Unsupported distribution: {distro_label(distro)}",
            commands=[StringCommand("echo", QuoteString(message), ">&2", "&&", "exit", "1")],
        )
    return family


def systemd_running() -> bool:
    """True where systemd is PID 1; image builds, containers and the sandbox have no service manager."""
    return bool(host.get_fact(Directory, path="/run/systemd/system"))


def skipped_services(what: str) -> None:
    log(
        f"systemd is not running (no /run/systemd/system): {what} not enabled, started or restarted "
        "on this host",
        "warning",
    )


def install(family: str, packages: list[str], what: str) -> None:
    if family == "debian":
        installed = host.get_fact(DebPackages)
        # Refresh the lists only when something is missing, so a converged host stays "No change".
        if any(package not in installed for package in packages):
            # Retried: another apt run (unattended-upgrades at boot; sandbox hosts sharing one
            # root filesystem) may hold the lists lock for a while.
            apt.update(name="Refresh apt package lists", cache_time=3600, _retries=3, _retry_delay=20)
        apt.packages(
            name=f"Install {what} packages",
            packages=packages,
            # Wait for the dpkg lock instead of failing when another apt run holds it.
            extra_install_args="-o DPkg::Lock::Timeout=300",
        )
    else:
        dnf.packages(name=f"Install {what} packages", packages=packages)


def ere_literal(path: str) -> str:
    """A safe_path as a grep/sed -E literal: of its characters only . and + are special."""
    return path.replace(".", "[.]").replace("+", "[+]")


def unit_name(key: str) -> str:
    value = str(setting(key))
    if not _UNIT.fullmatch(value):
        raise SettingError(f"{key}={value!r}: not a systemd unit name")
    return value


# --- KVM hypervisor -----------------------------------------------------------------------------


def storage_mode() -> str:
    """The primary pool directory's mode (``kvm_primary_storage_mode``, default 0711): an octal mode;
    one that lets group or others write is taken as the operator's explicit choice."""
    mode = str(setting("kvm_primary_storage_mode"))
    # pyinfra writes the mode into chmod unquoted.
    if not _MODE.fullmatch(mode):
        raise SettingError(f"kvm_primary_storage_mode={mode!r}: expected an octal mode such as 0711")
    return mode


def graphics_listen_address() -> str:
    value = str(setting("kvm_graphics_listen"))
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingError(f"kvm_graphics_listen={value!r}: expected an IP address") from None
    return value


def tls_sources() -> dict[str, str]:
    """Controller-side certificate files for the TLS listener, checked before anything runs."""
    sources: dict[str, str] = {}
    for key in TLS_FILES:
        value = setting(key)
        if not value or not Path(str(value)).is_file():
            raise SettingError(
                f"libvirt_listen_tls needs {key} (a certificate file on this machine); got {value!r}"
            )
        sources[key] = str(value)
    for dn in str_list("libvirt_tls_allowed_dn_list"):
        # The list is written as a quoted libvirt config value on one line.
        if '"' in dn or "\\" in dn or any(ord(char) < 32 for char in dn):
            raise SettingError(
                f"libvirt_tls_allowed_dn_list: {dn!r} may not contain quotes, backslashes or control chars"
            )
    return sources


def sysctl_settings() -> dict[str, str]:
    settings = str_dict("kvm_sysctl")
    for key, value in settings.items():
        if key in SYSCTL_TYPOS:
            raise SettingError(f"kvm_sysctl: {key!r} does not exist; did you mean {SYSCTL_TYPOS[key]!r}?")
        if not _SYSCTL_KEY.fullmatch(key) or not _SYSCTL_VALUE.fullmatch(value):
            raise SettingError(f"kvm_sysctl: {key}={value!r} is not a valid sysctl setting")
    return settings


def config_line(path: str, key: str, value: str) -> Any:
    """Set ``key = value`` in a libvirt config file, replacing the stock commented-out line if present."""
    return files.line(
        name=f"{Path(path).name}: {key} = {value}",
        path=path,
        line=rf"^#?[[:space:]]*{key}[[:space:]]*=.*$",
        replace=f"{key} = {value}",
        extended_regex=True,
    )


def libvirtd_settings(tls: bool) -> dict[str, str]:
    """The libvirtd.conf keys this deploy owns; every other line of the file is left as it is.

    No plain TCP listener: it is unencrypted, and the original scripts' auth_tcp = "none" handed root
    on the host to anyone reaching port 16509. auth_tcp is set anyway in case listen_tcp is turned on
    by hand. auth_unix_rw keeps the distro default (polkit): where the socket is socket-activated its
    mode comes from the systemd unit, and "none" would open it to every local user.
    """
    settings = {
        "listen_tcp": "0",
        "auth_tcp": '"sasl"',
        "listen_tls": "1" if tls else "0",
        "unix_sock_group": '"libvirt"',
        "unix_sock_ro_perms": '"0777"',
        "unix_sock_rw_perms": '"0770"',
    }
    if tls:
        settings["cert_file"] = f'"{TLS_FILES["libvirt_tls_cert"][0]}"'
        settings["key_file"] = f'"{TLS_FILES["libvirt_tls_key"][0]}"'
        settings["ca_file"] = f'"{TLS_FILES["libvirt_tls_cacert"][0]}"'
        allowed = str_list("libvirt_tls_allowed_dn_list")
        if allowed:
            settings["tls_allowed_dn_list"] = "[" + ", ".join(f'"{dn}"' for dn in allowed) + "]"
    return settings


@deploy("KVM host")
def kvm_host(
    users: list[str] | None = None,
    primary_storage: str | None = None,
    secondary_storage: str | None = None,
    guestfs_tools: bool | None = None,
    extra_packages: list[str] | None = None,
    graphics_listen: str | None = None,
    listen_tls: bool | None = None,
    sysctl: dict[str, str] | None = None,
    apparmor: bool | None = None,
) -> None:
    """KVM hypervisor: packages, groups, storage directory, libvirt configuration, services.

    Parameters (data key): users (``kvm_users``), primary_storage (``kvm_primary_storage``),
    secondary_storage (``kvm_secondary_storage``), guestfs_tools (``kvm_guestfs_tools``),
    extra_packages (``kvm_extra_packages``), graphics_listen (``kvm_graphics_listen``), listen_tls
    (``libvirt_listen_tls``), sysctl (``kvm_sysctl``), apparmor (``kvm_apparmor``).
    """
    parameters = {
        "kvm_users": users,
        "kvm_primary_storage": primary_storage,
        "kvm_secondary_storage": secondary_storage,
        "kvm_guestfs_tools": guestfs_tools,
        "kvm_extra_packages": extra_packages,
        "kvm_graphics_listen": graphics_listen,
        "libvirt_listen_tls": listen_tls,
        "kvm_sysctl": sysctl,
        "kvm_apparmor": apparmor,
    }
    with given(parameters):
        _kvm_host()


@dataclass(frozen=True)
class KvmSetup:
    """A hypervisor's settings, all read and checked before anything on the host changes."""

    users: list[str]
    primary: str
    primary_mode: str
    secondary: str
    graphics_listen: str
    tls: bool
    tls_files: dict[str, str]
    sysctls: dict[str, str]
    service: str
    packages: list[str]
    has_systemd: bool


def kvm_packages(family: str) -> list[str]:
    packages = KVM_PACKAGES[family] + (GUESTFS_PACKAGES[family] if flag("kvm_guestfs_tools") else [])
    return packages + str_list("kvm_extra_packages")


def kvm_setup(family: str) -> KvmSetup:
    """Read every setting of the KVM host deploy; a mistake stops the run before any host is touched."""
    # Read in this order (the first mistake is the one reported).
    return KvmSetup(
        users=str_list("kvm_users"),
        primary=safe_path("kvm_primary_storage"),
        primary_mode=storage_mode(),
        secondary=safe_path("kvm_secondary_storage"),
        graphics_listen=graphics_listen_address(),
        tls=(tls := flag("libvirt_listen_tls")),
        tls_files=tls_sources() if tls else {},
        sysctls=sysctl_settings(),
        service=unit_name("libvirt_service"),
        packages=kvm_packages(family),
        has_systemd=systemd_running(),
    )


def add_users_to_groups(users: list[str], groups: list[str]) -> None:
    for user in host.loop(users):
        server.user(
            name=f"Add {user} to {', '.join(groups)}",
            user=user,
            groups=groups,
            append=True,
            create_home=True,
            # Existing accounts keep their home as it is (ownership included).
            ensure_home=False,
        )


def primary_storage_directory(setup: KvmSetup) -> None:
    files.directory(
        name="Primary storage directory",
        path=setup.primary,
        user="root",
        group="kvm",
        mode=setup.primary_mode,
    )


def tls_files(sources: dict[str, str]) -> list[OperationMeta]:
    """Upload the TLS listener's certificate files (none when TLS is off)."""
    uploads = []
    for key in host.loop(sorted(sources)):
        dest, mode = TLS_FILES[key]
        uploads.append(
            files.put(
                name=f"TLS file {dest}", src=sources[key], dest=dest, user="root", group="root", mode=mode
            )
        )
    return uploads


def libvirt_configuration(setup: KvmSetup) -> list[OperationMeta]:
    """TLS files, libvirtd.conf, qemu.conf and libvirt.conf; returns the changes that need a restart."""
    changes = tls_files(setup.tls_files)
    for key, value in host.loop(libvirtd_settings(setup.tls).items()):
        changes.append(config_line(LIBVIRTD_CONF, key, value))
    # The stock qemu.conf is long and distro-specific: change only the lines we own.
    changes.append(config_line(QEMU_CONF, "vnc_listen", f'"{setup.graphics_listen}"'))
    changes.append(config_line(QEMU_CONF, "spice_listen", f'"{setup.graphics_listen}"'))
    # Client default (virsh without -c); read by each client, so no restart.
    config_line(LIBVIRT_CONF, "uri_default", f'"{LIBVIRT_URI}"')
    return changes


def load_br_netfilter() -> None:
    """The net.bridge.* sysctls exist only once br_netfilter is loaded: now and at every boot."""
    files.template(
        name=f"Load br_netfilter at boot ({MODULES_LOAD_CONF})",
        src=str(TEMPLATES / "modules-load-kvm-qemu.conf.j2"),
        dest=MODULES_LOAD_CONF,
        mode="0644",
    )
    server.modprobe(name="Load br_netfilter (net.bridge.* sysctls)", module="br_netfilter")


def sysctl_configuration(sysctls: dict[str, str]) -> None:
    """Write and apply the sysctl drop-in, or remove it when there are no settings."""
    if any(key.startswith("net.bridge.") for key in sysctls):
        load_br_netfilter()
    if sysctls:
        sysctl_file = files.template(
            name=f"sysctl settings {SYSCTL_CONF}",
            src=str(TEMPLATES / "sysctl-kvm-qemu.conf.j2"),
            dest=SYSCTL_CONF,
            mode="0644",
            jinja_env_kwargs=dict(JINJA),
            settings=sysctls,
        )
        server.shell(
            name="Apply sysctl settings (file changed)",
            commands=[StringCommand("sysctl", "-p", QuoteString(SYSCTL_CONF))],
            _if=any_changed(sysctl_file),
        )
    else:
        files.file(name=f"No sysctl settings: remove {SYSCTL_CONF}", path=SYSCTL_CONF, present=False)


def apparmor_storage_paths(family: str, setup: KvmSetup) -> OperationMeta | None:
    """Let qemu use the storage paths under AppArmor; None where AppArmor is not configured."""
    # AppArmor is a Debian/Ubuntu matter (the original scripts configured it on RHEL too).
    if not (
        family == "debian" and flag("kvm_apparmor") and bool(host.get_fact(Directory, path="/etc/apparmor.d"))
    ):
        return None
    return files.template(
        name=f"AppArmor: qemu may use the storage paths ({APPARMOR_LOCAL})",
        src=str(TEMPLATES / "apparmor-libvirt-qemu.j2"),
        dest=APPARMOR_LOCAL,
        mode="0644",
        jinja_env_kwargs=dict(JINJA),
        paths=sorted({setup.primary, setup.secondary}),
    )


def tls_socket_listening(service: str) -> None:
    tls_socket = f"{service}-tls.socket"
    # systemd refuses to start a socket whose service is already running.
    if not host.get_fact(SystemdStatus, services=[tls_socket]).get(tls_socket):
        systemd.service(name=f"Stop {service} to start {tls_socket}", service=service, running=False)
    systemd.service(
        name=f"{tls_socket} enabled and listening", service=tls_socket, running=True, enabled=True
    )


def libvirt_services(setup: KvmSetup, libvirtd_changes: list[OperationMeta]) -> None:
    """libvirtd (and its TLS socket) enabled and running, restarted when its configuration changed."""
    service = setup.service
    if setup.tls:
        tls_socket_listening(service)
    systemd.service(name=f"{service} enabled and running", service=service, running=True, enabled=True)
    systemd.service(
        name=f"Restart {service} (configuration changed)",
        service=service,
        restarted=True,
        _if=any_changed(*libvirtd_changes),
    )


def reload_apparmor(apparmor_file: OperationMeta | None) -> None:
    # Only when the kernel has AppArmor on: the reload re-reads the VM profiles including our paths.
    if apparmor_file is not None and host.get_fact(Directory, path="/sys/kernel/security/apparmor"):
        systemd.service(
            name="Reload AppArmor (storage paths changed)",
            service="apparmor",
            reloaded=True,
            _if=any_changed(apparmor_file),
        )


def _kvm_host() -> None:
    family = host_family()
    if family is None:
        return
    setup = kvm_setup(family)

    install(family, setup.packages, "KVM/libvirt")
    add_users_to_groups(setup.users, KVM_GROUPS[family])
    primary_storage_directory(setup)
    libvirtd_changes = libvirt_configuration(setup)
    sysctl_configuration(setup.sysctls)
    apparmor_file = apparmor_storage_paths(family, setup)
    if not setup.has_systemd:
        skipped_services(f"{setup.service} (and apparmor)")
        return
    libvirt_services(setup, libvirtd_changes)
    reload_apparmor(apparmor_file)


# --- NFS ----------------------------------------------------------------------------------------


def export_clients() -> list[str]:
    """Who may mount the export: ``nfs_clients``, else every hypervisor of the inventory (never ``*``)."""
    if setting("nfs_clients") is not None:
        clients = str_list("nfs_clients")
    else:
        clients = [address_of(member) for member in group_hosts("kvm_hosts")]
    if not clients:
        raise SettingError("nfs_server: no clients to export to (no kvm_hosts and no nfs_clients)")
    return sorted({safe_host(client, "nfs_clients") for client in clients})


def export_options() -> list[str]:
    options = [
        option for option in str_list("nfs_export_options") if option not in ("root_squash", "no_root_squash")
    ]
    options.append("no_root_squash" if flag("nfs_no_root_squash") else "root_squash")
    return safe_options(options, "nfs_export_options")


@deploy("NFS server")
def nfs_server(
    export: str | None = None, clients: list[str] | None = None, no_root_squash: bool | None = None
) -> None:
    """Export the secondary storage share: export (``nfs_export``), clients (``nfs_clients``; default:
    every ``kvm_hosts`` host), no_root_squash (``nfs_no_root_squash``); the other ``nfs_*`` keys as data."""
    with given({"nfs_export": export, "nfs_clients": clients, "nfs_no_root_squash": no_root_squash}):
        _nfs_server()


def _nfs_server() -> None:
    family = host_family()
    if family is None:
        return

    export = safe_path("nfs_export")
    clients = export_clients()
    options = export_options()
    mode = str(setting("nfs_export_mode") or ("0755" if flag("nfs_no_root_squash") else "1777"))
    # pyinfra writes mode, owner and group into chmod/chown unquoted.
    if not _MODE.fullmatch(mode):
        raise SettingError(f"nfs_export_mode={mode!r}: expected an octal mode such as 1777")
    for key in ("nfs_export_owner", "nfs_export_group"):
        if not _ACCOUNT.fullmatch(str(setting(key))):
            raise SettingError(f"{key}={setting(key)!r}: expected a user or group name")
    has_systemd = systemd_running()

    install(family, NFS_SERVER_PACKAGES[family], "NFS server")
    files.directory(
        name=f"Export directory {export}",
        path=export,
        user=str(setting("nfs_export_owner")),
        group=str(setting("nfs_export_group")),
        mode=mode,
    )
    files.directory(name="/etc/exports.d", path="/etc/exports.d", mode="0755")
    exports = files.template(
        name=f"Export {export} to the cluster ({EXPORTS_FILE})",
        src=str(TEMPLATES / "nfs-exports.j2"),
        dest=EXPORTS_FILE,
        mode="0644",
        jinja_env_kwargs=dict(JINJA),
        export=export,
        clients=clients,
        options=options,
    )

    if not has_systemd:
        skipped_services("nfs-server (and exportfs -ra)")
        return
    systemd.service(name="nfs-server enabled and running", service="nfs-server", running=True, enabled=True)
    server.shell(name="Re-export (exports changed)", commands=["exportfs -ra"], _if=any_changed(exports))


def nfs_server_address() -> str:
    value = setting("nfs_server")
    if not value:
        servers = group_hosts("nfs_server") or group_hosts("mgmt")
        if not servers or servers[0].name.startswith("@"):
            raise SettingError(
                "nfs_client: set nfs_server (the address clients mount from): "
                "the NFS server host has no ssh_hostname to derive it from"
            )
        value = address_of(servers[0])
    return safe_host(str(value), "nfs_server")


@deploy("NFS client")
def nfs_client(server: str | None = None, export: str | None = None, mountpoint: str | None = None) -> None:
    """Mount the NFS share at the secondary pool's path: server (``nfs_server``; default: the NFS
    server host's address), export (``nfs_export``), mountpoint (``kvm_secondary_storage``)."""
    with given({"nfs_server": server, "nfs_export": export, "kvm_secondary_storage": mountpoint}):
        _nfs_client()


def _nfs_client() -> None:
    family = host_family()
    if family is None:
        return

    server_address = nfs_server_address()
    export = safe_path("nfs_export")
    mountpoint = safe_path("kvm_secondary_storage")
    extra = safe_options(str_list("nfs_mount_options"), "nfs_mount_options")
    device = f"{server_address}:{export}"
    # _netdev: wait for the network at boot; only in fstab, mount(8) never reports it as active.
    fstab_options = ",".join(["defaults", "_netdev", *extra])

    install(family, NFS_CLIENT_PACKAGES[family], "NFS client")
    # No mode/owner: once mounted, the directory is the server's and chmod as root would be squashed.
    files.directory(name=f"Mount point {mountpoint}", path=mountpoint)
    files.line(
        name=f"/etc/fstab: {device} on {mountpoint}",
        path="/etc/fstab",
        line=rf"^[^#[:space:]]+[[:space:]]+{ere_literal(mountpoint)}[[:space:]]",
        replace=f"{device} {mountpoint} nfs {fstab_options} 0 0",
        extended_regex=True,
    )
    server.mount(
        name=f"Mount {device} on {mountpoint}",
        path=mountpoint,
        device=device,
        fs_type="nfs",
        options=extra or None,
    )


# --- management node ----------------------------------------------------------------------------


def optional_host(key: str) -> str | None:
    value = setting(key)
    return safe_host(str(value), key) if value else None


def dnsmasq_values() -> dict[str, Any]:
    """The variables of templates/dnsmasq.conf.j2 (the sandbox renders it with the same names)."""
    dhcp_range = setting("dhcp_range")
    if dhcp_range:
        try:
            parse_dhcp_range(str(dhcp_range))
        except EntryError as exc:
            raise SettingError(str(exc).replace("dhcp_range ", "dhcp_range=", 1)) from None
    tftp_root = safe_path("tftp_root") if setting("tftp_root") else None
    try:
        lease_max = int(setting("dhcp_lease_max"))
    except (TypeError, ValueError):
        raise SettingError(f"dhcp_lease_max={setting('dhcp_lease_max')!r}: expected a number") from None
    return {
        "listen_address": dns_listen_address(),
        "domain": optional_host("dns_domain"),
        "upstream_servers": [safe_host(s, "dns_upstream_servers") for s in str_list("dns_upstream_servers")],
        "dhcp_range": str(dhcp_range) if dhcp_range else None,
        "dhcp_lease_max": lease_max,
        "router": optional_host("dhcp_router") if dhcp_range else None,
        "tftp_root": tftp_root,
        "pid_file": safe_path("dnsmasq_pid_file"),
        "dhcp_hostsfile": safe_path("dhcp_hostsfile"),
        "addn_hosts": safe_path("dns_addn_hosts"),
    }


@deploy("Management node")
def mgmt_server(
    listen_address: str | None = None, domain: str | None = None, dhcp_range: str | None = None
) -> None:
    """dnsmasq for the cluster's DNS names and DHCP reservations: listen_address
    (``dns_listen_address``), domain (``dns_domain``), dhcp_range (``dhcp_range``); the other ``dns_*``,
    ``dhcp_*`` and ``dnsmasq_*`` keys as data."""
    with given({"dns_listen_address": listen_address, "dns_domain": domain, "dhcp_range": dhcp_range}):
        _mgmt_server()


def dnsmasq_files(family: str, values: dict[str, Any]) -> None:
    """The directories and files dnsmasq reads or writes, created but never overwritten."""
    files.directory(name="/etc/dnsmasq.d", path="/etc/dnsmasq.d", mode="0755")
    # The tool-owned directory: the dhcp_reservations operation rewrites these files and HUPs
    # dnsmasq. Only create them; their content is never touched here.
    owned = sorted({values["dhcp_hostsfile"], values["addn_hosts"]})
    for directory in host.loop(sorted({str(Path(path).parent) for path in owned})):
        files.directory(name=f"Directory {directory}", path=directory, mode="0755")
    for path in host.loop(owned):
        files.file(name=f"{path} exists", path=path, present=True)
    if values["tftp_root"]:
        files.directory(name=f"TFTP root {values['tftp_root']}", path=values["tftp_root"], mode="0755")
    if family == "rhel":
        # RHEL's unit does not create /run/dnsmasq for our pid-file (Debian's init script does).
        pid_dir = str(Path(values["pid_file"]).parent)
        files.put(
            name=f"Create {pid_dir} at boot",
            src=StringIO(f"d {pid_dir} 0755 root root -\n"),
            dest="/etc/tmpfiles.d/kvm-qemu-dnsmasq.conf",
            mode="0644",
        )
        files.directory(name=f"Directory {pid_dir}", path=pid_dir, mode="0755")


def dnsmasq_configuration(conf: str, values: dict[str, Any]) -> OperationMeta:
    """Write dnsmasq's configuration and test it when it changed; returns the write."""
    dnsmasq_conf = files.template(
        name=f"dnsmasq configuration {conf}",
        src=str(TEMPLATES / "dnsmasq.conf.j2"),
        dest=conf,
        user="root",
        group="root",
        mode="0644",
        jinja_env_kwargs=dict(JINJA),
        **values,
    )
    # A failing test fails this host here, before any restart: the running dnsmasq keeps serving.
    server.shell(
        name="Validate dnsmasq configuration (dnsmasq --test)",
        commands=[
            StringCommand(
                "dnsmasq", "--test", StringCommand("--conf-file=", QuoteString(conf), _separator="")
            )
        ],
        _if=any_changed(dnsmasq_conf),
    )
    return dnsmasq_conf


def dnsmasq_service(dnsmasq_conf: OperationMeta) -> None:
    """dnsmasq enabled and running, restarted when its configuration changed."""
    systemd.service(name="dnsmasq enabled and running", service="dnsmasq", running=True, enabled=True)
    systemd.service(
        name="Restart dnsmasq (configuration changed)",
        service="dnsmasq",
        restarted=True,
        _if=any_changed(dnsmasq_conf),
    )


def _mgmt_server() -> None:
    family = host_family()
    if family is None:
        return

    values = dnsmasq_values()
    conf = safe_path("dnsmasq_conf")
    has_systemd = systemd_running()

    install(family, DNSMASQ_PACKAGES[family], "dnsmasq")
    dnsmasq_files(family, values)
    dnsmasq_conf = dnsmasq_configuration(conf, values)
    if not has_systemd:
        skipped_services("dnsmasq")
        return
    dnsmasq_service(dnsmasq_conf)
