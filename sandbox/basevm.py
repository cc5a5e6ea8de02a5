"""The base VM every hypervisor knows: a sparse raw disk in /secondary and its domain XML."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 4 * MIB
BASE_MAC = "52:54:00:00:00:01"


def disk_name(vm: str) -> str:
    return f"{vm}-vda.img"


def create_disk(path: Path, size_gib: int, data_mib: int) -> None:
    """Create the sparse image once: zero first MiB, then data_mib of random data.

    The first MiB stays zero so SeaBIOS finds no boot sector and idles instead of executing
    garbage; the random data gives copy/clone operations real bytes to move.
    """
    size = size_gib * GIB
    if path.exists() and path.stat().st_size == size:
        return
    if (data_mib + 1) * MIB > size:
        raise ValueError(f"{data_mib} MiB of data does not fit in a {size_gib} GiB disk")
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
        offsets = range(MIB, MIB + data_mib * MIB, CHUNK)
        end = MIB + data_mib * MIB
        # getrandom() and write() release the GIL, so a few threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(lambda offset: _write_random(fd, offset, min(CHUNK, end - offset)), offsets))
    finally:
        os.close(fd)
    # Rename last so an interrupted run never leaves a disk that looks complete.
    partial.rename(path)


def _write_random(fd: int, offset: int, length: int) -> None:
    data = os.urandom(length)
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def domain_xml(
    name: str,
    disk: str,
    virt_type: str,
    *,
    mac: str = BASE_MAC,
    uuid: str | None = None,
    memory_mib: int = 1024,
    current_mib: int = 1024,
    bridge: str = "br-cluster",
) -> str:
    """Domain XML for a headless VM with one virtio disk and one NIC on the cluster bridge.

    No graphics or video: all nodes share the network namespace, so VNC/SPICE ports would clash.
    """
    uuid_line = f"\n  <uuid>{escape(uuid)}</uuid>" if uuid else ""
    return f"""<domain type='{virt_type}'>
  <name>{escape(name)}</name>{uuid_line}
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{current_mib}</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
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
      <source bridge='{bridge}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""
