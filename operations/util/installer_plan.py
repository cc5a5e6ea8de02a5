"""An installer VM: a new empty boot disk, an ISO from a storage pool as its cdrom, serial console, UEFI.

Pure: the ``Hypervisor`` fact and the settings in, the domain XML and one plan (one command) out. The
command creates the boot disk like every other disk (new file, 0600, no link followed, removed again
if a later step fails), defines the domain and starts it; a failing start undefines it again.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from pyinfra.api import QuoteString, StringCommand

from facts.util.host_state import HostState
from operations.util.disk_files import staged
from operations.util.disk_files import with_cleanup as with_cleanup
from operations.util.virsh import DEFAULT_TIMEOUT, all_of, bounded, q, session_limit, sh, virsh
from operations.util.vm_plan import VmPlan

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INTERFACE = re.compile(r"[A-Za-z0-9._-]{1,15}")
GRAPHICS = ("vnc", "none")
DOMAIN_TYPES = ("kvm", "qemu")
CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"


class InstallerError(ValueError):
    """A setting of the installer VM is invalid (the message names it)."""


@dataclass(frozen=True)
class InstallerSpec:
    vm: str
    iso: str  # volume name in iso_pool
    iso_pool: str
    pool: str  # pool of the new boot disk
    boot_size_gib: int = 40
    vcpus: int = 2
    memory_mib: int = 2048
    uefi: bool = True
    console: bool = True
    graphics: str = "vnc"
    bridge: str = "br0"
    domain_type: str = "kvm"

    def check(self) -> None:
        """Raise InstallerError naming the first bad setting; every pattern must match the whole value
        (``fullmatch``: ``$`` would let a trailing newline through)."""
        if not NAME.fullmatch(self.vm or ""):
            raise InstallerError(
                f"installer_name={self.vm!r}: letters, digits, '.', '_', '-', starting with a letter or "
                "digit, at most 63 characters"
            )
        for key, value in (("installer_iso", self.iso), ("installer_iso_pool", self.iso_pool),
                           ("installer_pool", self.pool)):  # fmt: skip
            if not value or "/" in value or value in (".", "..") or any(ord(c) < 32 for c in value):
                raise InstallerError(f"{key}={value!r}: expected a volume or pool name (no '/')")
        for key, number, low, high in (
            ("installer_boot_size_gib", self.boot_size_gib, 1, 65536),
            ("installer_vcpus", self.vcpus, 1, 4096),
            ("installer_memory_mib", self.memory_mib, 128, 16 * 1024 * 1024),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise InstallerError(f"{key}={number!r}: expected a whole number from {low} to {high}")
        if self.graphics not in GRAPHICS:
            raise InstallerError(
                f"installer_graphics={self.graphics!r}: expected one of {', '.join(GRAPHICS)}"
            )
        if self.domain_type not in DOMAIN_TYPES:
            raise InstallerError(
                f"installer_domain_type={self.domain_type!r}: expected one of {', '.join(DOMAIN_TYPES)}"
            )
        if self.bridge and not INTERFACE.fullmatch(self.bridge):
            raise InstallerError(f"installer_bridge={self.bridge!r}: expected an interface name (or empty)")

    @property
    def disk_name(self) -> str:
        """Named like every VM's boot disk, so the base VM's clones and delete know it."""
        return f"{self.vm}-vda.img"

    @property
    def console_log(self) -> str:
        return f"{CONSOLE_LOG_DIR}/{self.vm}-console.log"


def installer_xml(spec: InstallerSpec, disk_path: str, iso_path: str) -> str:
    """The domain: q35, boot disk first then the cdrom (an empty disk falls through to the ISO, an
    installed one boots itself), UEFI by firmware autoselection (``<os firmware='efi'>``: libvirt picks
    the OVMF/edk2 build from the firmware descriptors and gives the domain its own NVRAM from the
    template; secure boot off) or SeaBIOS, serial console on a pty logged to a file, VNC on 127.0.0.1."""
    root = ET.Element("domain", {"type": spec.domain_type})
    ET.SubElement(root, "name").text = spec.vm
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = str(spec.memory_mib)
    ET.SubElement(root, "currentMemory", {"unit": "MiB"}).text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu", {"placement": "static"}).text = str(spec.vcpus)
    os_element = ET.SubElement(root, "os", {"firmware": "efi"} if spec.uefi else {})
    if spec.uefi:
        firmware = ET.SubElement(os_element, "firmware")
        ET.SubElement(firmware, "feature", {"enabled": "no", "name": "secure-boot"})
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": "q35"}).text = "hvm"
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if spec.domain_type == "kvm":
        ET.SubElement(root, "cpu", {"mode": "host-passthrough", "check": "none"})
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(disk, "source", {"file": disk_path})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    ET.SubElement(disk, "boot", {"order": "1"})
    cdrom = ET.SubElement(devices, "disk", {"type": "file", "device": "cdrom"})
    ET.SubElement(cdrom, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(cdrom, "source", {"file": iso_path})
    ET.SubElement(cdrom, "target", {"dev": "sda", "bus": "sata"})
    ET.SubElement(cdrom, "readonly")
    ET.SubElement(cdrom, "boot", {"order": "2"})
    if spec.bridge:
        interface = ET.SubElement(devices, "interface", {"type": "bridge"})
        ET.SubElement(interface, "source", {"bridge": spec.bridge})
        ET.SubElement(interface, "model", {"type": "virtio"})
    if spec.console:
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        ET.SubElement(serial, "log", {"file": spec.console_log, "append": "on"})
        ET.SubElement(serial, "target", {"port": "0"})
        console = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    if spec.graphics == "vnc":
        graphics = ET.SubElement(
            devices, "graphics", {"type": "vnc", "autoport": "yes", "listen": "127.0.0.1"}
        )
        ET.SubElement(graphics, "listen", {"type": "address", "address": "127.0.0.1"})
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", {"type": "vga"})
    ET.SubElement(devices, "memballoon", {"model": "virtio"})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def installer_plan(
    spec: InstallerSpec, host: HostState, uri: str, timeout: int = DEFAULT_TIMEOUT
) -> VmPlan | None:
    """None when the domain exists (an installer is made once; a running or finished install is
    never touched), else the plan: create the boot disk, define, start."""
    if spec.vm in host.domains:
        return None
    plan = VmPlan(spec.vm)
    pools = host.pools
    pool = pools.get(spec.pool)
    if pool is None or not pool.path:
        plan.error = f"storage pool {spec.pool} is not defined on this host (see deploys/pools.py)"
        return plan
    if pools.get(spec.iso_pool) is None:
        plan.error = f"storage pool {spec.iso_pool} (installer_iso_pool) is not defined on this host"
        return plan
    volume = host.volumes.get(spec.iso_pool, {}).get(spec.iso)
    if volume is None or not volume.path:
        plan.error = (
            f"ISO {spec.iso} is not a volume of pool {spec.iso_pool} on this host "
            f"(copy it into {pools[spec.iso_pool].path})"
        )
        return plan
    disk_path = posixpath.join(pool.path, spec.disk_name)
    xml = installer_xml(spec, disk_path, volume.path)
    size = q(f"{spec.boot_size_gib}G")
    create = bounded(f"create {disk_path}", timeout, "truncate", "-s", size, "--", q(staged(disk_path)))
    define = sh(virsh(uri, "define", "/dev/stdin", timeout=timeout), ">/dev/null")
    start = sh(
        "{",
        virsh(uri, "start", spec.vm, timeout=timeout),
        ">/dev/null || {",
        virsh(uri, "undefine", "--nvram", spec.vm, timeout=timeout),
        ">/dev/null; false; }; }",
    )
    plan.command = with_cleanup([disk_path], pool.path, create, timeout, then=all_of([define, start]))
    plan.stdin = xml
    plan.limit = session_limit(5, timeout)
    plan.actions = [
        f"boot disk {disk_path} {spec.boot_size_gib} GiB",
        f"cdrom {volume.path}",
        "UEFI (OVMF, own NVRAM)" if spec.uefi else "BIOS",
        f"{spec.vcpus} vCPU(s), {spec.memory_mib} MiB",
        "define and start",
    ]
    if spec.console:
        console = StringCommand("virsh", "console", QuoteString(spec.vm)).get_raw_value()
        plan.notes.append(f"console: {console} (logged to {spec.console_log})")
    if spec.graphics == "vnc":
        display = StringCommand("virsh", "vncdisplay", QuoteString(spec.vm)).get_raw_value()
        plan.notes.append(f"VNC on 127.0.0.1: {display}, then an SSH tunnel")
    return plan
