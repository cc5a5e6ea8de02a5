"""Static DHCP reservations and DNS names served by dnsmasq, without a restart and without touching leases.

``dhcp_reservations`` owns two files, the dhcp-hostsfile (``MAC,IP,short``) and the addn-hosts file
(``IP FQDN short``), and optionally a marked block of /etc/hosts. Each run is one command on the
management node. It takes a lock (``flock`` on ``<dhcp-hostsfile>.lock``), reads the files under the
lock, checks the requested entries against what it read there (not against the prepare-time fact), stages
the new contents next to the targets, checks them with ``dnsmasq --test``, fsyncs and renames them into
place, and sends the running dnsmasq SIGHUP, which makes it re-read them. Concurrent runs against one
management node therefore serialise and keep each other's reservations.

Removing entries can also release their DHCP leases with dnsmasq's own ``dhcp_release`` (given the
address dnsmasq serves DHCP on, the interface is looked up on the node at run time); the lease
database is never edited here.

The node may need root: pass ``_sudo=True`` when calling the operation.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from string import Formatter

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand, operation

from facts.dnsmasq import (
    DEFAULT_ADDN_HOSTS,
    DEFAULT_ETC_HOSTS,
    DEFAULT_HOSTSFILE,
    DnsmasqNode,
    DnsmasqReservations,
    HostsFileText,
)
from facts.util.script_files import read_script
from inventories.defaults import DNSMASQ_CONF as DEFAULT_DNSMASQ_CONF
from inventories.defaults import DNSMASQ_PID_FILE as DEFAULT_PID_FILE
from inventories.manifest_model import VmSpec
from operations.util.dnsmasq_entries import (
    ADDN_HOSTS_HEADER,
    BLOCK_BEGIN,
    BLOCK_END,
    DHCP_HOSTS_HEADER,
    OWNER_COMMENT,
    OWNER_TAG_PREFIX,
    Entry,
    EntryError,
    check_owner,
    entries_from,
    foreign,
    macs_from,
    plan,
    render_addn_hosts,
    render_dhcp_hosts,
    request_lines,
    sorted_entries,
    splice_hosts_block,
    unified_diff,
)
from operations.util.output import log

# release_leases_on: release on the address the node's own dnsmasq configuration (dnsmasq_conf) serves
# DHCP on, read with the reservations in one round trip; nothing when it serves no DHCP.
RELEASE_AS_CONFIGURED = "configured"

# How long a run waits for another run's lock on the management node before giving up.
DEFAULT_LOCK_WAIT = 120

Commands = Generator[StringCommand, None, None]
# The entries to add, or the MACs to remove.
Wanted = list[Entry] | list[str]


@dataclass(frozen=True)
class FileWrite:
    path: str
    old: str | None
    new: str


def _shell(template: str, **values: str) -> StringCommand:
    """Fixed shell text with ``{field}`` placeholders, each replaced by the shell-quoted value."""
    bits: list[str | QuoteString] = []
    for literal, field, _spec, _conversion in Formatter().parse(template):
        if literal:
            bits.append(literal)
        if field is not None:
            bits.append(QuoteString(values[field]))
    return StringCommand(*bits, _separator="")


# The program and its awk parts, files beside the code (operations/scripts/), read once at import and never
# edited: apply_command puts the values in front of the program as quoted assignments.
RESERVATIONS_SCRIPT = read_script("dnsmasq-reservations.sh", package="operations")
MERGE_AWK = read_script("dnsmasq-merge.awk", package="operations")
FILL_AWK = read_script("dnsmasq-fill.awk", package="operations")
SPLICE_AWK = read_script("dnsmasq-splice.awk", package="operations")
# The line templates the fill and splice programs fill, rendered by Entry itself: with an owner tag, without.
_TEMPLATE = Entry("@MAC@", "@IP@", "@FQDN@", "@SHORT@", "@OWNER@")
_UNTAGGED = Entry("@MAC@", "@IP@", "@FQDN@", "@SHORT@")

# The program's prelude: every value a quoted assignment.
_PRELUDE = """\
h={hostsfile}; a={addn_hosts}; e={etc_hosts}; conf={conf}; pidf={pid_file}; rel={release}
wait={wait}
merge={merge}; fill={fill}; splice={splice}
dhcp_line={dhcp_line}; dhcp_untagged={dhcp_untagged}
hosts_line={hosts_line}; hosts_untagged={hosts_untagged}
owner_prefix={owner_prefix}; owner_comment={owner_comment}
dhcp_header={dhcp_header}; hosts_header={hosts_header}
block_begin={begin}; block_end={end}
"""


def apply_command(
    requests: Sequence[str],
    hostsfile: str,
    addn_hosts: str,
    dnsmasq_conf: str | None = None,
    pid_file: str | None = None,
    etc_hosts_path: str | None = None,
    release_address: str | None = None,
    lock_wait: int = DEFAULT_LOCK_WAIT,
) -> StringCommand:
    """One command: lock, read, check and merge ``requests``, stage, validate, rename, SIGHUP, release.

    ``requests`` are ``add MAC IP FQDN SHORT`` / ``del MAC`` lines (see ``request_lines``); they
    travel on stdin, never on the command line. On any conflict or failure before the rename, the
    old files stay and the temporary files go.
    """
    prelude = _shell(
        _PRELUDE,
        hostsfile=hostsfile,
        addn_hosts=addn_hosts,
        etc_hosts=etc_hosts_path or "",
        conf=dnsmasq_conf or "",
        pid_file=pid_file or "",
        release=release_address or "",
        wait=str(int(lock_wait)),
        merge=MERGE_AWK,
        splice=SPLICE_AWK,
        fill=FILL_AWK,
        dhcp_line=_TEMPLATE.dhcp_line(),
        dhcp_untagged=_UNTAGGED.dhcp_line(),
        owner_prefix=OWNER_TAG_PREFIX,
        owner_comment=OWNER_COMMENT,
        hosts_line=_TEMPLATE.hosts_line(),
        hosts_untagged=_UNTAGGED.hosts_line(),
        dhcp_header=DHCP_HOSTS_HEADER,
        hosts_header=ADDN_HOSTS_HEADER,
        begin=BLOCK_BEGIN,
        end=BLOCK_END,
    )
    # Bounded: the lock wait plus time for the checks, dnsmasq --test, the renames and the releases.
    _shebang, program = RESERVATIONS_SCRIPT.split("\n", 1)
    return StringCommand(prelude, program, _separator="", _stdin=list(requests), _timeout=int(lock_wait) + 60)


def _release_address(value: object, conf: str) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value))) if value else None
    except ValueError:
        log(f"{conf}: listen-address={value!r} is not an IP address", "warning")
        return None


def _log_diff(writes: Sequence[FileWrite]) -> None:
    for write in writes:
        log(f"{write.path}:")
        for line in unified_diff(write.old, write.new, write.path):
            log(f"    {line}")


@dataclass(frozen=True)
class _Arguments:
    """The checked arguments: the entries (or MACs) asked for, and where leases are released."""

    wanted: Wanted
    # release_leases_on="configured" on removal: the address comes from the node's dnsmasq_conf.
    configured: bool
    release_address: str | None


@dataclass(frozen=True)
class _NodeFiles:
    """What the prepare-time fact read on the node: the reservations, and the address to release on."""

    current: dict[str, Entry]
    release_address: str | None
    # dnsmasq_conf serves DHCP but names no usable listen-address: removed leases are not released.
    unreleasable: bool


def _checked_arguments(
    entries: Sequence[Entry | VmSpec | dict[str, str]],
    present: bool,
    paths: Sequence[str],
    release_leases_on: str | None,
    lock_wait: object,
    owner: str | None,
) -> _Arguments:
    """The operation's arguments checked in order; a bad one is an OperationValueError naming it."""
    if len({os.path.normpath(path) for path in paths}) != len(paths):
        raise OperationValueError(f"dhcp_reservations: the files must differ: {', '.join(paths)}")
    configured = release_leases_on == RELEASE_AS_CONFIGURED and not present
    release_address = None if release_leases_on == RELEASE_AS_CONFIGURED else release_leases_on
    if release_address is not None:
        try:
            release_address = str(ipaddress.ip_address(release_address))
        except ValueError:
            raise OperationValueError(
                f"dhcp_reservations: release_leases_on={release_address!r} is not an IP address"
            ) from None
    if not isinstance(lock_wait, int) or isinstance(lock_wait, bool) or not 1 <= lock_wait <= 3600:
        raise OperationValueError(f"dhcp_reservations: lock_wait={lock_wait!r}: expected 1 to 3600 seconds")
    try:
        if owner is not None:
            check_owner(owner)
        wanted: Wanted = entries_from(entries) if present else macs_from(entries)
        if present and owner is not None:
            wanted = [replace(entry, owner=owner) for entry in wanted if isinstance(entry, Entry)]
    except EntryError as exc:
        raise OperationValueError(f"dhcp_reservations: invalid entries:\n{exc}") from None
    return _Arguments(wanted, configured, release_address)


def _read_node(
    hostsfile: str, addn_hosts: str, dnsmasq_conf: str | None, arguments: _Arguments
) -> _NodeFiles:
    """One fact read: the reservations, with the DHCP listen-address of dnsmasq_conf when it is asked for."""
    if arguments.configured and dnsmasq_conf:
        node = host.get_fact(DnsmasqNode, hostsfile=hostsfile, addn_hosts=addn_hosts, conf=dnsmasq_conf)
        release = _release_address(node.get("listen_address"), dnsmasq_conf) if node["dhcp"] else None
        current = {mac: Entry(**value) for mac, value in node["reservations"].items()}
        return _NodeFiles(current, release, bool(node["dhcp"]) and release is None)
    fact = host.get_fact(DnsmasqReservations, hostsfile=hostsfile, addn_hosts=addn_hosts)
    current = {mac: Entry(**value) for mac, value in fact.items()}
    return _NodeFiles(current, arguments.release_address, False)


def _planned(
    current: dict[str, Entry],
    wanted: Wanted,
    present: bool,
    dhcp_range: str | None,
    source: str,
    owner: str | None,
    remove_untagged: bool,
) -> dict[str, Entry]:
    """The reservations after the change; on removal, other owners' entries that stay are named."""
    try:
        result = plan(
            current, wanted, present, dhcp_range, source=source, owner=owner, untagged=remove_untagged
        )
    except EntryError as exc:
        raise OperationValueError(f"dhcp_reservations: conflicting reservations:\n{exc}") from None
    if not present:
        for entry in foreign(current, [str(mac) for mac in wanted], owner, remove_untagged):
            why = "another manifest's" if entry.owner else "untagged (written before owner tags)"
            log(
                f"keeping the reservation of {entry.owned_label()}: {why}, not this manifest's ({owner})",
                "warning",
            )
    return result


def _file_writes(
    current: dict[str, Entry],
    result: dict[str, Entry],
    hostsfile: str,
    addn_hosts: str,
    etc_hosts_path: str | None,
) -> list[FileWrite]:
    """The files whose contents change (reading /etc/hosts, one fact, when its block is kept)."""
    writes: list[FileWrite] = []
    for path, render in ((hostsfile, render_dhcp_hosts), (addn_hosts, render_addn_hosts)):
        old, new = render(current.values()), render(result.values())
        if old != new:
            writes.append(FileWrite(path, old, new))
    if etc_hosts_path is not None:
        text = host.get_fact(HostsFileText, path=etc_hosts_path)
        try:
            new_text = splice_hosts_block(text, [e.hosts_line() for e in sorted_entries(result.values())])
        except EntryError as exc:
            raise OperationValueError(f"dhcp_reservations: {etc_hosts_path}: {exc}") from None
        if new_text is not None and new_text != text:
            writes.append(FileWrite(etc_hosts_path, text, new_text))
    return writes


def _removed(wanted: Wanted, current: dict[str, Entry], result: dict[str, Entry]) -> list[str]:
    """The MACs asked for that are reserved now and not after the change."""
    return [mac for mac in wanted if isinstance(mac, str) and mac in current and mac not in result]


def _warn_unreleased(current: dict[str, Entry], removed: Sequence[str], dnsmasq_conf: str | None) -> None:
    for mac in removed:
        log(
            f"the DHCP lease of {current[mac].hostname} ({current[mac].ip}, MAC {mac}) is not "
            f"released: {dnsmasq_conf} serves DHCP but names no usable listen-address; the "
            "address stays taken until the lease expires",
            "warning",
        )


def _log_diff_once(writes: Sequence[FileWrite]) -> None:
    """With --diff: at prepare (before the confirmation), or at execute when there was no prepare (-y)."""
    state = host.state
    if state.config.DIFF and (not state.is_executing or not getattr(state, "check_for_changes", True)):
        _log_diff(writes)


def _requests(
    wanted: Wanted,
    removed: list[str],
    present: bool,
    owner: str | None,
    remove_untagged: bool,
) -> list[str]:
    if present:
        return request_lines([entry for entry in wanted if isinstance(entry, Entry)], present=True)
    # Only what is reserved now and ours: the node removes (and releases) exactly these under the
    # lock, checking the owner tag again there.
    return request_lines(removed, present=False, owner=owner, untagged=remove_untagged)


@operation()
def dhcp_reservations(
    entries: Sequence[Entry | VmSpec | dict[str, str]],
    present: bool = True,
    hostsfile: str = DEFAULT_HOSTSFILE,
    addn_hosts: str = DEFAULT_ADDN_HOSTS,
    dnsmasq_conf: str | None = DEFAULT_DNSMASQ_CONF,
    pid_file: str | None = DEFAULT_PID_FILE,
    dhcp_range: str | None = None,
    etc_hosts: bool = False,
    etc_hosts_path: str = DEFAULT_ETC_HOSTS,
    release_leases_on: str | None = None,
    lock_wait: int = DEFAULT_LOCK_WAIT,
    owner: str | None = None,
    remove_untagged: bool = True,
) -> Commands:
    """Add (``present=True``) or remove (``present=False``) static DHCP reservations and names.

    + entries: ``Entry`` objects, ``VmSpec`` objects (``inventories.dnsmasq_format.reservation``) or
      dicts with ``mac, ip, hostname, short`` (``short`` defaults to the first label of ``hostname``);
      the MAC is the identity. For removal only ``mac`` is used.
    + present: add the entries (an identical entry is left alone), or remove exactly the entries with
      these MACs
    + hostsfile / addn_hosts: the two files this operation owns (``dhcp-hostsfile=`` / ``addn-hosts=``)
    + dnsmasq_conf: main configuration checked with ``dnsmasq --test`` before anything is replaced
      (``None``: check only the new reservations)
    + pid_file: dnsmasq's pid file; that process must be running and gets SIGHUP after a change
      (``None``: no check, no signal)
    + dhcp_range: ``start,end[,mask][,lease]``; entries outside start..end are refused
    + etc_hosts: also keep the host lines in a ``# BEGIN kvm-qemu`` block of ``etc_hosts_path``
    + release_leases_on: the address dnsmasq serves DHCP on; when set, removing an entry also releases
      its DHCP lease with ``dhcp_release`` on the interface holding that address. ``"configured"``
      (``RELEASE_AS_CONFIGURED``): read from ``dnsmasq_conf`` on the node, with the reservations in one
      round trip (its ``dhcp-range`` and first ``listen-address``); a lease that then cannot be
      released is named in a warning
    + lock_wait: seconds to wait for another run's lock on the node
    + owner: the owner tag of the manifest writing (``# kvmq-owner <owner>`` on its addn-hosts lines): added
      entries carry it, an identical untagged entry is adopted, another owner's entry with the same
      MAC is a conflict, and removal keeps other owners' entries (naming them). ``None``: entries are
      written untagged and any entry may be removed (several manifests on one node need an owner)
    + remove_untagged: with ``owner``, whether removal may remove entries without an owner tag

    **Example:**

    .. code:: python

        dnsmasq.dhcp_reservations(
            name="DHCP reservations",
            entries=[{"mac": "52:54:00:00:00:13", "ip": "10.10.5.13", "hostname": "vm13.example.internal"}],
        )

    An IP or name already reserved for another MAC, a MAC already reserved with another IP or name,
    duplicates within ``entries`` or an address outside ``dhcp_range`` are errors before anything is
    written; the same checks run again on the node under the lock, against the files as they are then.
    """
    etc_path = etc_hosts_path if etc_hosts else None
    paths = [path for path in (hostsfile, addn_hosts, etc_path) if path is not None]
    arguments = _checked_arguments(entries, present, paths, release_leases_on, lock_wait, owner)
    # The fact serves the preview (no-op, --diff) and early errors; the command decides again under the lock.
    node = _read_node(hostsfile, addn_hosts, dnsmasq_conf, arguments)
    source = f"{hostsfile} / {addn_hosts}"
    result = _planned(node.current, arguments.wanted, present, dhcp_range, source, owner, remove_untagged)
    writes = _file_writes(node.current, result, hostsfile, addn_hosts, etc_path)
    if not writes:
        host.noop("dnsmasq reservations are up to date")
        return
    removed = _removed(arguments.wanted, node.current, result)
    if node.unreleasable:
        _warn_unreleased(node.current, removed, dnsmasq_conf)
    _log_diff_once(writes)
    yield apply_command(
        _requests(arguments.wanted, removed, present, owner, remove_untagged),
        hostsfile,
        addn_hosts,
        dnsmasq_conf,
        pid_file,
        etc_path,
        node.release_address,
        lock_wait,
    )
