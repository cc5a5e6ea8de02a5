"""The cluster manifest: load, validate and normalise the original scripts' JSON format.

The JSON Schema next to this file holds the per-field rules; this module adds the
cross-field rules a schema cannot express and turns both into one list of
problems, each prefixed with its JSON path (``[0].vmspecs[2].memoryGb: ...``).
Nothing here does I/O beyond reading the manifest file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
DEFAULT_SRCVM = "centos7"
DEFAULT_POOL = "default"
CLONE_MODES = ("full", "linked")

_FIELD_HINTS = {
    "name": "a VM name uses letters, digits, '.', '_' and '-', starts with a letter or digit, "
    "and has at most 63 characters",
    "hostname": "a hostname is a fully qualified RFC 1123 name such as vm01.example.internal",
    "host": "a host is an RFC 1123 name such as sm-01",
    "ipaddress": "an IPv4 address such as 10.10.5.11",
    "macaddress": "a unicast MAC address such as 52:54:00:12:34:56 (not all zeros)",
    "description": "control characters (newlines, tabs, escapes) are not allowed",
    "sshHost": "an address or host name (letters, digits, '.', ':', '_', '-')",
    "ssh_hostname": "an address or host name (letters, digits, '.', ':', '_', '-')",
    "ssh_user": "control characters are not allowed",
    "ssh_key": "control characters are not allowed",
}
_FIELD_HINTS["srcvm"] = _FIELD_HINTS["name"]
_FIELD_HINTS["snapshots"] = (
    "a snapshot name uses letters, digits, '.', '_' and '-', starts with a letter or digit, "
    "and has at most 63 characters"
)
_FIELD_HINTS["pool"] = "a pool name uses letters, digits, '.', '_' and '-'"


class ManifestError(Exception):
    """The manifest cannot be used; ``problems`` lists every reason at once."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1 and not self.problems[0].startswith("["):
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problem(s):"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class VmSpec:
    """One VM of the manifest, with extension keys resolved to their defaults."""

    name: str
    hostname: str
    ipaddress: str
    vcpus: int
    memory_gib: int
    max_memory_gib: int
    num_disks: int
    disk_size_gib: int
    mac: str
    srcvm: str = DEFAULT_SRCVM
    pool: str = DEFAULT_POOL
    clone: str = "full"
    autostart: bool | None = None
    # virt-sysprep the new disks after cloning (None: the ``sysprep`` group/host data, default off)
    sysprep: bool | None = None
    ssh_host: str = ""
    description: str = ""
    # Named offline snapshots that should exist (deploys/snapshot.py), oldest first.
    snapshots: tuple[str, ...] = ()
    # A cloud-init NoCloud seed (``<vm>-seed.iso``) attached as a cdrom (operations/cloud_init.py).
    cloud_init: bool = False

    @property
    def short_name(self) -> str:
        return self.hostname.split(".", 1)[0]

    @property
    def memory_kib(self) -> int:
        return self.memory_gib * 1024 * 1024

    @property
    def max_memory_kib(self) -> int:
        return self.max_memory_gib * 1024 * 1024

    def to_json(self) -> dict[str, Any]:
        """For pyinfra's JSON output of host data (``debug-inventory``, ``--debug-data``)."""
        return asdict(self)


@dataclass(frozen=True)
class HostEntry:
    """One hypervisor host of the manifest."""

    host: str
    vmspecs: tuple[VmSpec, ...]
    ssh: dict[str, Any] = field(default_factory=dict)


def mac_for(vm_name: str) -> str:
    """A stable, locally administered-range MAC (QEMU's 52:54:00 prefix) derived from the VM name.

    Stable across runs and hosts, so DHCP reservations can be written before the VM exists.
    """
    digest = hashlib.sha256(vm_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out or "(top level)"


def _schema_problem(error: jsonschema.ValidationError) -> tuple[str, str]:
    path = _json_path(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return path, f"{path}: missing required field '{missing}'"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return path, f"{path}: unknown field(s) {', '.join(map(repr, extra))} (allowed: {', '.join(allowed)})"
    # The field a value belongs to; for an item of a list (snapshots[1]) the list's name.
    last = next((p for p in reversed(error.absolute_path) if isinstance(p, str)), "")
    if error.validator in ("pattern", "maxLength") and last in _FIELD_HINTS:
        return path, f"{path}: {error.instance!r} is not valid: {_FIELD_HINTS[last]}"
    if error.validator == "type":
        return path, f"{path}: {error.instance!r} is not of type {error.validator_value}"
    return path, f"{path}: {error.message}"


def _full_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterable[jsonschema.ValidationError]:
    """``pattern`` as a full match: ``$`` alone would also accept a value ending in a newline."""
    if isinstance(instance, str) and re.fullmatch(pattern, instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker: Any, instance: Any) -> bool:
    """Integers only: JSON Schema would also take 16.0, and Python counts True as 1."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={"pattern": _full_pattern},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@cache
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return _StrictValidator(schema)


def address_problem(value: str) -> str | None:
    """Why an IPv4 address cannot be reserved for a VM (the DHCP step refuses the same), or None.

    ``.0`` and ``.255`` are host addresses in networks wider than /24, so they are not refused here;
    the DHCP step checks addresses against ``dhcp_range`` when one is set.
    """
    address = ipaddress.IPv4Address(value)
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_multicast:
        return "is a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address"
    return None


def validate(data: Any) -> list[str]:
    """Every problem in ``data`` (a parsed manifest), schema rules first, then cross-field rules."""
    if not isinstance(data, list):
        kinds: dict[type, str] = {dict: "an object", str: "a string"}
        kind = kinds.get(type(data), type(data).__name__)
        return [f"the manifest must be a JSON array of hosts, but its top level is {kind}"]
    if not data:
        return ["the manifest is empty: it lists no hosts"]

    problems: list[str] = []
    bad_paths: set[str] = set()
    for error in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path, message = _schema_problem(error)
        bad_paths.add(path)
        problems.append(message)
    problems += _cross_field_problems(data, bad_paths)
    return problems


def _cross_field_problems(data: list[Any], bad_paths: set[str]) -> list[str]:
    """The rules that span fields or entries, in manifest order: per host, then per VM spec."""
    uses = _FirstUses()
    for h, entry in enumerate(data):
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("host"), str):
            uses.require_unique("host", entry["host"], f"[{h}].host", "host")
        vmspecs = entry.get("vmspecs")
        if not isinstance(vmspecs, list):
            continue
        for v, values in enumerate(vmspecs):
            if isinstance(values, dict):
                spec = _CheckedSpec(f"[{h}].vmspecs[{v}]", values, bad_paths)
                for rule in _VMSPEC_RULES:
                    rule(spec, uses)
    return uses.problems


@dataclass
class _FirstUses:
    """Where each value that must be unique was first used, by kind, and the problems found so far."""

    problems: list[str] = field(default_factory=list)
    first: dict[str, dict[str, str]] = field(default_factory=dict)

    def claim(self, kind: str, key: str, path: str) -> str | None:
        """Record ``key`` as used at ``path``, or return where it was already used."""
        earlier = self.first.setdefault(kind, {}).get(key)
        if earlier is None:
            self.first[kind][key] = path
        return earlier

    def require_unique(self, kind: str, value: str, path: str, label: str) -> None:
        earlier = self.claim(kind, value.lower(), path)
        if earlier is not None:
            self.problems.append(f"{path}: {label} {value!r} is already used at {earlier}")


_VmSpecRule = Callable[["_CheckedSpec", "_FirstUses"], None]


@dataclass(frozen=True)
class _CheckedSpec:
    """One VM spec under the cross-field rules; a field the schema refused takes part in none."""

    base: str
    values: dict[str, Any]
    bad_paths: set[str]

    def usable(self, key: str, kind: type = int) -> bool:
        value = self.values.get(key)
        refused = self.path(key) in self.bad_paths
        return isinstance(value, kind) and not isinstance(value, bool) and not refused

    def path(self, key: str) -> str:
        return f"{self.base}.{key}"


def _memory_within_max(spec: _CheckedSpec, uses: _FirstUses) -> None:
    if not (spec.usable("memoryGb") and spec.usable("maxMemoryGb")):
        return
    memory, max_memory = spec.values["memoryGb"], spec.values["maxMemoryGb"]
    if memory > max_memory:
        uses.problems.append(f"{spec.path('memoryGb')}: {memory} is greater than maxMemoryGb {max_memory}")


def _disk_size_set_for_disks(spec: _CheckedSpec, uses: _FirstUses) -> None:
    if not (spec.usable("numDisks") and spec.usable("diskSize")):
        return
    disks, size = spec.values["numDisks"], spec.values["diskSize"]
    if disks > 0 and size <= 0:
        uses.problems.append(f"{spec.path('diskSize')}: must be at least 1 (GiB) when numDisks is {disks}")


def _ipaddress_assignable(spec: _CheckedSpec, uses: _FirstUses) -> None:
    if spec.usable("ipaddress", str):
        address = spec.values["ipaddress"]
        reason = address_problem(address)
        if reason:
            uses.problems.append(
                f"{spec.path('ipaddress')}: {address!r} cannot be given to a VM: it {reason}"
            )


def _short_hostname_unique(spec: _CheckedSpec, uses: _FirstUses) -> None:
    if not spec.usable("hostname", str):
        return
    hostname = spec.values["hostname"]
    short = hostname.split(".", 1)[0]
    earlier = uses.claim("short", short.lower(), spec.path("hostname"))
    if earlier is not None:
        uses.problems.append(
            f"{spec.path('hostname')}: short name {short!r} of {hostname!r} is already used at "
            f"{earlier} (both would answer to {short!r})"
        )


def _unique(key: str, label: str = "") -> _VmSpecRule:
    """The rule that a usable string field ``key`` holds a value no earlier VM spec used."""

    def rule(spec: _CheckedSpec, uses: _FirstUses) -> None:
        if spec.usable(key, str):
            uses.require_unique(key, spec.values[key], spec.path(key), label or key)

    rule.__name__ = rule.__qualname__ = f"_{key}_unique"
    return rule


def _not_cloned_from_itself(spec: _CheckedSpec, uses: _FirstUses) -> None:
    if not spec.usable("name", str):
        return
    name = spec.values["name"]
    if "srcvm" not in spec.values and name == DEFAULT_SRCVM:
        uses.problems.append(
            f"{spec.path('name')}: {name!r} is the VM's own base (srcvm defaults to "
            f"{DEFAULT_SRCVM!r}): a VM cannot be cloned from itself; set srcvm to another VM"
        )
    elif spec.usable("srcvm", str) and spec.values["srcvm"] == name:
        uses.problems.append(
            f"{spec.path('srcvm')}: {name!r} is the VM's own name: a VM cannot be cloned from "
            "itself (deleting it would delete its base image)"
        )


def _mac_unique(spec: _CheckedSpec, uses: _FirstUses) -> None:
    """An explicit macaddress, or else the one derived from the name, is used once only."""
    if not spec.usable("name", str):
        return
    if spec.usable("macaddress", str):
        uses.require_unique("mac", spec.values["macaddress"], spec.path("macaddress"), "macaddress")
    elif "macaddress" not in spec.values:
        name = spec.values["name"]
        mac = mac_for(name)
        earlier = uses.claim("mac", mac, f"{spec.base} (derived)")
        if earlier is not None:
            uses.problems.append(
                f"{spec.path('name')}: the MAC derived from {name!r} ({mac}) collides with "
                f"{earlier}; set macaddress explicitly"
            )


_VMSPEC_RULES = (
    _memory_within_max,
    _disk_size_set_for_disks,
    _ipaddress_assignable,
    _unique("ipaddress"),
    _unique("hostname"),
    _short_hostname_unique,
    _unique("name", label="VM name"),
    _not_cloned_from_itself,
    _mac_unique,
)


def _vmspec(spec: dict[str, Any]) -> VmSpec:
    return VmSpec(
        name=spec["name"],
        hostname=spec["hostname"],
        ipaddress=spec["ipaddress"],
        vcpus=spec["vcpus"],
        memory_gib=spec["memoryGb"],
        max_memory_gib=spec["maxMemoryGb"],
        num_disks=spec["numDisks"],
        disk_size_gib=spec["diskSize"],
        mac=spec.get("macaddress", "").lower() or mac_for(spec["name"]),
        srcvm=spec.get("srcvm", DEFAULT_SRCVM),
        pool=spec.get("pool", DEFAULT_POOL),
        clone=spec.get("clone", "full"),
        autostart=spec.get("autostart"),
        sysprep=spec.get("sysprep"),
        ssh_host=spec.get("sshHost", spec["ipaddress"]),
        description=spec.get("description", ""),
        snapshots=tuple(spec.get("snapshots", ())),
        cloud_init=spec.get("cloudInit", False),
    )


def parse(data: Any, source: str = "manifest") -> list[HostEntry]:
    """Validate parsed JSON and return the host entries, or raise ManifestError with every problem."""
    problems = validate(data)
    if problems:
        raise ManifestError(source, problems)
    return [
        HostEntry(
            host=entry["host"],
            vmspecs=tuple(_vmspec(spec) for spec in entry["vmspecs"]),
            ssh=dict(entry.get("ssh", {})),
        )
        for entry in data
    ]


def load(path: str | Path) -> list[HostEntry]:
    """Read and validate a manifest file; every failure is a ManifestError with a readable message."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            str(path),
            [
                f"not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                "a manifest is JSON text"
            ],
        ) from None
    except FileNotFoundError:
        raise ManifestError(str(path), ["manifest file not found"]) from None
    except OSError as exc:
        raise ManifestError(str(path), [f"cannot read the manifest: {exc.strerror}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            str(path), [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from None
    return parse(data, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inventories.manifest_model MANIFEST``: check a manifest without contacting any host."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m inventories.manifest_model MANIFEST.json", file=sys.stderr)
        return 2
    try:
        hosts = load(args[0])
    except ManifestError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    vms = sum(len(h.vmspecs) for h in hosts)
    print(f"{args[0]}: OK ({len(hosts)} host(s), {vms} VM(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
