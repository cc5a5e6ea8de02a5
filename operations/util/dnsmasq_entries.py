"""Planning of the reservations operation: the dhcp-range check, the new set of entries, the requests
sent to the node, the /etc/hosts block and the diff. No I/O. The file format itself (``Entry``, parse,
render) is ``inventories/dnsmasq_format.py``.

Optionally the same host lines also go into a marked block of /etc/hosts
(``# BEGIN kvm-qemu`` ... ``# END kvm-qemu``); every other byte of that file is kept.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from inventories.dnsmasq_format import (
    ADDN_HOSTS_HEADER,
    DHCP_HOSTS_HEADER,
    IGNORE_CLIENT_ID,
    OWNER_COMMENT,
    OWNER_TAG_PREFIX,
    Entry,
    EntryError,
    _uniqueness_problems,
    check_owner,
    entries_from,
    entry_from_mapping,
    macs_from,
    make_entry,
    normalize_ip,
    normalize_mac,
    parse_addn_hosts,
    parse_dhcp_hosts,
    parse_dhcp_range,
    parse_reservations,
    render_addn_hosts,
    render_dhcp_hosts,
    render_test_conf,
    reservation,
    sorted_entries,
)

__all__ = [
    "ADDN_HOSTS_HEADER",
    "DHCP_HOSTS_HEADER",
    "IGNORE_CLIENT_ID",
    "OWNER_COMMENT",
    "OWNER_TAG_PREFIX",
    "Entry",
    "check_owner",
    "EntryError",
    "entries_from",
    "entry_from_mapping",
    "macs_from",
    "make_entry",
    "normalize_ip",
    "normalize_mac",
    "parse_addn_hosts",
    "parse_dhcp_hosts",
    "parse_dhcp_range",
    "parse_reservations",
    "render_addn_hosts",
    "render_dhcp_hosts",
    "render_test_conf",
    "reservation",
    "sorted_entries",
]

BLOCK_BEGIN = "# BEGIN kvm-qemu"
BLOCK_END = "# END kvm-qemu"


def range_problems(entries: Iterable[Entry], dhcp_range: str) -> list[str]:
    start, end = parse_dhcp_range(dhcp_range)
    return [
        f"IP address {entry.ip} of {entry.label()} is outside dhcp_range {start}-{end}"
        for entry in entries
        if not start <= ipaddress.IPv4Address(entry.ip) <= end
    ]


def removable(entry: Entry, owner: str | None, untagged: bool) -> bool:
    """Whether a run writing as ``owner`` may remove ``entry``: its own entries, untagged ones (written
    before owner tags) only when ``untagged``; any entry when ``owner`` is None (no owner given)."""
    if owner is None or entry.owner == owner:
        return True
    return not entry.owner and untagged


def foreign(
    current: Mapping[str, Entry], macs: Sequence[str], owner: str | None, untagged: bool
) -> list[Entry]:
    """The entries among ``macs`` that a run writing as ``owner`` keeps: another manifest's."""
    return [current[mac] for mac in macs if mac in current and not removable(current[mac], owner, untagged)]


def plan(
    current: Mapping[str, Entry],
    entries: Sequence[Entry] | Sequence[str],
    present: bool,
    dhcp_range: str | None = None,
    source: str = "the reservation files",
    owner: str | None = None,
    untagged: bool = True,
) -> dict[str, Entry]:
    """The reservations after the change, ``{mac: Entry}``; conflicts raise EntryError (nothing written).

    ``present=True``: ``entries`` (Entry objects) are added; one identical to a reservation is left
    alone, and a reservation with the same MAC but another IP or name is a conflict. With ``owner``
    (the entries carry it), an identical reservation without an owner tag is adopted (rewritten with
    the tag) and one with another manifest's tag is a conflict.
    ``present=False``: ``entries`` (MAC strings) are removed; unknown MACs are ignored, and with
    ``owner`` another manifest's entries (and untagged ones unless ``untagged``) are kept.
    """
    if not present:
        gone = {str(mac) for mac in entries}
        return {
            mac: entry
            for mac, entry in current.items()
            if mac not in gone or not removable(entry, owner, untagged)
        }
    wanted = [entry for entry in entries if isinstance(entry, Entry)]
    problems = _uniqueness_problems(wanted, current, source)
    if dhcp_range is not None:
        problems += range_problems(wanted, dhcp_range)
    result = dict(current)
    for entry in wanted:
        old = current.get(entry.mac)
        if old is None:
            result[entry.mac] = entry
        elif owner is not None and old.owner != owner and (old.ip, old.names) == (entry.ip, entry.names):
            if not old.owner:
                result[entry.mac] = entry  # adopted: written before owner tags, exactly this VM
            else:
                problems.append(
                    f"{entry.hostname} ({entry.ip}, MAC {entry.mac}) is reserved in {source} by another "
                    f"manifest (owner tag {old.owner}, this manifest's is {owner}): delete it with that "
                    f"manifest, or set dhcp_owner={old.owner} if that is this manifest under another path"
                )
    if problems:
        raise EntryError(problems)
    return result


def request_lines(
    entries: Sequence[Entry] | Sequence[str], present: bool, owner: str | None = None, untagged: bool = True
) -> list[str]:
    """What the node-side merge reads on stdin: ``add MAC IP FQDN SHORT [OWNER]`` or
    ``del MAC [OWNER UNTAGGED]`` lines (no OWNER: untagged on add, any owner on removal; UNTAGGED
    ``1``: untagged entries may be removed).

    Every value was checked by make_entry/normalize_mac/check_owner (no blanks or shell characters).
    """
    if present:
        added = [e for e in entries if isinstance(e, Entry)]
        return [f"add {e.mac} {e.ip} {e.hostname} {e.short} {e.owner}".rstrip() for e in added]
    who = "" if owner is None else f" {check_owner(owner)} {int(untagged)}"
    return [f"del {mac}{who}" for mac in entries if isinstance(mac, str)]


def _split_keepends(text: str) -> list[str]:
    """Split on ``\\n`` only (str.splitlines also splits on \\r, \\x0c, ... which would alter lines)."""
    parts = text.split("\n")
    chunks = [f"{part}\n" for part in parts[:-1]]
    if parts[-1]:
        chunks.append(parts[-1])
    return chunks


def _is_marker(chunk: str, marker: str) -> bool:
    return chunk.rstrip("\n").rstrip() == marker


def splice_hosts_block(text: str | None, lines: Sequence[str]) -> str | None:
    """``text`` with the ``# BEGIN kvm-qemu`` block holding ``lines`` (removed when empty).

    Every byte outside the block is kept; a block is appended at the end when there is none (after
    adding the missing final newline, if any). ``None`` means "no file" in and out.
    """
    chunks = _split_keepends(text or "")
    begins = [i for i, chunk in enumerate(chunks) if _is_marker(chunk, BLOCK_BEGIN)]
    ends = [i for i, chunk in enumerate(chunks) if _is_marker(chunk, BLOCK_END)]
    if len(begins) > 1 or len(ends) > 1 or len(begins) != len(ends) or (begins and ends[0] < begins[0]):
        raise EntryError(
            f"the hosts file has a malformed kvm-qemu block ({len(begins)} {BLOCK_BEGIN!r} and "
            f"{len(ends)} {BLOCK_END!r} lines); fix it by hand"
        )
    block = [f"{BLOCK_BEGIN}\n", *(f"{line}\n" for line in lines), f"{BLOCK_END}\n"] if lines else []
    if begins:
        chunks[begins[0] : ends[0] + 1] = block
    elif block:
        if chunks and not chunks[-1].endswith("\n"):
            chunks[-1] += "\n"
        chunks += block
    if text is None and not chunks:
        return None
    return "".join(chunks)


def unified_diff(old: str | None, new: str, path: str) -> list[str]:
    """Changed lines of one file, unified format without the ``---/+++`` header."""
    lines = difflib.unified_diff(
        (old or "").splitlines(), new.splitlines(), fromfile=path, tofile=path, lineterm="", n=0
    )
    return [line for line in lines if not line.startswith(("---", "+++", "@@"))]
