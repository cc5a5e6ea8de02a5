"""Host machine checks: Debian packages, KVM availability, mountpoints, free addresses."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import subprocess
from pathlib import Path

from .proc import SandboxError

log = logging.getLogger("sandbox")

REQUIRED_PACKAGES = (
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    # The management node's configuration comes from deploys/mgmt_server.py, which installs the
    # dnsmasq package when missing; installed here, that deploy changes nothing on the machine.
    "dnsmasq",
    "dnsmasq-utils",
    "busybox-static",
    "iproute2",
    "openssh-server",
    "openssh-client",
    "python3-libvirt",
    "util-linux",
)

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


def missing_packages(packages: tuple[str, ...] = REQUIRED_PACKAGES) -> list[str]:
    """Packages dpkg does not report as installed (one dpkg-query call for all of them)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *packages],
        capture_output=True,
        text=True,
    )
    installed = {
        line.split()[0].split(":")[0]
        for line in proc.stdout.splitlines()
        if line.endswith("install ok installed")
    }
    return [p for p in packages if p not in installed]


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, stdin=subprocess.DEVNULL).returncode == 0


def ensure_packages() -> None:
    """Install missing Debian packages; refresh the package lists only if the first try fails."""
    missing = missing_packages()
    if not missing:
        return
    log.info("installing Debian packages: %s", " ".join(missing))
    install = ("install", "-y", "-q", "--no-install-recommends", *missing)
    if _apt(*install):
        return
    if not (_apt("update", "-q") and _apt(*install)):
        raise SandboxError(f"apt-get could not install: {' '.join(missing)}")


def kvm_usable() -> bool:
    """True if /dev/kvm opens read-write and speaks the stable KVM API (qemu runs as root here)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def ensure_mountpoint(path: Path, *, is_file: bool = False) -> list[Path]:
    """Create a mountpoint (and missing parents) on the real root fs.

    Returns what was created, parents first, so down can remove exactly that again.
    """
    created = []
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir(mode=0o755)
            created.append(parent)
    if not path.exists():
        if is_file:
            path.touch(mode=0o644)
        else:
            path.mkdir(mode=0o755)
        created.append(path)
    return created


def remove_mountpoint(path: Path) -> None:
    """Remove a mountpoint the sandbox created, but only while it is still empty."""
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT, errno.EBUSY):
            raise


def check_port_free(address: str, port: int, kind: int = socket.SOCK_STREAM) -> None:
    """Fail early with a clear message if address:port is taken (e.g. a real sshd on 0.0.0.0:22)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # Like sshd itself: connections in TIME_WAIT from a previous run must not count as busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise SandboxError(
                f"{address}:{port} is not free ({exc.strerror}); is another service bound?"
            ) from exc
