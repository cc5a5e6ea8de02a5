"""Hypervisor nodes: a private libvirt (config, state, logs, cache) per mount namespace."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

from inventories.defaults import LIBVIRT_URI
from inventories.defaults import PRIMARY_STORAGE as PRIMARY_POOL
from inventories.defaults import SECONDARY_STORAGE as SECONDARY

from . import proc
from .node import Mount, Node

REAL_LIBVIRT_ETC = Path("/etc/libvirt")

# What qemu.conf needs for libvirt to run guests like in an unprivileged container here:
# no cgroups (no systemd), no SELinux/AppArmor labelling, qemu as root, and qemu kept in the
# node's mount namespace (namespaces = []) so it sees the node's private paths and is found
# (and stopped) by `down` together with the node's other processes. Ownership tracking is off
# so nothing chowns or writes xattrs on images in the shared /secondary.
QEMU_CONF = {
    "user": '"root"',
    "group": '"root"',
    "security_driver": '"none"',
    "cgroup_controllers": "[ ]",
    "namespaces": "[ ]",
    "dynamic_ownership": "0",
    "remember_owner": "0",
}

# Debug output goes to the node's private log dir (no syslog/journald here).
LIBVIRTD_CONF = {
    "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
}


def _override(conf: Path, settings: dict[str, str]) -> None:
    """Set keys in a libvirt .conf file, dropping any earlier assignment of the same keys."""
    keys = "|".join(map(re.escape, settings))
    kept, in_dropped_list = [], False
    for line in conf.read_text().splitlines():
        if in_dropped_list:
            # Continuation of a dropped multi-line list value: skip through its closing bracket.
            in_dropped_list = "]" not in line
        elif re.match(rf"\s*({keys})\s*=", line):
            in_dropped_list = "[" in line and "]" not in line
        else:
            kept.append(line)
    kept.append("# sandbox settings")
    kept.extend(f"{key} = {value}" for key, value in settings.items())
    conf.write_text("\n".join(kept) + "\n")


def _populate_etc(etc: Path, host_uuid: str) -> None:
    """Copy the real /etc/libvirt, minus anything that would start or define objects on boot.

    All nodes share one network namespace, so no node may start the 'default' network (virbr0),
    and domains or pools defined on the real machine must not appear on every node.
    """
    shutil.copytree(REAL_LIBVIRT_ETC, etc, symlinks=True)
    for pattern in (
        "qemu/networks/autostart/*",
        "qemu/autostart/*",
        "qemu/*.xml",
        "storage/autostart/*",
        "storage/*.xml",
    ):
        for path in etc.glob(pattern):
            path.unlink()
    _override(etc / "qemu.conf", QEMU_CONF)
    # Every node would report the machine's one SMBIOS UUID; libvirt refuses to migrate a domain
    # between hosts with the same UUID, so each node gets its own.
    _override(etc / "libvirtd.conf", {**LIBVIRTD_CONF, "host_uuid": f'"{host_uuid}"'})


def prepare(node: Node, secondary: Path) -> None:
    """Create the node's private directories and register its bind mounts (holder not yet started)."""
    node.private_dir("/run/libvirt", "run-libvirt")
    lib = node.private_dir("/var/lib/libvirt", "var-lib-libvirt")
    for sub in ("images", "qemu", "boot"):
        (lib / sub).mkdir(exist_ok=True)
    etc = node.dir / "etc-libvirt"
    if not etc.exists():
        _populate_etc(etc, str(uuid.uuid4()))
    node.mounts.append(Mount(str(etc), "/etc/libvirt"))
    (node.private_dir("/var/log/libvirt", "var-log-libvirt") / "qemu").mkdir(exist_ok=True)
    (node.private_dir("/var/cache/libvirt", "var-cache-libvirt") / "qemu").mkdir(exist_ok=True)
    node.private_dir(PRIMARY_POOL, "data01-primary")
    node.mounts.append(Mount(str(secondary), SECONDARY))
    node.private_home()


def ssh_client_config(node: Node, key: Path, known_hosts: Path) -> None:
    """The node's root SSH client settings, for libvirt's ``qemu+ssh://`` migration connection from
    one hypervisor to another (over loopback, to the other node's sshd): the sandbox key, and its
    known_hosts with strict checking."""
    ssh = node.dir / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    config = ssh / "config"
    config.write_text(
        f"Host *\n    IdentityFile {key}\n    UserKnownHostsFile {known_hosts}\n"
        "    StrictHostKeyChecking yes\n    BatchMode yes\n"
    )
    config.chmod(0o600)


def migration_data(address: str) -> dict[str, object]:
    """Host data for moving VMs between sandbox hypervisors.

    ``migration_uri``: the libvirt of the node, reached over SSH on its loopback address.
    ``migration_address``: where the destination's qemu listens for the migration stream. Every
    libvirtd (and so every qemu) runs in the cluster network namespace, whose own loopback carries
    127.0.0.0/8: the node's loopback address there is distinct per node and never leaves the
    namespace. ``migration_unsafe``: /secondary is a bind mount, which libvirt cannot recognise as
    shared storage; the cache mode of its disks is checked by the build's preflight instead.
    """
    return {
        "migration_uri": f"qemu+ssh://root@{address}/system",
        "migration_address": address,
        "migration_unsafe": True,
    }


def capabilities_dir(node: Node) -> Path:
    return node.dir / "var-cache-libvirt" / "qemu" / "capabilities"


def copy_capabilities(source: Path, target: Path) -> None:
    """Copy libvirt's probed QEMU capabilities so a libvirtd can skip the slow probe (seconds per binary).

    libvirt validates each cached entry against the qemu and libvirtd binaries, the kernel and
    the host CPU, and re-probes stale ones, so copying between nodes of one machine (or from an
    earlier run) is safe.
    """
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, dirs_exist_ok=True)


def start_libvirt(node: Node, netns: str | None = None) -> None:
    """Start virtlogd then libvirtd inside the node (and the cluster network namespace at path netns,
    where libvirtd's VMs get their taps), and wait until libvirtd answers on its socket."""
    for daemon in ("virtlogd", "libvirtd"):
        pid_file = node.dir / f"{daemon}.pid"
        pid_file.unlink(missing_ok=True)
        node.run([f"/usr/sbin/{daemon}", "--daemon", "--pid-file", str(pid_file)], netns=netns)
        pid = proc.wait_for(lambda f=pid_file: proc.read_pid_file(f), f"{daemon} on {node.name}", timeout=15)
        node.record_daemon(daemon, pid)
    socket = node.dir / "run-libvirt" / "libvirt-sock"
    proc.wait_for(socket.exists, f"libvirtd socket on {node.name}", timeout=30)
    # The first call probes QEMU capabilities (cached afterwards); it proves libvirtd really works.
    proc.wait_for(
        lambda: virsh(node, "version", check=False).returncode == 0,
        f"libvirtd on {node.name} to answer (log: {node.dir / 'var-log-libvirt/libvirtd.log'})",
        timeout=60,
        interval=0.2,
    )


def virsh(
    node: Node, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return node.run(["virsh", "-c", LIBVIRT_URI, *args], check=check, timeout=timeout)


def libvirt_version(node: Node) -> dict[str, str]:
    """Library and hypervisor versions as reported by `virsh version`."""
    out = virsh(node, "version", check=False, timeout=15).stdout
    info = {}
    for line in out.splitlines():
        if line.startswith("Using library:"):
            info["libvirt"] = line.split()[-1]
        elif line.startswith("Running hypervisor:"):
            info["hypervisor"] = line.split(":", 1)[1].strip()
    return info
