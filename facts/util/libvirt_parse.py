"""Turn the probe's JSON (raw libvirt XML) into the typed host state (``facts/util/host_state.py``),
parsing each XML document once. Pure, no I/O.

Any malformed input raises ``ParseError``; the facts turn it into ``FactProcessError`` so only the
host that sent it fails.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from facts.util.host_state import (
    DOMAIN_STATES,
    Capacity,
    Definition,
    Disk,
    Domain,
    DomainSnapshot,
    FileEntry,
    HostState,
    Interface,
    Pool,
    SnapshotDisk,
    Volume,
    cpu_mode_of,
    scsi_models_of,
)

UNITS = {
    "b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip


class ParseError(ValueError):
    pass


def _xml(text: str | None, what: str) -> ET.Element:
    if not text:
        raise ParseError(f"empty {what} XML")
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise ParseError(f"malformed {what} XML: {exc}") from None


def _bytes(element: ET.Element | None) -> int:
    text = "" if element is None else (element.text or "").strip()
    if element is None or not text:
        return 0
    unit = UNITS.get(element.get("unit", "bytes").lower())
    if unit is None:
        raise ParseError(f"unknown unit {element.get('unit')!r}")
    return int(text) * unit


def _kib(element: ET.Element | None) -> int:
    if element is None:
        return 0
    if element.get("unit") is None:  # libvirt's default for memory elements is KiB
        return int((element.text or "0").strip())
    return _bytes(element) // 1024


def parse_probe(lines: list[str]) -> dict[str, Any]:
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        raise ParseError(f"probe output is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"pools", "domains", "node"} <= set(data):
        raise ParseError("probe output lacks pools/domains/node")
    return data


def pools_from(data: dict[str, Any]) -> dict[str, Pool]:
    pools = {}
    for pool in data["pools"]:
        root = _xml(pool.get("xml"), f"pool {pool.get('name')}")
        pools[pool["name"]] = Pool(
            name=pool["name"],
            uuid=root.findtext("uuid"),
            state="running" if pool.get("active") else "inactive",
            autostart=bool(pool.get("autostart")),
            persistent=bool(pool.get("persistent")),
            type=root.get("type"),
            path=root.findtext("target/path"),
            capacity=_bytes(root.find("capacity")),
            allocation=_bytes(root.find("allocation")),
            available=_bytes(root.find("available")),
        )
    return pools


def volumes_from(data: dict[str, Any]) -> dict[str, dict[str, Volume]]:
    volumes: dict[str, dict[str, Volume]] = {}
    for pool in data["pools"]:
        entries = volumes.setdefault(pool["name"], {})
        for text in pool.get("volumes", []):
            root = _xml(text, f"volume in pool {pool['name']}")
            fmt = root.find("target/format")
            name = root.findtext("name") or ""
            entries[name] = Volume(
                name=name,
                path=root.findtext("target/path") or root.findtext("key"),
                format=fmt.get("type") if fmt is not None else None,
                capacity=_bytes(root.find("capacity")),
                allocation=_bytes(root.find("allocation")),
                backing=root.findtext("backingStore/path"),
            )
    return volumes


def _disk(element: ET.Element, backing_by_path: dict[str, str] | None = None) -> Disk:
    source = element.find("source")
    path = None
    if source is not None:
        path = source.get("file") or source.get("dev") or source.get("volume") or source.get("name")
    driver = element.find("driver")
    target = element.find("target")
    below = element.find("backingStore/source")
    backing = below.get("file") or below.get("dev") if below is not None else None
    if backing is None and path is not None:
        backing = (backing_by_path or {}).get(path)
    return Disk(
        target=target.get("dev") if target is not None else None,
        device=element.get("device", "disk"),
        path=path,
        format=driver.get("type") if driver is not None else None,
        bus=target.get("bus") if target is not None else None,
        backing=backing,
        cache=driver.get("cache") if driver is not None else None,
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
    )


def _interface(element: ET.Element) -> Interface:
    mac = element.find("mac")
    source = element.find("source")
    model = element.find("model")
    return Interface(
        mac=(mac.get("address") or "").lower() or None if mac is not None else None,
        type=element.get("type"),
        source=(source.get("bridge") or source.get("network") or source.get("dev"))
        if source is not None
        else None,
        model=model.get("type") if model is not None else None,
    )


def definition(root: ET.Element, backing_by_path: dict[str, str] | None = None) -> Definition:
    """Resources and devices of one domain XML (live or persistent)."""
    vcpu = root.find("vcpu")
    max_vcpus = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    current = root.find("currentMemory")
    memory = root.find("memory")
    return Definition(
        memory_kib=_kib(current if current is not None else memory),
        max_memory_kib=_kib(memory),
        vcpus=int(vcpu.get("current", max_vcpus)) if vcpu is not None else 1,
        max_vcpus=max_vcpus,
        disks=tuple(_disk(d, backing_by_path) for d in root.findall("devices/disk")),
        interfaces=tuple(_interface(i) for i in root.findall("devices/interface")),
        cpu_mode=cpu_mode_of(root),
        scsi_models=scsi_models_of(root),
    )


def domains_from(
    data: dict[str, Any], volumes: dict[str, dict[str, Volume]] | None = None
) -> dict[str, Domain]:
    backing_by_path = {
        v.path: v.backing for vols in (volumes or {}).values() for v in vols.values() if v.backing and v.path
    }
    domains = {}
    for dom in data["domains"]:
        name = dom.get("name")
        live_root = _xml(dom.get("xml"), f"domain {name}")
        config_xml = dom.get("inactive_xml") or dom["xml"]
        config_root = _xml(config_xml, f"domain {name}") if dom.get("inactive_xml") else live_root
        try:
            live = definition(live_root, backing_by_path)
            config = definition(config_root, backing_by_path)
        except (TypeError, ValueError) as exc:
            raise ParseError(f"domain {name}: {exc}") from None
        domains[name] = Domain.of_definitions(
            str(name),
            live,
            config,
            uuid=dom.get("uuid") or live_root.findtext("uuid"),
            state=DOMAIN_STATES.get(dom.get("state"), "unknown"),
            persistent=bool(dom.get("persistent")),
            autostart=bool(dom.get("autostart")),
            xml=config_xml,
            snapshots=tuple(snapshots_from(dom)),
        )
    return domains


def _snapshot(entry: dict[str, Any], domain: str) -> DomainSnapshot:
    root = _xml(entry.get("xml"), f"snapshot of domain {domain}")
    disks = []
    for disk in root.findall("disks/disk"):
        source = disk.find("source")
        disks.append(
            SnapshotDisk(
                target=disk.get("name"),
                snapshot=disk.get("snapshot"),
                path=source.get("file") if source is not None else None,
            )
        )
    embedded = root.find("domain")
    return DomainSnapshot(
        name=root.findtext("name"),
        parent=root.findtext("parent/name"),
        state=root.findtext("state"),
        created=int((root.findtext("creationTime") or "0").strip() or 0),
        current=bool(entry.get("current")),
        disks=tuple(disks),
        # The domain's disks when the snapshot was taken: what each external overlay was put on.
        domain_disks=tuple(_disk(d) for d in embedded.findall("devices/disk"))
        if embedded is not None
        else (),
    )


def snapshots_from(dom: dict[str, Any]) -> list[DomainSnapshot]:
    """A domain's libvirt snapshots, oldest first (older probes send none: empty)."""
    found = [_snapshot(entry, str(dom.get("name"))) for entry in dom.get("snapshots") or []]
    return sorted(found, key=lambda s: (s.created, s.name or ""))


def files_from(data: dict[str, Any]) -> dict[str, FileEntry]:
    """``{path: FileEntry}`` as the probe found them (older probes send nothing: empty).

    ``kind``, ``uid``, ``gid`` and ``mode`` (permission bits) are the entry's own (``lstat``; older
    probes send no owner or mode); ``backing`` is read only from regular files; ``sha256`` only for
    cloud-init seeds (``*-seed.iso``) that are regular files.
    """
    return {str(path): FileEntry.from_dict(entry) for path, entry in (data.get("files") or {}).items()}


def capacity_from(data: dict[str, Any]) -> Capacity:
    node = data["node"]
    return Capacity(
        cpus=int(node.get("cpus") or 0),
        memory_kib=int(node.get("memory_kib") or 0),
        free_memory_kib=int(node.get("free_memory_kib") or 0),
        libvirt_version=_version(node.get("libvirt_version")),
        hypervisor_version=_version(node.get("hypervisor_version")),
        # From the capabilities XML (moving VMs: host UUIDs must differ, CPUs be compatible).
        host_uuid=node.get("host_uuid"),
        arch=node.get("arch"),
        cpu_model=node.get("cpu_model"),
        cpu_vendor=node.get("cpu_vendor"),
    )


def _version(number: Any) -> str | None:
    if not number:
        return None
    number = int(number)
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def hypervisor_from(lines: list[str]) -> HostState:
    data = parse_probe(lines)
    try:
        volumes = volumes_from(data)
        return HostState(
            pools=pools_from(data),
            volumes=volumes,
            domains=domains_from(data, volumes),
            capacity=capacity_from(data),
            files=files_from(data),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ParseError(f"unexpected probe output: {exc!r}") from None
