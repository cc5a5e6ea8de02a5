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


# Merge the requests (stdin) into the files read under the lock. Inputs: part=1 the requests
# ("add MAC IP FQDN SHORT OWNER" / "del MAC OWNER UNTAGGED", see request_lines), part=2 the
# dhcp-hostsfile, part=3 the addn-hosts file.
# Output: one "KEY MAC IP FQDN SHORT OWNER" line per entry (KEY sorts by address, OWNER "-" when the
# entry has no owner tag), and "MAC IP" lines of removed entries to the file REL. Another manifest's
# entry named by a "del" request is kept and named on stderr. Any conflict is printed and nothing is
# output (exit 3).
_MERGE_AWK = r"""
function problem(msg) { print "kvm-qemu: " msg > "/dev/stderr"; bad = 1 }
function lc(s) { return tolower(s) }
function label(m) { return cfq[m] " (" cip[m] ", MAC " m owned(m) ")" }
function owned(m) { return cown[m] == "" ? "" : ", owner tag " cown[m] }
part == 1 && $1 == "add" {
  n++; am[n] = lc($2); ai[n] = $3; af[n] = $4; as[n] = $5; ao[n] = ($6 == "" ? "-" : $6); next
}
part == 1 && $1 == "del" { del[lc($2)] = 1; dow[lc($2)] = ($3 == "" ? "*" : $3); dun[lc($2)] = $4; next }
part == 1 { problem("unexpected request line: " $0); next }
/^[ \t\r]*(#|$)/ { next }
part == 2 {
  # MAC, IP and short name by their form, so optional items (id:..., set:...) may sit between them;
  # an older line may hold the owner tag as set:kvmq-OWNER (it now lives in the addn-hosts line).
  k = split($0, x, ","); m = ""; ip = ""; s = ""; ow = ""
  for (j = 1; j <= k; j++) {
    f = x[j]; gsub(/[ \t\r]/, "", f)
    if (f ~ /^[0-9A-Fa-f][0-9A-Fa-f]:/ && length(f) == 17) m = lc(f)
    else if (f ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) ip = f
    else if (index(f, P) == 1) ow = substr(f, length(P) + 1)
    else if (f !~ /:/ && f != "") s = f
  }
  if (m == "" || ip == "" || s == "") { problem(H ": unexpected line: " $0); next }
  cm[++nc] = m; cip[m] = ip; csh[m] = s; cown[m] = ow; next
}
part == 3 { hf[$1] = $2; if ($4 == "#" && ("# " $5) == O && NF == 6) hown[$1] = $6; next }
END {
  for (i = 1; i <= nc; i++) {
    m = cm[i]; ip = cip[m]
    if (!(ip in hf)) { problem(ip " is in " H " but not in " A ": fix or remove the line"); continue }
    cfq[m] = hf[ip]
    if (cown[m] == "" && (ip in hown)) cown[m] = hown[ip]
    if (m in del) {
      if (dow[m] == "*" || cown[m] == dow[m] || (cown[m] == "" && dun[m] == 1)) { released[m] = ip; continue }
      print "kvm-qemu: kept " label(m) ": " (cown[m] == "" ? "no owner tag (written before owner tags)" : \
            "it belongs to another manifest") > "/dev/stderr"
    }
    keep[m] = 1; ownip[ip] = m; own[lc(cfq[m])] = m; own[lc(csh[m])] = m
  }
  for (i = 1; i <= n; i++) {
    m = am[i]
    if (m in keep) {
      if (cip[m] == ai[i] && lc(cfq[m]) == lc(af[i]) && lc(csh[m]) == lc(as[i])) {
        if (ao[i] == "-" || cown[m] == ao[i]) continue
        if (cown[m] == "") { cown[m] = ao[i]; continue }
        problem(af[i] " (" ai[i] ", MAC " m ") is reserved in " H " by another manifest (owner tag " \
                cown[m] ", this manifest's is " ao[i] "): delete it with that manifest, or set " \
                "dhcp_owner=" cown[m] " if that is this manifest under another path")
        continue
      }
      problem("MAC " m " of " af[i] " (" ai[i] ") is already reserved for " label(m) " in " H \
              ": one MAC for two VMs (a VM of the same name in another manifest, or two names that " \
              "derive one MAC); delete the other reservation or set macaddress")
      continue
    }
    if (ai[i] in ownip) {
      problem("IP address " ai[i] " of " af[i] " (MAC " m ") is already reserved in " H " for " \
              label(ownip[ai[i]]))
      continue
    }
    if (lc(af[i]) in own) {
      problem("name " af[i] " of MAC " m " is already reserved in " A " for " label(own[lc(af[i])]))
      continue
    }
    if (lc(as[i]) in own) {
      problem("name " as[i] " of " af[i] " (MAC " m ") is already reserved in " A " for " \
              label(own[lc(as[i])]))
      continue
    }
    keep[m] = 1; cip[m] = ai[i]; cfq[m] = af[i]; csh[m] = as[i]; cown[m] = (ao[i] == "-" ? "" : ao[i])
    ownip[ai[i]] = m; own[lc(af[i])] = m; own[lc(as[i])] = m
  }
  if (bad) exit 3
  for (m in keep) {
    split(cip[m], o, ".")
    key = ((o[1] * 256 + o[2]) * 256 + o[3]) * 256 + o[4]
    printf "%.0f %s %s %s %s %s\n", key, m, cip[m], cfq[m], csh[m], (cown[m] == "" ? "-" : cown[m])
  }
  for (m in released) print m, released[m] > REL
}
"""

# One line per merged entry ("KEY MAC IP FQDN SHORT OWNER"), from the templates rendered by Entry itself:
# T with the owner tag, U for an entry without one.
_FILL_AWK = r"""
{
  l = ($6 == "-") ? U : T
  gsub(/@MAC@/, $2, l); gsub(/@IP@/, $3, l); gsub(/@FQDN@/, $4, l); gsub(/@SHORT@/, $5, l)
  gsub(/@OWNER@/, $6, l)
  print l
}
"""
_TEMPLATE = Entry("@MAC@", "@IP@", "@FQDN@", "@SHORT@", "@OWNER@")
_UNTAGGED = Entry("@MAC@", "@IP@", "@FQDN@", "@SHORT@")

# /etc/hosts with the "# BEGIN kvm-qemu" block replaced (part=1: the merged entries, part=2: the file).
_SPLICE_AWK = r"""
part == 1 { l = T; gsub(/@IP@/, $3, l); gsub(/@FQDN@/, $4, l); gsub(/@SHORT@/, $5, l); blk[++nb] = l; next }
function block() { if (nb) { print B; for (i = 1; i <= nb; i++) print blk[i]; print E } }
{ l = $0; sub(/[ \t\r\f\v]+$/, "", l) }
l == B { nbeg++; if (nbeg == 1 && !nend) { inside = 1; block() } else bad = 1; next }
l == E { nend++; if (!inside) bad = 1; inside = 0; next }
!inside { print }
END {
  if (bad || nbeg != nend) {
    print "kvm-qemu: " F " has a malformed kvm-qemu block (" nbeg " '" B "' and " nend " '" E "' lines); " \
          "fix it by hand" > "/dev/stderr"
    exit 3
  }
  if (!nbeg) block()
}
"""

_SCRIPT = """\
umask 077
PATH="$PATH:/usr/sbin:/sbin"
LC_ALL=C; export LC_ALL
tr= tl= trel= t0= t1= t2= tc=
trap 'rm -f -- "$tr" "$tl" "$trel" "$t0" "$t1" "$t2" "$tc"' EXIT
fail() {{ printf 'kvm-qemu: %s\\n' "$*" >&2; exit 1; }}
setup='deploys/mgmt_server.py sets it up on the management node'
h={hostsfile}; a={addn_hosts}; e={etc_hosts}; conf={conf}; pidf={pid_file}; rel={release}
for f in "$h" "$a" ${{e:+"$e"}}; do
  [ -d "$(dirname -- "$f")" ] || \
    fail "directory $(dirname -- "$f") is missing, so dnsmasq is not set up here: $setup"
  [ ! -L "$f" ] || fail "$f is a symbolic link; not followed, nothing was changed"
done
command -v dnsmasq >/dev/null 2>&1 || fail "dnsmasq is not installed: $setup"
command -v flock >/dev/null 2>&1 || fail "flock (util-linux) is not installed, nothing was changed"
if [ -n "$conf" ] && [ ! -f "$conf" ]; then fail "the dnsmasq configuration $conf is missing: $setup"; fi
pid=
if [ -n "$pidf" ]; then
  [ -e "$pidf" ] || fail "dnsmasq is not running (no $pidf), nothing was changed: start it; $setup"
  IFS= read -r pid < "$pidf" || [ -n "$pid" ] || fail "cannot read $pidf"
  case "$pid" in ''|*[!0-9]*) fail "$pidf does not hold a process id";; esac
  [ -d "/proc/$pid" ] || fail "dnsmasq is not running (stale $pidf), nothing was changed: start it; $setup"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ] || \
    fail "process $pid from $pidf is not dnsmasq; not signalled, nothing was changed"
fi
tr=$(mktemp) && cat > "$tr" || fail "cannot read the requested changes"
ifc=
# Leases are released where dnsmasq serves them: in its own network namespace when it runs in one.
nsx=
if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/self/ns/net)" ]; then
  nsx="nsenter --net=/proc/$pid/ns/net --"
fi
if [ -n "$rel" ] && grep -q '^del ' "$tr"; then
  command -v dhcp_release >/dev/null 2>&1 || \
    fail "dhcp_release is not installed (package dnsmasq-utils), nothing was changed: $setup"
  ifc=$($nsx ip -o addr show to "$rel" 2>/dev/null | awk '{{ print $2; exit }}')
  [ -n "$ifc" ] || \
    fail "no interface here holds $rel (dns_listen_address) to release DHCP leases on; nothing was changed"
fi
l="$h.lock"
[ ! -L "$l" ] || fail "$l is a symbolic link; not followed, nothing was changed"
exec 9>>"$l" || fail "cannot open the lock file $l"
flock -w {wait} 9 || fail "another run held $l for more than {wait} s; nothing was changed"
hs=$h; [ -e "$h" ] || hs=/dev/null
as=$a; [ -e "$a" ] || as=/dev/null
tl=$(mktemp) && trel=$(mktemp) || exit 1
awk -v H="$h" -v A="$a" -v REL="$trel" -v P={owner_prefix} -v O={owner_comment} {merge} \
  part=1 "$tr" part=2 "$hs" part=3 "$as" > "$tl" || \
fail "conflicting reservations, nothing was changed"
sort -n -o "$tl" "$tl" || exit 1
stage() {{
  t=$(mktemp "$(dirname -- "$1")/.kvm-qemu.XXXXXX") || exit 1
  if [ -e "$1" ]; then cp -p -- "$1" "$t" || exit 1; else chmod 644 "$t" || exit 1; fi
}}
stage "$h"; t0=$t
{{ printf '%s\\n' {dhcp_header}; awk -v T={dhcp_line} -v U={dhcp_untagged} {fill} "$tl"; }} > "$t0" || \
  fail "cannot write $t0"
stage "$a"; t1=$t
{{ printf '%s\\n' {hosts_header}; awk -v T={hosts_line} -v U={hosts_untagged} {fill} "$tl"; }} > "$t1" || \
  fail "cannot write $t1"
if [ -n "$e" ]; then
  es=$e; [ -e "$e" ] || es=/dev/null
  stage "$e"; t2=$t
  awk -v B={begin} -v E={end} -v F="$e" -v T={hosts_untagged} {splice} part=1 "$tl" part=2 "$es" \\
    > "$t2" || exit 1
  if [ ! -e "$e" ] && [ ! -s "$t2" ]; then rm -f -- "$t2"; t2=; fi
fi
changed=
cmp -s -- "$t0" "$hs" && {{ rm -f -- "$t0"; t0=; }} || changed=1
cmp -s -- "$t1" "$as" && {{ rm -f -- "$t1"; t1=; }} || changed=1
if [ -n "$t2" ]; then cmp -s -- "$t2" "$es" && {{ rm -f -- "$t2"; t2=; }} || changed=1; fi
if [ -z "$changed" ] && [ ! -s "$trel" ]; then echo "dnsmasq reservations are already up to date"; exit 0; fi
tc=$(mktemp) && awk -v T=dhcp-host={dhcp_line} -v U=dhcp-host={dhcp_untagged} {fill} "$tl" > "$tc" || \
  fail "cannot write $tc"
out=$(dnsmasq --test ${{conf:+"--conf-file=$conf"}} --conf-file="$tc" 2>&1 </dev/null) || \
fail "dnsmasq rejected the new reservations, nothing was changed: \
${{out:-dnsmasq --test failed without a message}}"
sync -- $t0 $t1 $t2 2>/dev/null || sync
install() {{
  [ -n "$1" ] || return 0
  mv -f -- "$1" "$2" 2>/dev/null || {{ cat -- "$1" > "$2" && rm -f -- "$1"; }} || fail "cannot replace $2"
}}
install "$t0" "$h"; t0=
install "$t1" "$a"; t1=
install "$t2" "$e"; t2=
if [ -n "$pid" ] && [ -n "$changed" ]; then
  kill -HUP "$pid" || fail "cannot send SIGHUP to dnsmasq (pid $pid)"
  echo "dnsmasq (pid $pid) re-read its reservation files"
fi
if [ -n "$ifc" ]; then
  while read -r m ip; do
    $nsx dhcp_release "$ifc" "$ip" "$m" || fail "dhcp_release $ifc $ip $m failed"
    echo "released the DHCP lease of $m ($ip) on $ifc"
  done < "$trel"
fi
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
    script = _shell(
        _SCRIPT,
        hostsfile=hostsfile,
        addn_hosts=addn_hosts,
        etc_hosts=etc_hosts_path or "",
        conf=dnsmasq_conf or "",
        pid_file=pid_file or "",
        release=release_address or "",
        wait=str(int(lock_wait)),
        merge=_MERGE_AWK,
        splice=_SPLICE_AWK,
        fill=_FILL_AWK,
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
    return StringCommand(script, _separator="", _stdin=list(requests), _timeout=int(lock_wait) + 60)


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
    paths = [hostsfile, addn_hosts] + ([etc_hosts_path] if etc_hosts else [])
    if len({os.path.normpath(path) for path in paths}) != len(paths):
        raise OperationValueError(f"dhcp_reservations: the files must differ: {', '.join(paths)}")
    configured = release_leases_on == RELEASE_AS_CONFIGURED and not present
    if release_leases_on == RELEASE_AS_CONFIGURED:
        release_leases_on = None
    if release_leases_on is not None:
        try:
            release_leases_on = str(ipaddress.ip_address(release_leases_on))
        except ValueError:
            raise OperationValueError(
                f"dhcp_reservations: release_leases_on={release_leases_on!r} is not an IP address"
            ) from None
    if not isinstance(lock_wait, int) or isinstance(lock_wait, bool) or not 1 <= lock_wait <= 3600:
        raise OperationValueError(f"dhcp_reservations: lock_wait={lock_wait!r}: expected 1 to 3600 seconds")
    try:
        if owner is not None:
            check_owner(owner)
        wanted: list[Entry] | list[str] = entries_from(entries) if present else macs_from(entries)
        if present and owner is not None:
            wanted = [replace(entry, owner=owner) for entry in wanted if isinstance(entry, Entry)]
    except EntryError as exc:
        raise OperationValueError(f"dhcp_reservations: invalid entries:\n{exc}") from None

    # The fact serves the preview (no-op, --diff) and early errors; the command decides again under the lock.
    if configured and dnsmasq_conf:
        node = host.get_fact(DnsmasqNode, hostsfile=hostsfile, addn_hosts=addn_hosts, conf=dnsmasq_conf)
        fact = node["reservations"]
        if node["dhcp"]:
            release_leases_on = _release_address(node.get("listen_address"), dnsmasq_conf)
    else:
        fact = host.get_fact(DnsmasqReservations, hostsfile=hostsfile, addn_hosts=addn_hosts)
    current = {mac: Entry(**value) for mac, value in fact.items()}
    try:
        result = plan(
            current,
            wanted,
            present,
            dhcp_range,
            source=f"{hostsfile} / {addn_hosts}",
            owner=owner,
            untagged=remove_untagged,
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
    if configured and dnsmasq_conf and release_leases_on is None and node["dhcp"]:
        for mac in wanted:
            if isinstance(mac, str) and mac in current and mac not in result:
                log(
                    f"the DHCP lease of {current[mac].hostname} ({current[mac].ip}, MAC {mac}) is not "
                    f"released: {dnsmasq_conf} serves DHCP but names no usable listen-address; the "
                    "address stays taken until the lease expires",
                    "warning",
                )
    state = host.state
    # Logged once: at prepare (before the confirmation), or at execute when there was no prepare (-y).
    if state.config.DIFF and (not state.is_executing or not getattr(state, "check_for_changes", True)):
        _log_diff(writes)
    if present:
        requests = request_lines([entry for entry in wanted if isinstance(entry, Entry)], present=True)
    else:
        # Only what is reserved now and ours: the node removes (and releases) exactly these under the
        # lock, checking the owner tag again there.
        requests = request_lines(
            [str(mac) for mac in wanted if mac in current and mac not in result],
            present=False,
            owner=owner,
            untagged=remove_untagged,
        )
    yield apply_command(
        requests,
        hostsfile,
        addn_hosts,
        dnsmasq_conf,
        pid_file,
        etc_hosts_path if etc_hosts else None,
        release_leases_on,
        lock_wait,
    )
