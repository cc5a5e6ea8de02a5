"""The files dnsmasq reads the cluster's reservations from: their format, parsed and rendered. No I/O.

An entry is (MAC, IP, FQDN, short name); the MAC is its identity. The tool owns two files:

* the dhcp-hostsfile, one ``MAC,id:*,IP,shortname`` line per entry (``id:*``: any client id);
* the addn-hosts file, one ``IP FQDN shortname # kvmq-owner OWNER`` line per entry: the comment holds
  the owner tag of the manifest that wrote it (absent on lines written before owner tags, see
  ``Entry.owner``). dnsmasq reads a hosts file's trailing comment as a comment.

Both start with a ``#`` header; comments and blank lines are ignored when reading. The two files must
agree (same IPs, same short names); anything else is an :class:`EntryError` naming file and line.

Addresses are compared as parsed ``IPv4Address`` values, never as substrings or regexes, so
10.10.5.13 and 10.10.5.130 are always different entries. ``reservation()`` is the one adapter from a
manifest ``VmSpec`` to an ``Entry``. Read by ``facts/dnsmasq.py``, written by ``operations/dnsmasq.py``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inventories.manifest_model import VmSpec, address_problem

DHCP_HOSTS_HEADER = "# Managed by kvm-qemu (dhcp_reservations): MAC,IP,short name. Local changes are lost."
ADDN_HOSTS_HEADER = "# Managed by kvm-qemu (dhcp_reservations): IP FQDN short name. Local changes are lost."

# Always used with fullmatch: "$" alone also matches before a final newline.
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)

IGNORE_CLIENT_ID = "id:*"
# The owner tag travels as a comment of the addn-hosts line, never as an item dnsmasq acts on: a
# ``set:`` tag next to ``id:*`` in a dhcp-host line makes dnsmasq 2.90 crash (SIGSEGV) when it re-reads
# the file after the line of a leased address went.
OWNER_COMMENT = "# kvmq-owner"
# Lines written with the owner as a dnsmasq tag are still read (and rewritten without it).
OWNER_TAG_PREFIX = "set:kvmq-"
_OWNER_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
# What a dhcp-range may contain (it is written into dnsmasq.conf as it is).
_DHCP_RANGE_RE = re.compile(r"[A-Za-z0-9.:,_-]+")


class EntryError(ValueError):
    """Invalid input, unreadable files or conflicting reservations; the message lists every problem."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, order=True)
class Entry:
    """One reservation. ``mac`` is lower case; ``ip`` is the canonical dotted quad. ``owner``: the tag of
    the manifest that wrote it (``""``: written before owner tags, or by a caller that passes none)."""

    mac: str
    ip: str
    hostname: str
    short: str
    owner: str = ""

    @property
    def names(self) -> tuple[str, str]:
        return (self.hostname.lower(), self.short.lower())

    def sort_key(self) -> tuple[int, str]:
        return (int(ipaddress.IPv4Address(self.ip)), self.mac)

    def dhcp_line(self) -> str:
        # id:* ignores the DHCP client identifier: clones of one image often send the same one.
        return f"{self.mac},{IGNORE_CLIENT_ID},{self.ip},{self.short}"

    def hosts_line(self) -> str:
        owner = f" {OWNER_COMMENT} {self.owner}" if self.owner else ""
        return f"{self.ip} {self.hostname} {self.short}{owner}"

    def label(self) -> str:
        return f"{self.mac} ({self.hostname})"

    def owned_label(self) -> str:
        """How another manifest's entry is named in messages."""
        who = f"owner tag {self.owner}" if self.owner else "no owner tag"
        return f"{self.hostname} ({self.ip}, MAC {self.mac}, {who})"

    def to_dict(self) -> dict[str, str]:
        return {
            "mac": self.mac,
            "ip": self.ip,
            "hostname": self.hostname,
            "short": self.short,
            "owner": self.owner,
        }


def check_owner(value: Any) -> str:
    """An owner tag: 1 to 40 of a-z, 0-9 and '-', starting and ending with a letter or digit."""
    if not isinstance(value, str) or not _OWNER_RE.fullmatch(value):
        raise EntryError(
            f"owner tag {value!r}: expected 1 to 40 lower-case letters, digits and '-' "
            "(starting and ending with a letter or digit)"
        )
    return value


def normalize_mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()):
        raise EntryError(f"{value!r} is not a MAC address such as 52:54:00:12:34:56")
    if int(value[:2], 16) & 1:
        raise EntryError(f"{value!r} is a multicast MAC address")
    if value == "00:00:00:00:00:00":
        raise EntryError(f"{value!r} is the all-zero MAC address")
    return value.lower()


def normalize_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise EntryError(f"{value!r} is not an IPv4 address such as 10.10.5.11")
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise EntryError(f"{value!r} is not an IPv4 address such as 10.10.5.11") from None
    reason = address_problem(str(address))
    if reason:
        raise EntryError(f"{value!r} cannot be reserved for a host: it {reason}")
    return str(address)


def check_fqdn(value: Any) -> str:
    labels = value.split(".") if isinstance(value, str) else []
    if len(labels) < 2 or len(value) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise EntryError(f"{value!r} is not a fully qualified host name such as vm01.example.internal")
    return value


def check_short(value: Any) -> str:
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise EntryError(f"{value!r} is not a short host name such as vm01")
    return value


def make_entry(mac: Any, ip: Any, hostname: Any, short: Any, owner: Any = "") -> Entry:
    """An Entry from raw values, or EntryError listing every bad field (``owner`` ``""``: untagged)."""
    problems: list[str] = []
    values: list[str] = []
    checks: list[tuple[Callable[[Any], str], Any]] = [
        (normalize_mac, mac),
        (normalize_ip, ip),
        (check_fqdn, hostname),
        (check_short, short),
    ]
    if owner:
        checks.append((check_owner, owner))
    for check, value in checks:
        try:
            values.append(check(value))
        except EntryError as exc:
            problems += exc.problems
    if problems:
        raise EntryError(problems)
    return Entry(*values)


def reservation(spec: VmSpec) -> Entry:
    """The reservation of a manifest VM: its MAC, IP, FQDN and short name (first label of the FQDN)."""
    try:
        return make_entry(spec.mac, spec.ipaddress, spec.hostname, spec.short_name)
    except EntryError as exc:
        raise EntryError([f"{spec.name}: {problem}" for problem in exc.problems]) from None


def entry_from_mapping(item: Any) -> Entry:
    """An Entry from an ``Entry``, a ``VmSpec`` (see ``reservation``) or a ``{mac, ip, hostname, short}``
    mapping (``short`` defaults to the first label of ``hostname``)."""
    if isinstance(item, Entry):
        return make_entry(item.mac, item.ip, item.hostname, item.short, item.owner)
    if isinstance(item, VmSpec):
        return reservation(item)
    if not isinstance(item, Mapping):
        raise EntryError(f"an entry must be a mapping with mac, ip, hostname and short, not {item!r}")
    hostname = item.get("hostname")
    short = item.get("short")
    if short is None and isinstance(hostname, str):
        short = hostname.split(".", 1)[0]
    try:
        return make_entry(item.get("mac"), item.get("ip"), hostname, short, item.get("owner") or "")
    except EntryError as exc:
        where = item.get("hostname") or item.get("mac") or "entry"
        raise EntryError([f"{where}: {problem}" for problem in exc.problems]) from None


def macs_from(items: Iterable[Any]) -> list[str]:
    """The MACs of entries given for removal (only ``mac`` is needed)."""
    macs: list[str] = []
    problems: list[str] = []
    for item in items:
        try:
            raw = item.get("mac") if isinstance(item, Mapping) else getattr(item, "mac", item)
            mac = normalize_mac(raw)
        except EntryError as exc:
            problems += exc.problems
            continue
        if mac not in macs:
            macs.append(mac)
    if problems:
        raise EntryError(problems)
    return macs


def entries_from(items: Iterable[Any]) -> list[Entry]:
    """Entries to add or update; identical repeats collapse, any other repeat is an error."""
    problems: list[str] = []
    entries: list[Entry] = []
    for item in items:
        try:
            entries.append(entry_from_mapping(item))
        except EntryError as exc:
            problems += exc.problems
    if problems:
        raise EntryError(problems)
    unique = list(dict.fromkeys(entries))
    problems += _uniqueness_problems(unique, existing={}, source="")
    if problems:
        raise EntryError(problems)
    return unique


def _content_lines(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _parse_rows(text: str, source: str, fields_of: Callable[[str], tuple[str, ...]]) -> list[tuple[Any, ...]]:
    """[(line number, *fields_of(line))] for every content line; every bad line is named at once."""
    rows: list[tuple[Any, ...]] = []
    problems: list[str] = []
    for number, line in _content_lines(text):
        try:
            rows.append((number, *fields_of(line)))
        except EntryError as exc:
            problems += [f"{source} line {number} {line!r}: {problem}" for problem in exc.problems]
    if problems:
        raise EntryError(problems)
    return rows


def _dhcp_host_fields(line: str) -> tuple[str, str, str, str]:
    fields = line.split(",")
    if len(fields) >= 4 and fields[1] == IGNORE_CLIENT_ID:
        del fields[1]
    owner = ""
    if len(fields) == 4 and fields[1].startswith(OWNER_TAG_PREFIX):
        owner = check_owner(fields.pop(1)[len(OWNER_TAG_PREFIX) :])
    if len(fields) != 3:
        raise EntryError(f"expected MAC,IP,short name but found {len(fields)} field(s)")
    return normalize_mac(fields[0]), normalize_ip(fields[1]), check_short(fields[2]), owner


def _addn_host_fields(line: str) -> tuple[str, str, str, str]:
    content, _hash, comment = line.partition("#")
    fields = content.split()
    if len(fields) != 3:
        raise EntryError(f"expected IP FQDN short name but found {len(fields)} field(s)")
    words = comment.split()
    owner = check_owner(words[1]) if len(words) == 2 and f"# {words[0]}" == OWNER_COMMENT else ""
    return normalize_ip(fields[0]), check_fqdn(fields[1]), check_short(fields[2]), owner


def parse_dhcp_hosts(text: str, source: str = "dhcp-hosts") -> list[tuple[Any, ...]]:
    """``MAC,id:*,IP,short`` (or ``MAC,IP,short``) lines -> [(line number, mac, ip, short)]."""
    return [row[:4] for row in _parse_rows(text, source, _dhcp_host_fields)]


def parse_addn_hosts(text: str, source: str = "hosts") -> list[tuple[Any, ...]]:
    """``IP FQDN short [# kvmq-owner OWNER]`` lines -> [(line number, ip, fqdn, short)]."""
    return [row[:4] for row in _parse_rows(text, source, _addn_host_fields)]


def parse_reservations(
    dhcp_text: str | None,
    hosts_text: str | None,
    dhcp_source: str = "dhcp-hosts",
    hosts_source: str = "hosts",
) -> dict[str, Entry]:
    """Join both files (a missing file is empty) into ``{mac: Entry}``; disagreements are errors."""
    # An older line may hold the owner as a set:kvmq-OWNER item; it now lives in the addn-hosts line.
    dhcp_rows = _parse_rows(dhcp_text or "", dhcp_source, _dhcp_host_fields)
    host_rows = _parse_rows(hosts_text or "", hosts_source, _addn_host_fields)
    problems: list[str] = []
    by_ip: dict[str, tuple[int, str, str, str]] = {}
    for number, ip, fqdn, short, host_owner in host_rows:
        if ip in by_ip:
            problems.append(f"{hosts_source} line {number}: {ip} is already listed on line {by_ip[ip][0]}")
        else:
            by_ip[ip] = (number, fqdn, short, host_owner)
    entries: dict[str, Entry] = {}
    seen_ip: dict[str, int] = {}
    for number, mac, ip, short, owner in dhcp_rows:
        where = f"{dhcp_source} line {number}"
        if mac in entries:
            problems.append(f"{where}: MAC {mac} is listed twice")
            continue
        if ip in seen_ip:
            problems.append(f"{where}: {ip} is already reserved on line {seen_ip[ip]}")
            continue
        seen_ip[ip] = number
        if ip not in by_ip:
            problems.append(f"{where}: {ip} has no line in {hosts_source}")
            continue
        host_number, fqdn, host_short, host_owner = by_ip[ip]
        if host_short.lower() != short.lower():
            problems.append(
                f"{where}: short name {short!r} differs from {host_short!r} in {hosts_source} "
                f"line {host_number}"
            )
            continue
        entries[mac] = Entry(mac, ip, fqdn, short, host_owner or owner)
    for ip, (number, _fqdn, _short, _owner) in by_ip.items():
        if ip not in seen_ip:
            problems.append(f"{hosts_source} line {number}: {ip} has no line in {dhcp_source}")
    if problems:
        raise EntryError(problems)
    return entries


def _uniqueness_problems(entries: Sequence[Entry], existing: Mapping[str, Entry], source: str) -> list[str]:
    """Problems when two different MACs share an IP or a name, within ``entries`` or against ``existing``."""
    problems: list[str] = []
    owner_ip: dict[str, Entry] = {}
    owner_name: dict[str, Entry] = {}
    for entry in existing.values():
        owner_ip[entry.ip] = entry
        for name in entry.names:
            owner_name[name] = entry
    wanted_macs: dict[str, Entry] = {}
    for entry in entries:
        if entry.mac in wanted_macs:
            problems.append(
                f"MAC {entry.mac} is given twice in entries: {wanted_macs[entry.mac].hosts_line()!r} "
                f"and {entry.hosts_line()!r}"
            )
            continue
        wanted_macs[entry.mac] = entry
    origin: dict[int, str] = {id(e): f"already reserved in {source}" for e in existing.values()}
    for entry in wanted_macs.values():
        old = existing.get(entry.mac)
        if old is not None:
            # The MAC is the identity, and a derived MAC comes from the VM name: a different IP or
            # name under the same MAC is another VM (same name in another manifest, or a collision).
            if (old.ip, old.names) != (entry.ip, entry.names):
                problems.append(
                    f"MAC {entry.mac} of {entry.hostname} ({entry.ip}) is already reserved in {source} for "
                    f"{old.hostname} ({old.ip}): one MAC for two VMs (a VM of the same name in another "
                    "manifest, or two names that derive one MAC); delete the other reservation or set "
                    "macaddress"
                )
            continue
        origin[id(entry)] = "also given in entries"
        other = owner_ip.get(entry.ip)
        if other is not None and other.mac != entry.mac:
            problems.append(
                f"IP address {entry.ip} of {entry.label()} is {origin[id(other)]} for {other.label()}"
            )
        else:
            owner_ip[entry.ip] = entry
        for name, shown in zip(entry.names, (entry.hostname, entry.short), strict=True):
            other = owner_name.get(name)
            if other is not None and other.mac != entry.mac:
                problems.append(f"name {shown} of {entry.mac} is {origin[id(other)]} for {other.label()}")
            else:
                owner_name[name] = entry
    return problems


def sorted_entries(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=Entry.sort_key)


def _render(header: str, lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in [header, *lines])


def render_dhcp_hosts(entries: Iterable[Entry]) -> str:
    return _render(DHCP_HOSTS_HEADER, (entry.dhcp_line() for entry in sorted_entries(entries)))


def render_addn_hosts(entries: Iterable[Entry]) -> str:
    return _render(ADDN_HOSTS_HEADER, (entry.hosts_line() for entry in sorted_entries(entries)))


def render_test_conf(entries: Iterable[Entry]) -> str:
    """dnsmasq options equivalent to the dhcp-hostsfile, for ``dnsmasq --test`` (which skips that file)."""
    return "".join(f"dhcp-host={entry.dhcp_line()}\n" for entry in sorted_entries(entries))


def parse_dhcp_range(value: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """``start,end[,mask][,lease]`` (leading ``set:``/``tag:`` items allowed) -> (start, end).

    The one rule for a dhcp-range: the management node's deploy writes it into dnsmasq.conf, the
    reservations operation checks addresses against it.
    """
    if not _DHCP_RANGE_RE.fullmatch(value):
        raise EntryError(f"dhcp_range {value!r}: expected start,end[,netmask][,lease time]")
    items = [item.strip() for item in value.split(",")]
    while items and items[0].startswith(("set:", "tag:")):
        items.pop(0)
    try:
        start, end = ipaddress.IPv4Address(items[0]), ipaddress.IPv4Address(items[1])
    except (IndexError, ValueError):
        raise EntryError(
            f"dhcp_range {value!r} does not start with two IPv4 addresses (start,end[,mask][,lease])"
        ) from None
    if start > end:
        raise EntryError(f"dhcp_range {value!r}: the start address is after the end address")
    return start, end


def dhcp_service(conf_text: str | None) -> tuple[bool, str | None]:
    """From the dnsmasq configuration the management node's deploy wrote: (serves DHCP, the first
    ``listen-address``). Only ``option=value`` lines of that one file count (``#`` lines are comments)."""
    serves, listen = False, None
    for _number, line in _content_lines(conf_text or ""):
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "dhcp-range" and value.strip():
            serves = True
        elif key == "listen-address" and listen is None and value.strip():
            listen = value.split(",")[0].strip()
    return serves, listen
