"""A hypervisor's state as the ``Hypervisor`` fact reads it, as typed, frozen objects. Pure, no I/O.

``facts/util/libvirt_parse.py`` builds these from the probe's output, parsing each XML document once;
planners read attributes (``domain.config.disks``, ``host.files[path].kind``) and never parse a
domain's XML again. ``to_dict()`` gives the plain data the narrower facts print for people;
``from_dict()`` reads that data back (pyinfra-testing's JSON cases, the tests' builders).

"Is it running" has one definition, ``Domain.active``.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

# virDomainState, spelled as `virsh domstate` prints it.
DOMAIN_STATES = {
    0: "no state",
    1: "running",
    2: "idle",
    3: "paused",
    4: "in shutdown",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}
# A domain in any other state (one libvirt added later: "unknown") is taken as possibly running, so
# nothing edits it offline, copies its disks or starts it again.
INACTIVE_STATES = frozenset({"shut off", "crashed", "no state"})


class _Plain:
    """``to_dict()``: the fields named in ``PLAIN`` as plain data (what the narrower facts print)."""

    PLAIN: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.PLAIN}


def _plain(value: Any) -> Any:
    if isinstance(value, _Plain):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int:
    return int(value or 0)


def _fields(cls: type, data: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` read from plain data (``to_dict``'s shape), by each
    field's declared type: ``int`` missing is 0, ``str | None`` missing is None, a ``str`` or ``bool``
    missing takes the field's default, ``tuple[X, ...]`` holds ``X.from_dict`` items (or ``str``).
    ``given``: fields the caller sets itself (a name that is a key of the plain data)."""
    out = dict(given)
    for spec in fields(cls):
        if spec.name in out:
            continue
        value, kind = data.get(spec.name), spec.type
        if kind == "int":
            out[spec.name] = _int(value)
        elif kind == "str | None":
            out[spec.name] = _opt_str(value)
        elif kind == "str":
            out[spec.name] = str(value or spec.default)
        elif kind == "bool":
            out[spec.name] = bool(data.get(spec.name, spec.default))
        elif isinstance(kind, str) and kind.startswith("tuple["):
            item = globals()[kind[len("tuple[") : -len(", ...]")]] if kind != "tuple[str, ...]" else None
            out[spec.name] = tuple(item.from_dict(v) if item else str(v) for v in value or ())
        else:
            raise TypeError(f"{cls.__name__}.{spec.name}: no plain reading of {kind}")
    return out


@dataclass(frozen=True)
class Disk(_Plain):
    """A ``<disk>`` of a domain definition. ``backing``: the file right below ``path`` (the whole chain:
    ``HostState.backing_chain``). ``cache``: the driver's cache mode, None
    when the definition sets none."""

    PLAIN = ("target", "device", "path", "format", "bus", "backing")

    target: str | None = None
    device: str = "disk"
    path: str | None = None
    format: str | None = None
    bus: str | None = None
    backing: str | None = None
    cache: str | None = None
    readonly: bool = False
    shareable: bool = False

    @property
    def is_disk(self) -> bool:
        return self.device == "disk"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Disk:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class Interface(_Plain):
    PLAIN = ("mac", "type", "source", "model")
    mac: str | None = None
    type: str | None = None
    source: str | None = None
    model: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interface:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class Definition(_Plain):
    """Resources and devices of one domain definition (live or persistent). ``cpu_mode``: the ``<cpu>``
    element's mode ("none" without one, "custom" when it names none); ``scsi_models``: the models of
    its SCSI controllers."""

    PLAIN = ("memory_kib", "max_memory_kib", "vcpus", "max_vcpus", "disks", "interfaces")

    memory_kib: int = 0
    max_memory_kib: int = 0
    vcpus: int = 1
    max_vcpus: int = 1
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    cpu_mode: str = "none"
    scsi_models: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Definition:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class SnapshotDisk(_Plain):
    """A disk of a libvirt snapshot: its target, how it was snapshotted, and the overlay's path."""

    PLAIN = ("target", "snapshot", "path")

    target: str | None = None
    snapshot: str | None = None
    path: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnapshotDisk:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class DomainSnapshot(_Plain):
    """A libvirt snapshot of a domain. ``domain_disks``: the domain's disks when it was taken (what each
    external overlay was put on)."""

    PLAIN = ("name", "parent", "state", "created", "current", "disks", "domain_disks")

    name: str | None = None
    parent: str | None = None
    state: str | None = None
    created: int = 0
    current: bool = False
    disks: tuple[SnapshotDisk, ...] = ()
    domain_disks: tuple[Disk, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainSnapshot:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class Domain(_Plain):
    """A libvirt domain. The resources and devices at the top are live for a running domain; ``config``
    holds the persistent definition's (they differ after e.g. a live setmem; the same for a shut-off
    domain). ``xml``: the persistent definition (the live one for a transient domain), kept for what
    rewrites or compares a whole definition (a clone, define from a file, a snapshot's delete); the
    values read from it are in ``config``."""

    PLAIN = (
        "uuid", "state", "persistent", "autostart", "memory_kib", "max_memory_kib", "vcpus", "max_vcpus",
        "disks", "interfaces", "config", "xml", "snapshots",
    )  # fmt: skip

    name: str
    uuid: str | None = None
    state: str = "shut off"
    persistent: bool = True
    autostart: bool = False
    memory_kib: int = 0
    max_memory_kib: int = 0
    vcpus: int = 1
    max_vcpus: int = 1
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    config: Definition = field(default_factory=Definition)
    xml: str = ""
    snapshots: tuple[DomainSnapshot, ...] = ()

    @property
    def active(self) -> bool:
        """Running in any sense (running, idle, paused, in shutdown, pmsuspended): not shut off, crashed
        or without a state. The one definition of "is it running"."""
        return self.state not in INACTIVE_STATES

    @property
    def all_disks(self) -> tuple[Disk, ...]:
        """Every disk of the domain, live and persistent definitions together."""
        return self.disks + self.config.disks

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Domain:
        """A domain from plain data (``to_dict``'s shape). Without ``config`` the top-level values are
        the persistent ones too; what the plain data lacks and ``xml`` holds (cache modes, CPU mode,
        SCSI controllers) is read from ``xml``, as the fact reads it."""
        live = Definition.from_dict(data)
        config = Definition.from_dict(data["config"]) if data.get("config") else live
        xml = str(data.get("xml") or "")
        extras = xml_extras(xml)
        if extras is not None:
            live, config = _with_extras(live, extras), _with_extras(config, extras)
        return cls.of_definitions(
            name,
            live,
            config,
            uuid=_opt_str(data.get("uuid")),
            state=str(data.get("state") or "no state"),
            persistent=bool(data.get("persistent", True)),
            autostart=bool(data.get("autostart")),
            xml=xml,
            snapshots=tuple(
                s if isinstance(s, DomainSnapshot) else DomainSnapshot.from_dict(s)
                for s in data.get("snapshots") or ()
            ),
        )

    @classmethod
    def of_definitions(cls, name: str, live: Definition, config: Definition, **fields: Any) -> Domain:
        """A domain whose top-level resources and devices are ``live``'s, with ``config`` and ``fields``."""
        return cls(
            name=name,
            memory_kib=live.memory_kib,
            max_memory_kib=live.max_memory_kib,
            vcpus=live.vcpus,
            max_vcpus=live.max_vcpus,
            disks=live.disks,
            interfaces=live.interfaces,
            config=config,
            **fields,
        )


def xml_extras(xml: str) -> tuple[str, tuple[str, ...], dict[str, tuple[str | None, bool, bool]]] | None:
    """(CPU mode, SCSI controller models, {disk target or path: (cache, readonly, shareable)}) of a domain
    XML, None when there is none or it does not parse (for ``Domain.from_dict``)."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    disks = {}
    for element in root.findall("devices/disk"):
        source, target, driver = element.find("source"), element.find("target"), element.find("driver")
        found = (
            driver.get("cache") if driver is not None else None,
            element.find("readonly") is not None,
            element.find("shareable") is not None,
        )
        path = (source.get("file") or source.get("dev")) if source is not None else None
        dev = target.get("dev") if target is not None else None
        for key in (f"path:{path}" if path else None, f"target:{dev}" if dev else None):
            if key:
                disks[key] = found
    return cpu_mode_of(root), scsi_models_of(root), disks


def cpu_mode_of(root: ET.Element) -> str:
    cpu = root.find("cpu")
    if cpu is None:
        return "none"
    return cpu.get("mode") or "custom"


def scsi_models_of(root: ET.Element) -> tuple[str, ...]:
    return tuple(c.get("model") or "" for c in root.findall("devices/controller") if c.get("type") == "scsi")


def _with_extras(
    definition: Definition, extras: tuple[str, tuple[str, ...], dict[str, tuple[str | None, bool, bool]]]
) -> Definition:
    cpu_mode, scsi_models, by_path = extras
    disks = []
    for disk in definition.disks:
        found = by_path.get(f"target:{disk.target}") or by_path.get(f"path:{disk.path}")
        if found is not None and disk.cache is None and not (disk.readonly or disk.shareable):
            disk = replace(disk, cache=found[0], readonly=found[1], shareable=found[2])
        disks.append(disk)
    return replace(definition, disks=tuple(disks), cpu_mode=cpu_mode, scsi_models=scsi_models)


@dataclass(frozen=True)
class Pool(_Plain):
    """A storage pool. ``state``: "running" or "inactive"; sizes in bytes."""

    PLAIN = (
        "uuid",
        "state",
        "autostart",
        "persistent",
        "type",
        "path",
        "capacity",
        "allocation",
        "available",
    )

    name: str
    uuid: str | None = None
    state: str = "running"
    autostart: bool = False
    persistent: bool = True
    type: str | None = None
    path: str | None = None
    capacity: int = 0
    allocation: int = 0
    available: int = 0

    @property
    def active(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Pool:
        # A pool the data does not call running is taken as inactive (the field's default is for builders).
        return cls(**_fields(cls, data, name=name, state=str(data.get("state") or "inactive")))


@dataclass(frozen=True)
class Volume(_Plain):
    """A volume of a pool (listed only for active pools). ``backing``: the file right below it."""

    PLAIN = ("path", "format", "capacity", "allocation", "backing")

    name: str
    path: str | None = None
    format: str | None = None
    capacity: int = 0
    allocation: int = 0
    backing: str | None = None

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Volume:
        return cls(**_fields(cls, data, name=name))


@dataclass(frozen=True)
class Capacity(_Plain):
    """The node: CPUs, memory, versions, and (from the capabilities XML) what moving VMs compares."""

    PLAIN = (
        "cpus", "memory_kib", "free_memory_kib", "libvirt_version", "hypervisor_version", "host_uuid", "arch",
        "cpu_model", "cpu_vendor",
    )  # fmt: skip

    cpus: int = 0
    memory_kib: int = 0
    free_memory_kib: int = 0
    libvirt_version: str | None = None
    hypervisor_version: str | None = None
    host_uuid: str | None = None
    arch: str | None = None
    cpu_model: str | None = None
    cpu_vendor: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capacity:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class FileEntry(_Plain):
    """A file the probe looked at (``lstat``): ``kind`` is file, link, dir, other or missing; ``backing``
    read only from regular files; owner and mode None from older probes; ``sha256`` only for
    cloud-init seeds."""

    kind: str = "missing"
    backing: str | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "backing": self.backing}
        for key in ("uid", "gid", "mode", "sha256"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        owner = {
            key: data[key]
            for key in ("uid", "gid", "mode")
            if isinstance(data.get(key), int) and not isinstance(data.get(key), bool)
        }
        return cls(
            kind=str(data.get("kind") or "missing"),
            backing=_opt_str(data.get("backing")),
            sha256=str(data["sha256"]) if data.get("sha256") else None,
            **owner,
        )


MISSING = FileEntry()


@dataclass(frozen=True)
class HostState(_Plain):
    """Everything the ``Hypervisor`` fact read from one host: pools, volumes by pool, domains, the
    node's capacity and the files of every directory pool and every domain disk's backing chain."""

    PLAIN = ("pools", "volumes", "domains", "capacity", "files")

    pools: dict[str, Pool] = field(default_factory=dict)
    volumes: dict[str, dict[str, Volume]] = field(default_factory=dict)
    domains: dict[str, Domain] = field(default_factory=dict)
    capacity: Capacity = field(default_factory=Capacity)
    files: dict[str, FileEntry] = field(default_factory=dict)

    def file(self, path: str) -> FileEntry:
        """The probe's entry for ``path``; a path it did not look at reads as missing."""
        return self.files.get(path, MISSING)

    def all_volumes(self) -> list[Volume]:
        return [volume for volumes in self.volumes.values() for volume in volumes.values()]

    def backing_map(self) -> dict[str, str]:
        """path -> the file right below it (paths normalised): from the image headers (every pool
        directory, every domain disk), the volumes, and the domain definitions."""
        below: dict[str, str] = {}
        for volume in self.all_volumes():
            if volume.path and volume.backing:
                below[posixpath.normpath(volume.path)] = posixpath.normpath(volume.backing)
        for path, entry in self.files.items():
            if entry.backing:
                below[posixpath.normpath(path)] = posixpath.normpath(entry.backing)
        for domain in self.domains.values():
            for disk in domain.all_disks:
                if disk.path and disk.backing:
                    below.setdefault(posixpath.normpath(disk.path), posixpath.normpath(disk.backing))
        return below

    def backing_chain(self, disk: Disk, below: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The disk's file and every file below it, nearest first (normalised, at most 32; none without
        a path). ``below``: ``backing_map()``, when the caller already has it."""
        if not disk.path:
            return ()
        below = self.backing_map() if below is None else below
        chain = [posixpath.normpath(disk.path)]
        following = below.get(chain[0]) or disk.backing
        while following and posixpath.normpath(following) not in chain and len(chain) < 32:
            chain.append(posixpath.normpath(following))
            following = below.get(chain[-1])
        return tuple(chain)

    def to_json(self) -> dict[str, Any]:
        """What pyinfra's CLI prints for ``fact facts.libvirt.Hypervisor``."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostState:
        return cls(
            pools={name: Pool.from_dict(name, p) for name, p in (data.get("pools") or {}).items()},
            volumes={
                pool: {name: Volume.from_dict(name, v) for name, v in volumes.items()}
                for pool, volumes in (data.get("volumes") or {}).items()
            },
            domains={name: Domain.from_dict(name, d) for name, d in (data.get("domains") or {}).items()},
            capacity=Capacity.from_dict(data.get("capacity") or {}),
            files={str(path): FileEntry.from_dict(e) for path, e in (data.get("files") or {}).items()},
        )
