"""Static DHCP reservations and DNS names served by dnsmasq, without a restart and without touching leases.

``dhcp_reservations`` owns two files, the dhcp-hostsfile (``MAC,IP,short``) and the addn-hosts file
(``IP FQDN short``), and optionally a marked block of /etc/hosts. It changes only what differs, in one
command per run: new contents go to temporary files next to their targets, ``dnsmasq --test`` checks the
configuration plus the new reservations, then the files are renamed into place and the running dnsmasq
gets SIGHUP, which makes it re-read them. The lease database is never read or written.

The node may need root: pass ``_sudo=True`` when calling the operation.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from string import Formatter
from typing import Any

from pyinfra import host, logger
from pyinfra.api import OperationValueError, QuoteString, StringCommand, operation

from facts.dnsmasq import (
    DEFAULT_ADDN_HOSTS,
    DEFAULT_ETC_HOSTS,
    DEFAULT_HOSTSFILE,
    DnsmasqReservations,
    HostsFileText,
)
from operations._dnsmasq_entries import (
    Entry,
    EntryError,
    entries_from,
    macs_from,
    plan,
    render_addn_hosts,
    render_dhcp_hosts,
    render_test_conf,
    sorted_entries,
    splice_hosts_block,
    unified_diff,
)

DEFAULT_DNSMASQ_CONF = "/etc/dnsmasq.conf"
DEFAULT_PID_FILE = "/run/dnsmasq/dnsmasq.pid"

Commands = Generator[StringCommand, None, None]


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


_PREAMBLE = """\
umask 022
PATH="$PATH:/usr/sbin:/sbin"
t0= t1= t2= tc=
trap 'rm -f -- "$t0" "$t1" "$t2" "$tc"' EXIT
fail() {{ printf 'kvm-qemu: %s\\n' "$*" >&2; exit 1; }}
"""

# Stage file @: a temporary file in the target's directory (created if missing), with the target's mode
# and owner (cp -p) or 0644 for a new file, holding the next stdin line decoded from base64.
_STAGE = """\
f@={path}
if [ -L "$f@" ]; then f@=$(readlink -f -- "$f@") || exit 1; fi
mkdir -p -- "$(dirname -- "$f@")" || exit 1
t@=$(mktemp "$(dirname -- "$f@")/.kvm-qemu.XXXXXX") || exit 1
if [ -e "$f@" ]; then cp -p -- "$f@" "$t@" || exit 1; else chmod 644 "$t@" || exit 1; fi
IFS= read -r b && printf '%s\\n' "$b" | base64 -d > "$t@" || fail "cannot write $t@"
"""

# dnsmasq --test skips the dhcp-hostsfile, so the new reservations are also given as dhcp-host options.
_VALIDATE = """\
tc=$(mktemp) && IFS= read -r b && printf '%s\\n' "$b" | base64 -d > "$tc" || fail "cannot write $tc"
out=$(dnsmasq --test {conf_option}--conf-file="$tc" 2>&1 </dev/null) || \
fail "dnsmasq rejected the new reservations, nothing was changed: $out"
"""

# rename(2) is atomic; a bind-mounted target (e.g. /etc/hosts in a container) cannot be renamed over,
# so that case falls back to rewriting it in place.
_INSTALL = """\
mv -f -- "$t@" "$f@" 2>/dev/null || {{ cat -- "$t@" > "$f@" && rm -f -- "$t@"; }} || fail "cannot replace $f@"
"""

_RELOAD = """\
pidf={pid_file}
if [ ! -e "$pidf" ]; then
  echo "dnsmasq is not running (no $pidf); it reads the new files when it starts"
else
  pid=; IFS= read -r pid < "$pidf"
  case "$pid" in ''|*[!0-9]*) fail "$pidf does not hold a process id";; esac
  if [ ! -d "/proc/$pid" ]; then
    echo "dnsmasq is not running (stale $pidf); it reads the new files when it starts"
  elif [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dnsmasq ]; then
    fail "process $pid from $pidf is not dnsmasq; not signalled"
  else
    kill -HUP "$pid" || fail "cannot send SIGHUP to dnsmasq (pid $pid)"
    echo "dnsmasq (pid $pid) re-read its reservation files"
  fi
fi
"""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def apply_command(
    writes: Sequence[FileWrite], test_conf: str, dnsmasq_conf: str | None, pid_file: str | None
) -> StringCommand:
    """One command: stage every file, validate, rename into place, SIGHUP dnsmasq.

    Contents travel on stdin (one base64 line per file, then the test configuration), never on a
    command line. If staging or validation fails, the old files stay and the temporary files go.
    """
    if not 1 <= len(writes) <= 3:
        raise ValueError("apply_command takes one to three files")
    parts = [_shell(_PREAMBLE)]
    for index, write in enumerate(writes):
        parts.append(_shell(_STAGE.replace("@", str(index)), path=write.path))
    if dnsmasq_conf is None:
        parts.append(_shell(_VALIDATE.replace("{conf_option}", "")))
    else:
        parts.append(_shell(_VALIDATE.replace("{conf_option}", "--conf-file={conf} "), conf=dnsmasq_conf))
    for index in range(len(writes)):
        parts.append(_shell(_INSTALL.replace("@", str(index))))
    if pid_file is not None:
        parts.append(_shell(_RELOAD, pid_file=pid_file))
    stdin = [_b64(write.new) for write in writes] + [_b64(test_conf)]
    return StringCommand(*parts, _separator="", _stdin=stdin)


def _log_diff(writes: Sequence[FileWrite]) -> None:
    prefix = getattr(host, "print_prefix", "")
    for write in writes:
        logger.info(f"{prefix}{write.path}:")
        for line in unified_diff(write.old, write.new, write.path):
            logger.info(f"{prefix}    {line}")


@operation()
def dhcp_reservations(
    entries: list[dict[str, Any]],
    present: bool = True,
    hostsfile: str = DEFAULT_HOSTSFILE,
    addn_hosts: str = DEFAULT_ADDN_HOSTS,
    dnsmasq_conf: str | None = DEFAULT_DNSMASQ_CONF,
    pid_file: str | None = DEFAULT_PID_FILE,
    dhcp_range: str | None = None,
    etc_hosts: bool = False,
    etc_hosts_path: str = DEFAULT_ETC_HOSTS,
) -> Commands:
    """Add/update (``present=True``) or remove (``present=False``) static DHCP reservations and names.

    + entries: dicts with ``mac, ip, hostname, short`` or VmSpec dicts (``ipaddress``; short name =
      first label of ``hostname``); the MAC is the identity. For removal only ``mac`` is used.
    + present: add or update the entries, or remove exactly the entries with these MACs
    + hostsfile / addn_hosts: the two files this operation owns (``dhcp-hostsfile=`` / ``addn-hosts=``)
    + dnsmasq_conf: main configuration checked with ``dnsmasq --test`` before anything is replaced
      (``None``: check only the new reservations)
    + pid_file: dnsmasq's pid file; that process gets SIGHUP after a change (``None``: no signal)
    + dhcp_range: ``start,end[,mask][,lease]``; entries outside start..end are refused
    + etc_hosts: also keep the host lines in a ``# BEGIN kvm-qemu`` block of ``etc_hosts_path``

    An IP or name already reserved for another MAC, duplicates within ``entries`` or an address outside
    ``dhcp_range`` raise OperationValueError before anything is written.
    """
    paths = [hostsfile, addn_hosts] + ([etc_hosts_path] if etc_hosts else [])
    if len({os.path.normpath(path) for path in paths}) != len(paths):
        raise OperationValueError(f"dhcp_reservations: the files must differ: {', '.join(paths)}")
    try:
        wanted: list[Entry] | list[str] = entries_from(entries) if present else macs_from(entries)
    except EntryError as exc:
        raise OperationValueError(f"dhcp_reservations: invalid entries:\n{exc}") from None

    fact = host.get_fact(DnsmasqReservations, hostsfile=hostsfile, addn_hosts=addn_hosts)
    current = {mac: Entry(**value) for mac, value in fact.items()}
    try:
        result = plan(current, wanted, present, dhcp_range, source=f"{hostsfile} / {addn_hosts}")
    except EntryError as exc:
        raise OperationValueError(f"dhcp_reservations: conflicting reservations:\n{exc}") from None

    writes: list[FileWrite] = []
    for path, render in ((hostsfile, render_dhcp_hosts), (addn_hosts, render_addn_hosts)):
        old, new = render(current.values()), render(result.values())
        if old != new:
            writes.append(FileWrite(path, old, new))
    if etc_hosts:
        text = host.get_fact(HostsFileText, path=etc_hosts_path)
        try:
            new_text = splice_hosts_block(text, [e.hosts_line() for e in sorted_entries(result.values())])
        except EntryError as exc:
            raise OperationValueError(f"dhcp_reservations: {etc_hosts_path}: {exc}") from None
        if new_text is not None and new_text != text:
            writes.append(FileWrite(etc_hosts_path, text, new_text))

    if not writes:
        host.noop("dnsmasq reservations are up to date")
        return
    state = host.state
    # Logged once: at prepare (before the confirmation), or at execute when there was no prepare (-y).
    if state.config.DIFF and (not state.is_executing or not getattr(state, "check_for_changes", True)):
        _log_diff(writes)
    yield apply_command(writes, render_test_conf(result.values()), dnsmasq_conf, pid_file)
