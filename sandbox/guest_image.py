"""The sandbox's bootable guest: a Debian cloud kernel, a busybox + sshd initramfs and an ext4 root disk.

Everything comes from Debian packages on this machine: the kernel package that ``linux-image-cloud-amd64``
depends on (``apt-get download`` + ``dpkg-deb -x``, never installed), ``busybox-static``, the machine's own
``/usr/sbin/sshd`` and ``sftp-server`` with the libraries ``ldd`` names, and the kernel modules for
virtio-pci/net/blk/balloon and the ACPI power button (``depmod -b`` + ``modprobe --show-depends`` order).

API:

``build(cache_dir=None) -> GuestImage``
    Build (or find in the cache) the kernel, the initramfs and the root tree. Keyed by the kernel
    package and version, the busybox and openssh versions and the digest of the init scripts, so a
    second call costs a few apt/dpkg queries. ``GuestImage.kernel``/``initrd`` are files to boot with
    direct kernel boot and ``GuestImage.cmdline`` the kernel command line (``root=/dev/vda
    console=ttyS0 ...``); ``cmdline_with(clientid="shared")`` adds options.

``make_rootfs(path, image, authorized_key, data_mib=1024, size_gib=40, hostname=None) -> str``
    Write the raw ext4 disk image to boot as ``vda``: the root tree, ``/data.bin`` with ``data_mib`` MiB
    of random data, ``/root/.ssh/authorized_keys`` holding ``authorized_key``, a fresh SSH host key and,
    if given, ``/etc/hostname``. Sparse, ``size_gib`` GiB. Returns the host public key line (for
    known_hosts). The keyless part (``base_disk``, ``mkfs.ext4 -d``, no mount) is made once per image
    and size into the cache; each call copies it (``cp --sparse=always``) and writes the keys with
    ``debugfs -w``. Measured for 1024 MiB / 40 GiB: about 9 s the first time, 1.5 s after.

``install(image, directory) -> GuestImage``
    Copy kernel and initrd into ``directory`` (e.g. the shared secondary directory), only when changed.

``choose_accelerator(image, work_dir, cache=True) -> Accel``
    Boot the guest with qemu directly (no network, serial to a file) with KVM and ``-cpu max``, then
    ``qemu64``, then TCG; the first that prints ``KVMQ-BOOTED`` within a bound wins. ``Accel``
    gives libvirt's ``domain_type`` (``kvm``/``qemu``), the ``<cpu>`` element (``cpu_xml``) and the
    measured ``boot_seconds``. Cached next to the image, keyed by the qemu binary. ``qemu_argv`` is the
    same qemu command line, with an optional tap NIC and monitor socket, for tests.

Guest behaviour (stage 1 ``sandbox/guest_init.sh``, then busybox init and ``/etc/init.d/rcS``):
modules loaded, ``/dev/vda`` mounted rw as ``/`` (switch_root), hostname from the disk's
``/etc/hostname`` when present, sshd (keys from the disk), acpid mapping the power button to
sync + read-only remount + ``poweroff -f``, then ``KVMQ-BOOTED`` on the console, then
``udhcpc -b -i eth0`` (sending the hostname, and with ``kvmq.clientid=shared`` on the cmdline the fixed
client id ``SHARED_CLIENT_ID`` instead of busybox's ``01:<mac>``). The DHCP script sets address,
route, ``/run/resolv.conf`` (``/etc/resolv.conf`` links to it) and, without ``/etc/hostname`` on the
disk, the host name offered. At the first lease it prints once ``KVMQ-READY ip=<ip> hostname=<name>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .proc import SandboxError, run

log = logging.getLogger("sandbox")

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_balloon", "ext4", "button", "evdev")
# A cloud-init seed on a virtio-scsi cdrom (operations/cloud_init.py): the guest reads local-hostname.
MODULES += ("virtio_scsi", "sr_mod", "isofs")
SSH_BINARIES = ("/usr/sbin/sshd", "/usr/lib/openssh/sftp-server")
BUSYBOX = Path("/bin/busybox")
CMDLINE = "root=/dev/vda rw console=ttyS0 quiet"
# What clones that share one DHCP client id send with kvmq.clientid=shared: the id busybox derives
# from the base VM's MAC (01:52:54:00:00:00:01), as clones of one image would.
SHARED_CLIENT_ID = "0152540000000001"
READY_MARKER = "KVMQ-READY"
BOOTED_MARKER = "KVMQ-BOOTED"
MIB = 1 << 20
GIB = 1 << 30
# Bump when the layout of the build changes in a way the inputs do not show.
BUILD_FORMAT = 1

STAGE1 = Path(__file__).with_name("guest_init.sh")

INITTAB = """\
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/etc/acpi/PWRF/00000080
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
"""

RCS = """\
#!/bin/sh
# Stage 2, run by busybox init from the root disk (or the initramfs when there is no disk).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
grep -q '^sysfs /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p -m 0755 /run/sshd /run/kvmq
ln -sf /proc/mounts /run/mtab 2>/dev/null

if [ -s /etc/hostname ]; then
    hostname -F /etc/hostname
fi
# Without /etc/hostname, a NoCloud seed's local-hostname (volume cidata on a virtio-scsi cdrom) names it.
if [ ! -s /etc/hostname ] && ls /sys/bus/virtio/drivers/virtio_scsi 2>/dev/null | grep -q '^virtio'; then
    tries=30
    while [ ! -b /dev/sr0 ] && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
    mkdir -p /run/kvmq/seed
    if [ -b /dev/sr0 ] && mount -t iso9660 -o ro /dev/sr0 /run/kvmq/seed 2>/dev/null; then
        seeded=$(sed -n 's/^local-hostname: *//p' /run/kvmq/seed/meta-data 2>/dev/null)
        [ -n "$seeded" ] && hostname "$seeded" && echo "$seeded" > /run/kvmq/seed-hostname
        umount /run/kvmq/seed
    fi
fi
ip link set lo up

acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

if [ -s /etc/ssh/ssh_host_ed25519_key ]; then
    /usr/sbin/sshd -E /run/sshd.log
    tries=100
    # LISTEN (0A) on port 22 (0016) in /proc/net/tcp: sshd daemonizes before it binds.
    until grep -q ':0016 00000000:0000 0A' /proc/net/tcp; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { echo "KVMQ-ERROR sshd is not listening" > /dev/console; break; }
        sleep 0.1
    done
else
    echo "KVMQ-ERROR no SSH host key on the root disk" > /dev/console
fi
echo "KVMQ-BOOTED hostname=$(hostname)" > /dev/console

set --
{ [ -s /etc/hostname ] || [ -s /run/kvmq/seed-hostname ]; } && set -- -x "hostname:$(hostname)"
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kvmq.clientid=shared) set -- "$@" -x "61:SHARED_CLIENT_ID" ;;
    esac
done
if [ -e /sys/class/net/eth0 ]; then
    udhcpc -b -i eth0 -s /etc/kvmq/dhcp.sh -p /run/udhcpc.pid -t 4 -T 1 -A 2 "$@" > /run/udhcpc.log 2>&1
fi
""".replace("SHARED_CLIENT_ID", SHARED_CLIENT_ID)

DHCP_SCRIPT = """\
#!/bin/sh
# udhcpc event script: $interface $ip $mask $router $dns $domain $hostname.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
            ip addr flush dev "$interface"
            ip addr add "$ip/$mask" dev "$interface"
        fi
        ip link set "$interface" up
        for r in $router; do
            ip route replace default via "$r" dev "$interface"
            break
        done
        {
            [ -n "$domain" ] && echo "search $domain"
            for d in $dns; do echo "nameserver $d"; done
        } > /run/resolv.conf.new
        mv /run/resolv.conf.new /run/resolv.conf
        if [ ! -s /etc/hostname ] && [ ! -s /run/kvmq/seed-hostname ] && [ -n "$hostname" ]; then
            hostname "$hostname"
        fi
        echo "$ip" > /run/kvmq/lease
        if mkdir /run/kvmq/ready 2>/dev/null; then
            echo "KVMQ-READY ip=$ip hostname=$(hostname)" > /dev/console
        fi
        ;;
esac
exit 0
"""

POWER_BUTTON = """\
#!/bin/sh
# ACPI power button (busybox acpid -c /etc/acpi): a clean, immediate poweroff.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
echo "KVMQ-POWEROFF" > /dev/console
[ -s /run/udhcpc.pid ] && kill "$(cat /run/udhcpc.pid)" 2>/dev/null
killall sshd 2>/dev/null
sync
umount -a -r 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
poweroff -f
"""

SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
"""

STATIC_FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "etc/kvmq/dhcp.sh": (DHCP_SCRIPT, 0o755),
    "etc/acpi/PWRF/00000080": (POWER_BUTTON, 0o755),
    "etc/ssh/sshd_config": (SSHD_CONFIG, 0o644),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n", 0o644),
    "etc/group": ("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
    "etc/shadow": ("root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n", 0o600),
    "etc/hosts": ("127.0.0.1 localhost\n::1 localhost\n", 0o644),
    "etc/nsswitch.conf": ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0o644),
    "etc/shells": ("/bin/sh\n", 0o644),
}


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str
    tree: Path
    key: str

    def cmdline_with(self, clientid: str | None = None) -> str:
        """The command line, with ``kvmq.clientid=shared`` when clones should share one client id."""
        if clientid is None:
            return self.cmdline
        if clientid != "shared":
            raise ValueError(f"clientid: only 'shared' is supported, not {clientid!r}")
        return f"{self.cmdline} kvmq.clientid=shared"


@dataclass(frozen=True)
class Accel:
    domain_type: str  # libvirt <domain type=...>: "kvm" or "qemu"
    cpu_model: str  # qemu -cpu value
    cpu_xml: str  # libvirt <cpu> element for that model
    qemu_args: tuple[str, ...]
    boot_seconds: float


# --- pure helpers -----------------------------------------------------------------------------------


def parse_depends(text: str, package: str = KERNEL_META_PACKAGE) -> str:
    """The one kernel package name from ``apt-cache depends linux-image-cloud-amd64``."""
    names = [
        m.group(1)
        for m in re.finditer(r"^\s*\|?Depends:\s*(linux-image-[0-9][^\s<>]*)\s*$", text, re.MULTILINE)
    ]
    if len(names) != 1:
        found = names or "none"
        raise SandboxError(f"{package}: expected one linux-image-<version> dependency, found {found}")
    return names[0]


def parse_show_depends(text: str, module_root: Path) -> list[str]:
    """Module files in load order from ``modprobe --show-depends`` output, relative to module_root.

    ``builtin NAME`` lines need nothing loaded; a module listed twice is loaded once, first time wins.
    """
    order: list[str] = []
    root = str(module_root).rstrip("/") + "/"
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] == "builtin":
            continue
        if words[0] != "insmod" or len(words) < 2:
            raise SandboxError(f"unexpected modprobe --show-depends line: {line!r}")
        path = words[1]
        if not path.startswith(root):
            raise SandboxError(f"module {path} is outside {root}")
        rel = path[len(root) :]
        if rel not in order:
            order.append(rel)
    return order


def parse_ldd(text: str) -> list[str]:
    """Absolute library paths (and the dynamic loader) from ``ldd`` output; the vDSO has no file."""
    libs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if "not found" in line:
            raise SandboxError(f"ldd: {line}")
        m = re.match(r"^\S+\s+=>\s+(/\S+)\s+\(", line) or re.match(r"^(/\S+)\s+\(", line)
        if m and m.group(1) not in libs:
            libs.append(m.group(1))
    return libs


def cache_key(inputs: dict[str, str]) -> str:
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def scripts_digest() -> str:
    h = hashlib.sha256(STAGE1.read_bytes())
    for rel, (text, mode) in sorted(STATIC_FILES.items()):
        h.update(f"\0{rel}\0{mode:o}\0".encode() + text.encode())
    return h.hexdigest()[:16]


def _cpio_header(name: str, mode: int, size: int, ino: int, nlink: int = 1) -> bytes:
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(raw), 0)
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + raw
    return header + b"\0" * (-len(header) % 4)


def cpio_entries(tree: Path) -> Iterator[tuple[str, int, bytes]]:
    """(name, mode, data) for every path under tree, parents first; symlink data is the target."""
    yield ".", stat.S_IFDIR | 0o755, b""
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        base = Path(dirpath)
        for entry in sorted(dirnames) + sorted(filenames):
            path = base / entry
            rel = str(path.relative_to(tree))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                yield rel, st.st_mode, os.readlink(path).encode()
            elif stat.S_ISDIR(st.st_mode):
                yield rel, st.st_mode, b""
            elif stat.S_ISREG(st.st_mode):
                yield rel, st.st_mode, path.read_bytes()
            else:
                raise SandboxError(f"{path}: only files, directories and symlinks go into the initramfs")


def write_cpio(entries: Iterable[tuple[str, int, bytes]], out: Path) -> None:
    """A gzip-compressed newc cpio archive, as the kernel unpacks an initramfs, owned by root."""
    with gzip.open(out, "wb", compresslevel=6) as f:
        ino = 1
        for name, mode, data in entries:
            f.write(_cpio_header(name, mode, len(data), ino, 2 if stat.S_ISDIR(mode) else 1))
            f.write(data + b"\0" * (-len(data) % 4))
            ino += 1
        f.write(_cpio_header("TRAILER!!!", 0, 0, 0))


# --- build --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    from .cluster import DEFAULT_CACHE_DIR

    return Path(os.environ.get("KVM_SANDBOX_CACHE", DEFAULT_CACHE_DIR)) / "guest"


def kernel_package() -> str:
    """Resolve the kernel package, running ``apt-get update`` once when the name is unknown."""
    for attempt in range(2):
        proc = run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60, check=False)
        if proc.returncode == 0:
            with contextlib.suppress(SandboxError):
                return parse_depends(proc.stdout)
        if attempt == 0:
            run(["apt-get", "update", "-qq"], timeout=300)
    raise SandboxError(f"{KERNEL_META_PACKAGE}: apt does not know it, even after apt-get update")


def package_version(package: str) -> str:
    proc = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", package], check=False)
    words = proc.stdout.split()
    if proc.returncode != 0 or words[:3] != ["install", "ok", "installed"]:
        raise SandboxError(f"Debian package {package} is not installed (apt-get install {package})")
    return words[3]


def _candidate_version(package: str) -> str:
    proc = run(["apt-cache", "policy", package], timeout=60)
    m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
    if not m or m.group(1) == "(none)":
        raise SandboxError(f"{package}: apt has no candidate version")
    return m.group(1)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_kernel(cache_dir: Path, package: str, version: str) -> tuple[Path, str]:
    """Download (``apt-get download PACKAGE=VERSION``) and unpack the kernel package once.

    Returns (unpacked dir, kernel release). Nothing is installed on the machine.
    """
    unpacked = cache_dir / "kernel" / f"{package}_{version.replace(':', '%3a')}"
    if not (unpacked / ".complete").exists():
        debs = cache_dir / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        # apt's _apt user must be able to write the download directory.
        with contextlib.suppress(KeyError, OSError):
            import pwd

            os.chown(debs, pwd.getpwnam("_apt").pw_uid, 0)
        deb = _find_deb(debs, package, version)
        if deb is None:
            proc = subprocess.run(
                ["apt-get", "download", "-q", f"{package}={version}"],
                cwd=debs,
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            if proc.returncode != 0:
                raise SandboxError(f"apt-get download {package}={version} failed: {proc.stderr.strip()}")
            deb = _find_deb(debs, package, version)
        if deb is None:
            raise SandboxError(f"apt-get download {package}={version} left no such .deb in {debs}")
        if unpacked.exists():
            shutil.rmtree(unpacked)
        unpacked.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(unpacked)], timeout=300)
        (unpacked / ".complete").touch()
    releases = [p.name for p in (unpacked / "lib" / "modules").iterdir() if p.is_dir()]
    if len(releases) != 1:
        raise SandboxError(f"{package}: expected one kernel release in lib/modules, found {releases}")
    return unpacked, releases[0]


def _find_deb(debs: Path, package: str, version: str) -> Path | None:
    for deb in sorted(debs.glob(f"{package}_*.deb")):
        fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version"]).stdout
        if fields.split() == ["Package:", package, "Version:", version]:
            return deb
    return None


def module_order(unpacked: Path, kver: str, modules: Iterable[str] = MODULES) -> list[str]:
    """Module files (relative to lib/modules/KVER) to insmod, dependencies first."""
    run(["depmod", "-b", str(unpacked), kver], timeout=120)
    order: list[str] = []
    root = unpacked / "lib" / "modules" / kver
    for module in modules:
        proc = run(["modprobe", "-d", str(unpacked), "-S", kver, "--show-depends", module], timeout=60)
        for rel in parse_show_depends(proc.stdout, root):
            if rel not in order:
                order.append(rel)
    return order


def _copy_file(src: Path, tree: Path, dest: str | None = None) -> None:
    target = tree / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), target)


def _write(tree: Path, rel: str, text: str, mode: int) -> None:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_tree(tree: Path) -> None:
    """The guest's userland: busybox with its applet links, sshd, sftp-server, libraries, /etc."""
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib64",
        "etc",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "newroot",
        "root",
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "root").chmod(0o700)
    (tree / "tmp").chmod(0o1777)
    _copy_file(BUSYBOX, tree, "/bin/busybox")
    applets = run([str(BUSYBOX), "--list-full"]).stdout.split()
    for rel in applets:
        link = tree / rel
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    libs: list[str] = []
    for binary in SSH_BINARIES:
        _copy_file(Path(binary), tree)
        for lib in parse_ldd(run(["ldd", binary]).stdout):
            if lib not in libs:
                libs.append(lib)
    for lib in libs:
        _copy_file(Path(lib), tree)
    (tree / "var" / "run").symlink_to("/run")
    (tree / "etc" / "resolv.conf").symlink_to("/run/resolv.conf")
    (tree / "etc" / "mtab").symlink_to("/proc/mounts")
    for rel, (text, mode) in STATIC_FILES.items():
        _write(tree, rel, text, mode)


def build_inputs() -> dict[str, str]:
    package = kernel_package()
    return {
        "format": str(BUILD_FORMAT),
        "kernel_package": package,
        "kernel_version": _candidate_version(package),
        "busybox": package_version("busybox-static"),
        "openssh": package_version("openssh-server"),
        "scripts": scripts_digest(),
        "modules": ",".join(MODULES),
        "cmdline": CMDLINE,
    }


def _load(directory: Path) -> GuestImage | None:
    meta_file = directory / "image.json"
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    return GuestImage(
        directory=directory,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=meta["cmdline"],
        kernel_version=meta["kernel_version"],
        tree=directory / "tree",
        key=directory.name,
    )


def build(cache_dir: Path | None = None) -> GuestImage:
    """Build the guest once per set of inputs into cache_dir; later calls return the cached build."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    inputs = build_inputs()
    key = cache_key(inputs)
    directory = cache_dir / key
    with _locked(cache_dir):
        image = _load(directory)
        if image:
            return image
        unpacked, kver = fetch_kernel(cache_dir, inputs["kernel_package"], inputs["kernel_version"])
        order = module_order(unpacked, kver)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        try:
            tree = work / "tree"
            build_tree(tree)
            # The initramfs: the same userland plus stage 1 and the modules; the disk gets the tree.
            initramfs = work / "initramfs"
            shutil.copytree(tree, initramfs, symlinks=True)
            shutil.copy2(STAGE1, initramfs / "init")
            (initramfs / "init").chmod(0o755)
            mod_root = unpacked / "lib" / "modules" / kver
            for rel in order:
                _copy_file(mod_root / rel, initramfs, f"/lib/modules/{kver}/{rel}")
            _write(initramfs, "etc/kvmq/modules", "".join(f"{rel}\n" for rel in order), 0o644)
            write_cpio(cpio_entries(initramfs), work / "initrd.img")
            shutil.rmtree(initramfs)
            shutil.copy2(unpacked / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
            meta = {"inputs": inputs, "kernel_version": kver, "modules": order, "cmdline": CMDLINE}
            (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
            work.chmod(0o755)
            if directory.exists():
                shutil.rmtree(directory)
            work.rename(directory)
            _prune(cache_dir, keep_image=key, keep_kernel=unpacked)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    image = _load(directory)
    assert image is not None
    return image


def _prune(cache_dir: Path, keep_image: str, keep_kernel: Path, keep: int = 2) -> None:
    """Drop all but the `keep` newest builds (with their cached root disks) and older kernel packages.

    Two survive so that two checkouts with different init scripts do not rebuild each other's away.
    """
    builds = [
        e for e in cache_dir.iterdir() if re.fullmatch(r"[0-9a-f]{16}", e.name) and e.name != keep_image
    ]
    builds.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    kernels = {keep_kernel.name}
    for entry in builds[: keep - 1]:
        with contextlib.suppress(OSError, ValueError, KeyError):
            inputs = json.loads((entry / "image.json").read_text())["inputs"]
            kernels.add(f"{inputs['kernel_package']}_{inputs['kernel_version'].replace(':', '%3a')}")
    for entry in builds[keep - 1 :]:
        shutil.rmtree(entry, ignore_errors=True)
    for entry in (cache_dir / "kernel").iterdir():
        if entry.name not in kernels:
            shutil.rmtree(entry, ignore_errors=True)
    packages = {name.split("_", 1)[0] for name in kernels}
    for deb in (cache_dir / "debs").glob("*.deb"):
        if deb.name.split("_", 1)[0] not in packages:
            deb.unlink()


def install(image: GuestImage, directory: Path) -> GuestImage:
    """Copy kernel and initrd into directory (e.g. the shared secondary dir), replacing stale copies."""
    directory.mkdir(parents=True, exist_ok=True)
    placed = {}
    for src, name in ((image.kernel, "guest-vmlinuz"), (image.initrd, "guest-initrd.img")):
        dest = directory / name
        if not (dest.exists() and _same(src, dest)):
            tmp = directory / f".{name}.partial"
            shutil.copyfile(src, tmp)
            tmp.chmod(0o644)
            tmp.rename(dest)
        placed[name] = dest
    return GuestImage(
        directory=image.directory,
        kernel=placed["guest-vmlinuz"],
        initrd=placed["guest-initrd.img"],
        cmdline=image.cmdline,
        kernel_version=image.kernel_version,
        tree=image.tree,
        key=image.key,
    )


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


# --- root disk ----------------------------------------------------------------------------------------


def _write_random_file(path: Path, data_mib: int) -> None:
    """data_mib MiB from os.urandom; getrandom() and pwrite() release the GIL, so threads use every core."""
    chunk = 4 * MIB
    end = data_mib * MIB

    def fill(offset: int) -> None:
        data = memoryview(os.urandom(min(chunk, end - offset)))
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(fill, range(0, end, chunk)))
    finally:
        os.close(fd)


def base_disk(image: GuestImage, data_mib: int, size_gib: int) -> Path:
    """The root disk without any key, made once per (image, data_mib, size_gib) next to the image.

    ``mkfs.ext4 -d`` copies the root tree and ``/data.bin`` (random, incompressible) into a sparse
    raw file; lazy inode table and journal init keep the unwritten parts holes.
    """
    disk = image.directory / f"rootfs-{data_mib}m-{size_gib}g.img"
    with _locked(image.directory):
        if disk.exists():
            return disk
        work = Path(tempfile.mkdtemp(prefix=".rootfs.", dir=image.directory))
        try:
            root = work / "root"
            shutil.copytree(image.tree, root, symlinks=True)
            (root / "root" / ".ssh").mkdir(mode=0o700)
            _write_random_file(root / "data.bin", data_mib)
            partial = work / "disk.img"
            with open(partial, "wb") as f:
                f.truncate(size_gib * GIB)
            options = "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1"
            run(["mkfs.ext4", "-q", "-F", "-L", "kvmq-root", "-E", options, "-d", str(root), str(partial)],
                timeout=900)  # fmt: skip
            partial.rename(disk)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return disk


def debugfs_script(files: dict[str, Path]) -> str:
    """debugfs commands replacing each guest path with a local file (mode and owner follow the file)."""
    lines = []
    for guest_path, local in files.items():
        for value in (guest_path, str(local)):
            if not re.fullmatch(r"/[A-Za-z0-9._/+-]+", value):
                raise SandboxError(f"{value!r}: not a plain path debugfs can take")
        lines += [f"rm {guest_path}", f"write {local} {guest_path}"]
    return "\n".join(lines) + "\n"


def make_rootfs(
    path: Path,
    image: GuestImage,
    authorized_key: str,
    data_mib: int = 1024,
    size_gib: int = 40,
    hostname: str | None = None,
) -> str:
    """Write the raw ext4 root disk at path; return the guest's SSH host public key line.

    A copy of ``base_disk`` (cached) into which ``debugfs -w`` writes /root/.ssh/authorized_keys, a
    fresh SSH host key and, if given, /etc/hostname: no mount, no second mkfs.
    """
    path = Path(path)
    key_line = authorized_key.strip()
    if not re.fullmatch(r"(ssh-|ecdsa-|sk-)[\x21-\x7e]+ [A-Za-z0-9+/=]+( [^\n]*)?", key_line):
        raise ValueError(f"authorized_key: not one OpenSSH public key line: {authorized_key!r}")
    if data_mib < 0 or size_gib < 1 or (data_mib + 64) * MIB > size_gib * GIB:
        raise ValueError(f"data_mib={data_mib} does not fit in a size_gib={size_gib} disk")
    if hostname is not None and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", hostname):
        raise ValueError(f"hostname: {hostname!r} is not a host name")
    source = base_disk(image, data_mib, size_gib)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        partial = work / "disk.img"
        run(["cp", "--sparse=always", str(source), str(partial)], timeout=600)
        keys = work / "authorized_keys"
        keys.write_text(key_line + "\n")
        keys.chmod(0o600)
        hostkey = work / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmq-guest", "-f", str(hostkey)])
        files = {
            "/root/.ssh/authorized_keys": keys,
            "/etc/ssh/ssh_host_ed25519_key": hostkey,
            "/etc/ssh/ssh_host_ed25519_key.pub": hostkey.with_name(hostkey.name + ".pub"),
        }
        if hostname:
            (work / "hostname").write_text(hostname + "\n")
            (work / "hostname").chmod(0o644)
            files["/etc/hostname"] = work / "hostname"
        (work / "cmds").write_text(debugfs_script(files))
        run(["debugfs", "-w", "-f", str(work / "cmds"), str(partial)], timeout=60)
        # debugfs reports errors on stderr but exits 0: read every file back.
        for guest_path, local in files.items():
            got = run(["debugfs", "-R", f"cat {guest_path}", str(partial)], timeout=60).stdout
            if got != local.read_text():
                raise SandboxError(f"{path}: writing {guest_path} into the disk image failed")
        partial.rename(path)
        return hostkey.with_name(hostkey.name + ".pub").read_text().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- accelerator --------------------------------------------------------------------------------------

QEMU64_XML = "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>"
# (libvirt domain type, qemu -cpu, libvirt <cpu>, seconds allowed to reach KVMQ-BOOTED)
CANDIDATES = (
    ("kvm", "max", "<cpu mode='maximum' check='none'/>", 12.0),
    ("kvm", "qemu64", QEMU64_XML, 12.0),
    ("qemu", "qemu64", QEMU64_XML, 120.0),
)


def qemu_argv(
    image: GuestImage,
    disk: Path,
    accel: str,
    cpu: str,
    serial_log: Path,
    *,
    cmdline: str | None = None,
    nic: tuple[str, str] | None = None,
    snapshot: bool = True,
    monitor: Path | None = None,
) -> list[str]:
    """qemu booting image from disk, no display, console to serial_log.

    No network unless nic = (tap name, MAC); snapshot=True leaves the disk unchanged; monitor is a
    unix socket path for the human monitor (``system_powerdown`` presses the power button).
    """
    argv = [
        "qemu-system-x86_64",
        "-machine", f"pc,accel={'kvm' if accel == 'kvm' else 'tcg'}",
        "-cpu", cpu,
        "-m", "512",
        "-smp", "1",
        "-display", "none",
        "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline or image.cmdline,
        "-drive", f"file={disk},if=virtio,format=raw,snapshot={'on' if snapshot else 'off'}",
    ]  # fmt: skip
    argv += ["-monitor", f"unix:{monitor},server=on,wait=off"] if monitor else ["-monitor", "none"]
    if nic:
        tap, mac = nic
        argv += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no"]
        argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    else:
        argv += ["-nic", "none"]
    return argv


def boot_until(argv: list[str], serial_log: Path, marker: str, timeout: float) -> float | None:
    """Run qemu until marker shows in serial_log; seconds it took, or None. qemu is always killed."""
    serial_log.write_text("")
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/"
    )
    try:
        while time.monotonic() - start < timeout:
            if marker in serial_log.read_text(errors="replace"):
                return time.monotonic() - start
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def choose_accelerator(image: GuestImage, work_dir: Path | None = None, cache: bool = True) -> Accel:
    """Boot the guest under KVM (-cpu max, then qemu64), then TCG; return the first that boots."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise SandboxError("qemu-system-x86_64 is not installed")
    st = Path(qemu).stat()
    cache_file = image.directory / f"accel-{st.st_size}-{int(st.st_mtime)}.json"
    if cache and cache_file.exists():
        data = json.loads(cache_file.read_text())
        return Accel(**{**data, "qemu_args": tuple(data["qemu_args"])})
    owned = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="kvmq-accel.")) if owned else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        disk = work / "accel-root.img"
        make_rootfs(disk, image, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmqAccelProbeOnly probe", 0, 1)
        tried = []
        for domain_type, cpu, cpu_xml, bound in CANDIDATES:
            if domain_type == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
                tried.append(f"kvm/{cpu}: no /dev/kvm")
                continue
            serial = work / f"serial-{domain_type}-{cpu}.log"
            argv = qemu_argv(image, disk, domain_type, cpu, serial)
            started = time.monotonic()
            seconds = boot_until(argv, serial, BOOTED_MARKER, bound)
            log.info("guest boot under %s -cpu %s: %s after %.1f s", domain_type, cpu,
                     "booted" if seconds is not None else "failed", time.monotonic() - started)  # fmt: skip
            if seconds is not None:
                accel = Accel(domain_type, cpu, cpu_xml, tuple(argv[1:5]), round(seconds, 2))
                if cache:
                    cache_file.write_text(json.dumps(asdict(accel), indent=2) + "\n")
                return accel
            tail = serial.read_text(errors="replace")[-300:].strip().replace("\n", " | ")
            tail = tail or "no output"
            tried.append(f"{domain_type}/{cpu}: no {BOOTED_MARKER} within {bound:.0f} s ({tail})")
        raise SandboxError("the guest boots under no accelerator: " + "; ".join(tried))
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / "accel-root.img").unlink(missing_ok=True)
