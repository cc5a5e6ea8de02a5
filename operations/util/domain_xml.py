"""Domain XML for a clone, made in Python from the source domain's persistent XML (no virt-clone).

Pure functions: XML text in, XML text out. The caller decides where disks live; this module only
rewrites the definition so that one ``virsh define`` creates a VM with the vmspec's resources.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from inventories.manifest_model import VmSpec

# Formats we know how to copy or overlay; anything else is refused with a message.
DISK_EXTENSIONS = {"raw": "img", "qcow2": "qcow2"}


class CloneError(ValueError):
    """The source domain cannot be cloned as asked (the message says why)."""


# Namespace of the UUIDs given to clones with a cloud-init seed (see ``stable_uuid``).
UUID_NAMESPACE = uuid.UUID("6c1f3d52-1b0e-5a8e-9c61-4b7a9e0d2f31")

# Namespace of the metadata element recording which controller-side file a domain was defined from.
SOURCE_NAMESPACE = "https://kvm-qemu.invalid/xmlns/source/1"


@dataclass(frozen=True)
class SourceDisk:
    target: str
    path: str
    format: str


@dataclass(frozen=True)
class ClonedDisk:
    """One disk file the clone needs: copied/overlaid from ``source`` or created empty when None."""

    target: str
    path: str
    format: str
    source: SourceDisk | None
    size_gib: int = 0


def source_disks(source_xml: str) -> list[SourceDisk]:
    """The file-backed disks (not cdroms) of the source domain, in XML order."""
    root = parse_domain(source_xml)
    disks = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        target = disk.find("target")
        if disk.get("type") != "file" or source is None or not source.get("file") or target is None:
            raise CloneError("only file-backed disks can be cloned (the source has a non-file disk)")
        driver = disk.find("driver")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        disks.append(SourceDisk(target=target.get("dev", ""), path=source.get("file", ""), format=fmt))
    if not disks:
        raise CloneError("the source domain has no disk to clone")
    return disks


def data_disk_targets(existing_targets: list[str], count: int) -> list[str]:
    """The next ``count`` free virtio targets (vdb, vdc, ...) after those already used."""
    used = set(existing_targets)
    free = [f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1) if f"vd{chr(c)}" not in used]
    if count > len(free):
        raise CloneError(f"{count} data disks do not fit in the free virtio targets")
    return free[:count]


def plan_disks(spec: VmSpec, source_xml: str, pool_path: str) -> list[ClonedDisk]:
    """Every file the clone owns: one per source disk (copy or overlay), then the data disks."""
    disks = []
    for src in source_disks(source_xml):
        if src.format not in DISK_EXTENSIONS:
            raise CloneError(
                f"disk {src.target} of the source is {src.format}, only raw or qcow2 can be cloned"
            )
        fmt = "qcow2" if spec.clone == "linked" else src.format
        path = f"{pool_path.rstrip('/')}/{spec.name}-{src.target}.{DISK_EXTENSIONS[fmt]}"
        disks.append(ClonedDisk(target=src.target, path=path, format=fmt, source=src))
    targets = data_disk_targets([d.target for d in disks], spec.num_disks)
    for target in targets:
        path = f"{pool_path.rstrip('/')}/{spec.name}-{target}.img"
        disks.append(
            ClonedDisk(target=target, path=path, format="raw", source=None, size_gib=spec.disk_size_gib)
        )
    return disks


def clone_xml(spec: VmSpec, source_xml: str, disks: list[ClonedDisk]) -> str:
    """The new domain's XML: name, the spec's MAC, memory, vCPUs and disks.

    No UUID (libvirt makes one), except with ``cloud_init``: then ``stable_uuid(name)``.
    """
    root = parse_domain(source_xml)
    source_name = root.findtext("name") or ""
    _set_text(root, "name", spec.name)
    for tag in ("uuid", "title", "description"):
        for element in root.findall(tag):
            root.remove(element)
    if spec.cloud_init:
        # Known before the define, so the seed's instance-id (the domain UUID) is too, even at --dry.
        _set_text(root, "uuid", stable_uuid(spec.name))
    # The base's source-file digest describes the base, not the clone.
    for metadata in root.findall("metadata"):
        for element in metadata.findall(f"{{{SOURCE_NAMESPACE}}}source"):
            metadata.remove(element)
        if len(metadata) == 0:
            root.remove(metadata)
    if spec.description:
        description = ET.SubElement(root, "description")
        description.text = spec.description

    _set_memory(root, "memory", spec.max_memory_kib)
    _set_memory(root, "currentMemory", spec.memory_kib)
    # A maxMemory (memory hotplug slots) block from the base would keep the base's ceiling: drop it.
    for element in root.findall("maxMemory"):
        root.remove(element)
    vcpu = root.find("vcpu")
    if vcpu is None:
        vcpu = ET.SubElement(root, "vcpu", {"placement": "static"})
    vcpu.text = str(spec.vcpus)
    vcpu.attrib.pop("current", None)
    for vcpus in root.findall("vcpus"):  # per-vCPU hotplug layout of the base no longer matches
        root.remove(vcpus)

    # The base's NVRAM file belongs to the base; without <nvram> libvirt makes a fresh one per domain.
    os_element = root.find("os")
    if os_element is not None:
        for nvram in os_element.findall("nvram"):
            os_element.remove(nvram)

    devices = root.find("devices")
    if devices is None:
        raise CloneError("the source domain has no <devices>")
    _rewrite_disks(devices, disks)
    _rewrite_interfaces(devices, spec.mac)
    _rewrite_console_logs(devices, source_name, spec.name)
    return ET.tostring(root, encoding="unicode")


def stable_uuid(vm: str) -> str:
    """The UUID a clone with a cloud-init seed is defined with: derived from its name (uuid5)."""
    return str(uuid.uuid5(UUID_NAMESPACE, vm))


def _rewrite_disks(devices: ET.Element, disks: list[ClonedDisk]) -> None:
    by_target = {d.target: d for d in disks if d.source is not None}
    last_disk_index = 0
    for index, disk in enumerate(list(devices)):
        if disk.tag != "disk" or disk.get("device", "disk") != "disk":
            continue
        last_disk_index = index
        target = disk.find("target")
        cloned = by_target[target.get("dev", "")] if target is not None else None
        if cloned is None:
            raise CloneError("a source disk has no target")
        _point_disk_at(disk, cloned)
    for offset, extra in enumerate(d for d in disks if d.source is None):
        devices.insert(last_disk_index + 1 + offset, _new_data_disk(extra))


def _point_disk_at(disk: ET.Element, cloned: ClonedDisk) -> None:
    driver = disk.find("driver")
    if driver is None:
        driver = ET.SubElement(disk, "driver", {"name": "qemu"})
    driver.set("type", cloned.format)
    source = disk.find("source")
    assert source is not None  # source_disks() refused disks without one
    source.set("file", cloned.path)
    # libvirt discovers an overlay's backing chain itself; a stale chain from the base would be wrong.
    for backing in disk.findall("backingStore"):
        disk.remove(backing)
    for element in disk.findall("serial") + disk.findall("wwn"):
        disk.remove(element)


def _new_data_disk(disk: ClonedDisk) -> ET.Element:
    element = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(element, "driver", {"name": "qemu", "type": disk.format})
    ET.SubElement(element, "source", {"file": disk.path})
    ET.SubElement(element, "target", {"dev": disk.target, "bus": "virtio"})
    return element


def _rewrite_interfaces(devices: ET.Element, mac: str) -> None:
    for index, interface in enumerate(devices.findall("interface")):
        for element in interface.findall("mac") + interface.findall("target") + interface.findall("alias"):
            interface.remove(element)
        # The first NIC gets the manifest's MAC (its DHCP reservation); libvirt picks fresh ones for the rest.
        if index == 0:
            interface.insert(0, ET.Element("mac", {"address": mac}))


def _rewrite_console_logs(devices: ET.Element, source_name: str, name: str) -> None:
    """A serial console logged to a file named after the source domain gets the clone's own file."""
    for device in devices.findall("serial") + devices.findall("console"):
        for element, attribute in [(e, "path") for e in device.findall("source")] + [
            (e, "file") for e in device.findall("log")
        ]:
            path = element.get(attribute)
            if not path or not source_name:
                continue
            directory, _, filename = path.rpartition("/")
            rest = filename[len(source_name) :]
            if filename.startswith(source_name) and rest[:1] in ("-", ".", "_"):
                element.set(attribute, f"{directory}/{name}{rest}")


def _set_memory(root: ET.Element, tag: str, kib: int) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.SubElement(root, tag)
    element.text = str(kib)
    element.attrib.clear()
    element.set("unit", "KiB")


def _set_text(root: ET.Element, tag: str, text: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.SubElement(root, tag)
    element.text = text


def parse_domain(xml: str) -> ET.Element:
    """The ``<domain>`` root of ``xml``; anything else is a CloneError with the reason."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise CloneError(f"the domain XML cannot be parsed: {exc}") from None
    if root.tag != "domain":
        raise CloneError(f"expected a <domain> definition, found <{root.tag}>")
    return root


def domain_name(xml: str) -> str:
    """The <name> of a domain definition (for define-from-file)."""
    name = parse_domain(xml).findtext("name")
    if not name:
        raise CloneError("the domain XML has no <name>")
    return name


def xml_covers(wanted_xml: str, actual_xml: str) -> bool:
    """True when every element and attribute of ``wanted_xml`` is in ``actual_xml``.

    libvirt adds defaults (PCI addresses, controllers, ...) to what it is given, so a defined domain
    never equals its source file; it is up to date when it still contains everything the file asks for.
    """
    return _covers(parse_domain(wanted_xml), parse_domain(actual_xml))


def _covers(wanted: ET.Element, actual: ET.Element) -> bool:
    if wanted.tag != actual.tag or (wanted.text or "").strip() != (actual.text or "").strip():
        return False
    if any(actual.get(key) != value for key, value in wanted.attrib.items()):
        return False
    remaining = list(actual)
    for child in wanted:
        match = next((c for c in remaining if _covers(child, c)), None)
        if match is None:
            return False
        remaining.remove(match)
    return True
