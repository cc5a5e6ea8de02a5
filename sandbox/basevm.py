"""The base VM every hypervisor knows: a bootable root disk in /secondary and its domain XML."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from . import guest_image

BASE_MAC = "52:54:00:00:00:01"
CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"
# A second base domain on the same disk whose guests all send one DHCP client identifier, as
# clones of one image often do (systemd-networkd derives it from the shared /etc/machine-id).
SHARED_ID_SUFFIX = "-shared-id"
# guest_image.make_rootfs keeps this much of the disk for the file system itself.
ROOTFS_RESERVE_MIB = 64


def disk_name(vm: str) -> str:
    return f"{vm}-vda.img"


def console_log(vm: str) -> str:
    """Where a VM's serial console is logged on its hypervisor (clones get their own file)."""
    return f"{CONSOLE_LOG_DIR}/{vm}-console.log"


def create_disk(
    path: Path, image: guest_image.GuestImage, authorized_key: str, size_gib: int, data_mib: int
) -> str:
    """The base VM's root disk: the guest's ext4 root file system with data_mib of random data
    (so copy/clone operations move real bytes), sparse, size_gib large. Returns the guest's SSH
    host key line, which every clone shares."""
    return guest_image.make_rootfs(path, image, authorized_key, data_mib=data_mib, size_gib=size_gib)


def domain_xml(
    name: str,
    disk: str,
    accel: guest_image.Accel,
    boot: guest_image.GuestImage,
    *,
    cmdline: str | None = None,
    mac: str = BASE_MAC,
    memory_mib: int = 1024,
    current_mib: int = 1024,
    bridge: str = "br-cluster",
) -> str:
    """Domain XML for the bootable base VM: direct kernel boot (kernel and initrd from the shared
    secondary directory, root file system on vda), one NIC on the cluster bridge, the serial
    console logged to a file, a balloon, and the accelerator (and CPU model) chosen by booting.

    No graphics or video: a headless guest needs none, and VNC autoports of hosts sharing one
    network stack would clash.
    """
    return f"""<domain type='{escape(accel.domain_type)}'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{current_mib}</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(boot.kernel))}</kernel>
    <initrd>{escape(str(boot.initrd))}</initrd>
    <cmdline>{escape(cmdline or boot.cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  {accel.cpu_xml}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{escape(bridge)}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{escape(console_log(name))}'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""
