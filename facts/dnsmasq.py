"""Facts for the dnsmasq reservation files; each reads its files in one command.

Files travel base64-encoded, so the facts see their exact bytes (a missing final newline, CR
characters, non-UTF-8 bytes) and a file line can never be mistaken for a section marker.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from pyinfra.api import FactBase, QuoteString, StringCommand
from pyinfra.api.exceptions import FactProcessError

from inventories.defaults import DHCP_HOSTSFILE as DEFAULT_HOSTSFILE
from inventories.defaults import DNS_ADDN_HOSTS as DEFAULT_ADDN_HOSTS
from inventories.defaults import DNSMASQ_CONF as DEFAULT_CONF
from inventories.defaults import ETC_HOSTS as DEFAULT_ETC_HOSTS
from inventories.dnsmasq_format import EntryError, dhcp_service, parse_reservations

# Neither marker can be a line of base64 output (space and '-' are outside its alphabet).
FILE_MARK = "-- file"
ABSENT_MARK = "-- absent"

T = TypeVar("T")


def read_files_command(*paths: str) -> StringCommand:
    """Print, for each path, a marker then the file as base64, or the absent marker when missing.

    An existing but unreadable path (a directory, no permission) makes the command, and so the fact, fail.
    """
    return StringCommand(
        "for f in",
        *(QuoteString(path) for path in paths),
        '; do if [ -e "$f" ]; then echo',
        QuoteString(FILE_MARK),
        '&& base64 < "$f" || exit 1; else echo',
        QuoteString(ABSENT_MARK),
        "; fi; done",
    )


def read_locked_command(lock: str, *paths: str) -> StringCommand:
    """read_files_command under a shared flock on ``lock`` (when it exists), the lock writers hold.

    dhcp_reservations renames the two files one after the other under an exclusive lock on it;
    reading without the lock could see one new and one old file.
    """
    return StringCommand(
        StringCommand("l=", QuoteString(lock), _separator=""),
        '; if [ -f "$l" ] && [ -r "$l" ] && [ ! -L "$l" ]; then exec 9< "$l" && flock -s -w 120 9 ||',
        '{ echo "kvm-qemu: cannot take the shared lock $l" >&2; exit 1; }; fi;',
        read_files_command(*paths),
    )


def split_files(lines: list[str], count: int) -> list[bytes | None]:
    """Inverse of read_files_command: one ``bytes`` (or ``None`` when missing) per path."""
    sections: list[list[str] | None] = []
    for line in lines:
        if line == FILE_MARK:
            sections.append([])
        elif line == ABSENT_MARK:
            sections.append(None)
        elif sections and sections[-1] is not None:
            sections[-1].append(line.strip())
        else:
            raise FactProcessError(f"unexpected output line {line!r}")
    if len(sections) != count:
        raise FactProcessError(f"expected {count} file section(s), got {len(sections)}")
    files: list[bytes | None] = []
    for section in sections:
        try:
            files.append(None if section is None else base64.b64decode("".join(section), validate=True))
        except binascii.Error as exc:
            raise FactProcessError(f"cannot decode file contents: {exc}") from None
    return files


def _fact_process(func: Callable[..., T]) -> Callable[..., T]:
    """Turn any parsing error into FactProcessError, so only this host fails."""

    @wraps(func)
    def wrapper(self: Any, output: list[str]) -> T:
        try:
            return func(self, output)
        except FactProcessError:
            raise
        except (EntryError, UnicodeDecodeError, ValueError) as exc:
            raise FactProcessError(f"{type(self).__name__}: {exc}") from exc

    return wrapper


class DnsmasqReservations(FactBase[dict[str, dict[str, str]]]):
    """Reservations in the dhcp-hostsfile and addn-hosts file, keyed by lower-case MAC.

    .. code:: python

        {"52:54:00:12:34:56": {"mac": "52:54:00:12:34:56", "ip": "10.10.5.11",
                               "hostname": "vm01.example.internal", "short": "vm01"}}

    Missing files count as empty. Lines that are not ``MAC,IP,short`` / ``IP FQDN short``, or files
    that disagree with each other, raise FactProcessError naming the file and line.
    """

    default = dict

    def command(
        self, hostsfile: str = DEFAULT_HOSTSFILE, addn_hosts: str = DEFAULT_ADDN_HOSTS
    ) -> StringCommand:
        # pyinfra calls command() and process() on the same instance: keep the paths for messages.
        self.sources = (hostsfile, addn_hosts)
        return read_locked_command(f"{hostsfile}.lock", hostsfile, addn_hosts)

    @_fact_process
    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        dhcp_raw, hosts_raw = split_files(output, 2)
        dhcp_source, hosts_source = getattr(self, "sources", ("dhcp-hosts", "hosts"))
        try:
            entries = parse_reservations(
                None if dhcp_raw is None else dhcp_raw.decode("utf-8"),
                None if hosts_raw is None else hosts_raw.decode("utf-8"),
                dhcp_source,
                hosts_source,
            )
        except EntryError as exc:
            raise EntryError(
                [*exc.problems, "these files are written only by dhcp_reservations: fix or remove the lines"]
            ) from None
        return {mac: entry.to_dict() for mac, entry in sorted(entries.items())}


class DnsmasqNode(FactBase[dict[str, Any]]):
    """The reservations (as ``DnsmasqReservations``) and whether and where the node serves DHCP, read
    in one command from the files and the dnsmasq configuration the project wrote there:

    .. code:: python

        {"reservations": {...}, "dhcp": True, "listen_address": "10.10.5.2"}

    So delete needs no repeated ``dhcp_range``/``dns_listen_address``: the node's own configuration
    says whether a deleted VM's lease must be released, and on which address.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"reservations": {}, "dhcp": False, "listen_address": None}

    def command(
        self,
        hostsfile: str = DEFAULT_HOSTSFILE,
        addn_hosts: str = DEFAULT_ADDN_HOSTS,
        conf: str = DEFAULT_CONF,
    ) -> StringCommand:
        self.sources = (hostsfile, addn_hosts)
        return read_locked_command(f"{hostsfile}.lock", hostsfile, addn_hosts, conf)

    @_fact_process
    def process(self, output: list[str]) -> dict[str, Any]:
        *files, conf_raw = split_files(output, 3)
        section = [line for raw in files for line in _section_lines(raw)]
        reservations = DnsmasqReservations.process(self, section)
        serves, listen = dhcp_service(None if conf_raw is None else conf_raw.decode("utf-8", "replace"))
        return {"reservations": reservations, "dhcp": serves, "listen_address": listen}


def _section_lines(raw: bytes | None) -> list[str]:
    """One file again as read_files_command prints it (the input of DnsmasqReservations.process)."""
    if raw is None:
        return [ABSENT_MARK]
    return [FILE_MARK, base64.b64encode(raw).decode("ascii")]


class HostsFileText(FactBase[str | None]):
    """The exact text of a hosts file such as /etc/hosts (``None`` when missing).

    Bytes that are not UTF-8 are kept as surrogate escapes; encode with ``errors="surrogateescape"``
    to get the original bytes back.
    """

    def command(self, path: str = DEFAULT_ETC_HOSTS) -> StringCommand:
        return read_files_command(path)

    @_fact_process
    def process(self, output: list[str]) -> str | None:
        (raw,) = split_files(output, 1)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")
