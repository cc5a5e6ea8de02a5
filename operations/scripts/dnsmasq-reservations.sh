#!/bin/sh
# kvm-qemu dnsmasq reservations: lock, read, check and merge the requests (stdin), stage, validate with
# dnsmasq --test, rename into place, SIGHUP dnsmasq, release the removed entries' leases.
#
# operations/dnsmasq.py (apply_command) runs this file's text with a prelude in front: the values as
# quoted assignments (h, a, e, conf, pidf, rel: the dhcp-hostsfile, the addn-hosts file, the /etc/hosts
# file or '', the dnsmasq configuration or '', its pid file or '', the address to release leases on or
# ''; wait: the seconds to wait for the lock; merge, fill, splice: the awk programs dnsmasq-*.awk beside
# this file; dhcp_line, dhcp_untagged, hosts_line, hosts_untagged: the line templates; owner_prefix,
# owner_comment, dhcp_header, hosts_header, block_begin, block_end). The file refuses to run without them.
: "${h:?}" "${a:?}" "${e?}" "${conf?}" "${pidf?}" "${rel?}" "${wait:?}" "${merge:?}" "${fill:?}" \
  "${splice:?}" "${dhcp_line:?}" "${dhcp_untagged:?}" "${hosts_line:?}" "${hosts_untagged:?}" "${owner_prefix:?}" \
  "${owner_comment:?}" "${dhcp_header:?}" "${hosts_header:?}" "${block_begin:?}" "${block_end:?}"
umask 077
PATH="$PATH:/usr/sbin:/sbin"
LC_ALL=C; export LC_ALL
tr='' tl='' trel='' t0='' t1='' t2='' tc=''
trap 'rm -f -- "$tr" "$tl" "$trel" "$t0" "$t1" "$t2" "$tc"' EXIT
fail() { printf 'kvm-qemu: %s\n' "$*" >&2; exit 1; }
setup='deploys/mgmt_server.py sets it up on the management node'
for f in "$h" "$a" ${e:+"$e"}; do
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
# shellcheck disable=SC2015 # fail when either mktemp or cat fails: wanted
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
  # shellcheck disable=SC2086 # $nsx is empty or the nsenter command, split into its words: wanted
  ifc=$($nsx ip -o addr show to "$rel" 2>/dev/null | awk '{ print $2; exit }')
  [ -n "$ifc" ] || \
    fail "no interface here holds $rel (dns_listen_address) to release DHCP leases on; nothing was changed"
fi
l="$h.lock"
[ ! -L "$l" ] || fail "$l is a symbolic link; not followed, nothing was changed"
exec 9>>"$l" || fail "cannot open the lock file $l"
flock -w "$wait" 9 || fail "another run held $l for more than $wait s; nothing was changed"
hs=$h; [ -e "$h" ] || hs=/dev/null
as=$a; [ -e "$a" ] || as=/dev/null
tl=$(mktemp) && trel=$(mktemp) || exit 1
awk -v H="$h" -v A="$a" -v REL="$trel" -v P="$owner_prefix" -v O="$owner_comment" "$merge" \
  part=1 "$tr" part=2 "$hs" part=3 "$as" > "$tl" || \
fail "conflicting reservations, nothing was changed"
sort -n -o "$tl" "$tl" || exit 1
stage() {
  t=$(mktemp "$(dirname -- "$1")/.kvm-qemu.XXXXXX") || exit 1
  if [ -e "$1" ]; then cp -p -- "$1" "$t" || exit 1; else chmod 644 "$t" || exit 1; fi
}
stage "$h"; t0=$t
{ printf '%s\n' "$dhcp_header"; awk -v T="$dhcp_line" -v U="$dhcp_untagged" "$fill" "$tl"; } > "$t0" || \
  fail "cannot write $t0"
stage "$a"; t1=$t
{ printf '%s\n' "$hosts_header"; awk -v T="$hosts_line" -v U="$hosts_untagged" "$fill" "$tl"; } > "$t1" || \
  fail "cannot write $t1"
if [ -n "$e" ]; then
  es=$e; [ -e "$e" ] || es=/dev/null
  stage "$e"; t2=$t
  awk -v B="$block_begin" -v E="$block_end" -v F="$e" -v T="$hosts_untagged" "$splice" \
    part=1 "$tl" part=2 "$es" > "$t2" || exit 1
  if [ ! -e "$e" ] && [ ! -s "$t2" ]; then rm -f -- "$t2"; t2=; fi
fi
changed=
# shellcheck disable=SC2015 # changed=1 also when the rm fails: the file then stays and is installed
cmp -s -- "$t0" "$hs" && { rm -f -- "$t0"; t0=; } || changed=1
# shellcheck disable=SC2015 # as above
cmp -s -- "$t1" "$as" && { rm -f -- "$t1"; t1=; } || changed=1
# shellcheck disable=SC2015 # as above
if [ -n "$t2" ]; then cmp -s -- "$t2" "$es" && { rm -f -- "$t2"; t2=; } || changed=1; fi
if [ -z "$changed" ] && [ ! -s "$trel" ]; then echo "dnsmasq reservations are already up to date"; exit 0; fi
# shellcheck disable=SC2015 # as above
tc=$(mktemp) && awk -v T="dhcp-host=$dhcp_line" -v U="dhcp-host=$dhcp_untagged" "$fill" "$tl" > "$tc" || \
  fail "cannot write $tc"
out=$(dnsmasq --test ${conf:+"--conf-file=$conf"} --conf-file="$tc" 2>&1 </dev/null) || \
fail "dnsmasq rejected the new reservations, nothing was changed: \
${out:-dnsmasq --test failed without a message}"
# shellcheck disable=SC2086 # the staged files that are left, empty ones dropped: wanted
sync -- $t0 $t1 $t2 2>/dev/null || sync
install() {
  [ -n "$1" ] || return 0
  mv -f -- "$1" "$2" 2>/dev/null || { cat -- "$1" > "$2" && rm -f -- "$1"; } || fail "cannot replace $2"
}
install "$t0" "$h"; t0=
install "$t1" "$a"; t1=
install "$t2" "$e"; t2=
if [ -n "$pid" ] && [ -n "$changed" ]; then
  kill -HUP "$pid" || fail "cannot send SIGHUP to dnsmasq (pid $pid)"
  echo "dnsmasq (pid $pid) re-read its reservation files"
fi
if [ -n "$ifc" ]; then
  while read -r m ip; do
    # shellcheck disable=SC2086 # as above: $nsx is empty or the nsenter command
    $nsx dhcp_release "$ifc" "$ip" "$m" || fail "dhcp_release $ifc $ip $m failed"
    echo "released the DHCP lease of $m ($ip) on $ifc"
  done < "$trel"
fi
