#!/bin/sh
# kvm-qemu bridge switch: stage | arm | apply | commit | rollback, run as "sh switch.sh <step>".
# Between arm and commit a timer runs "rollback", which restores the saved configuration unless
# "commit" ran first. stage, commit and rollback take $D/lock, so the two can never both happen.
#
# This file is the part every backend shares. operations/util/bridge_switch.py uploads it with a
# prelude in front: the host's values as quoted assignments (D, STAMP, UNIT, ROLLBACK_SECONDS, TIMER,
# APPLY_WAIT, LINKS, VIRTUAL, STAMP_B64) and the backend's functions (snapshot_list, write_new,
# install_new, family_apply, family_unapply, family_reapply, save_extra).
set -u
: "${D:?}" "${STAMP:?}" "${UNIT:?}" "${ROLLBACK_SECONDS:?}" "${TIMER:?}" "${APPLY_WAIT:?}" \
  "${LINKS:?}" "${VIRTUAL:?}" "${STAMP_B64:?}"
PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 077
TAB=$(printf '\t')

log() { printf '%s %s\n' "$(date '+%F %T')" "$*" >>"$D/log"; }
fail() { log "error: $*"; printf 'kvm-qemu bridge: %s\n' "$*" >&2; exit 1; }
state() { cat "$D/state" 2>/dev/null || echo none; }
set_state() {
  printf '%s\n' "$1" >"$D/state.new" && chmod 644 "$D/state.new" && mv -f "$D/state.new" "$D/state"
  log "state $1"
}
# shellcheck disable=SC2015 # fail runs when either opening or locking the file fails: wanted
lock() { exec 9>>"$D/lock" && flock -w "$1" 9 || fail "$D/lock is held by another run"; }
master_of() { ip -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }
addrs_of() { ip -o -4 addr show dev "$1" scope global 2>/dev/null | awk '{print $4}'; }

restore_files() {
  # Files the change installed or that now match the snapshot are removed unless saved; saved ones come back.
  { cut -f2 "$D/new/list"; snapshot_list; } | sort -u | while IFS= read -r f; do
    grep -qxF -- "$f" "$D/old/files" || rm -f -- "$f"
  done
  while IFS="$TAB" read -r n f; do cp -p -- "$D/old/$n" "$f" || log "cannot restore $f"; done < "$D/old/list"
}

restore_runtime() {
  # The kernel state saved at stage: whatever the tools did, the old links, masters, addresses and
  # default route come back, so the host is reachable the way it was.
  for i in $VIRTUAL; do
    existed=$(awk -v i="$i" '$1 == i { print "yes" }' "$D/old/links")
    if [ -z "$existed" ] && ip link show dev "$i" >/dev/null 2>&1; then
      ip link delete dev "$i" && log "removed $i"
    fi
  done
  while read -r i m up; do
    ip link show dev "$i" >/dev/null 2>&1 || { log "$i is gone; not restored"; continue; }
    cur=$(master_of "$i")
    if [ "$m" = - ]; then
      [ -z "$cur" ] || ip link set dev "$i" nomaster
    elif [ "$cur" != "$m" ]; then
      ip link set dev "$i" master "$m"
    fi
  done < "$D/old/links"
  while read -r i m up; do
    ip link show dev "$i" >/dev/null 2>&1 || continue
    for a in $(addrs_of "$i"); do grep -qxF "$a" "$D/old/addr.$i" || ip addr del "$a" dev "$i"; done
    cur=$(addrs_of "$i")
    while read -r a; do
      # shellcheck disable=SC2086 # $cur is the address list, one word per address
      printf '%s\n' $cur | grep -qxF "$a" || ip addr add "$a" dev "$i"
    done < "$D/old/addr.$i"
    [ "$up" = up ] && ip link set dev "$i" up
  done < "$D/old/links"
  if [ -s "$D/old/route" ] && [ "$(ip -4 route show default)" != "$(cat "$D/old/route")" ]; then
    # shellcheck disable=SC2086 # a saved route line, split into ip's arguments
    while read -r r; do ip route replace $r; done < "$D/old/route"
  fi
  return 0
}

disarm() {
  if [ -f "$D/timer.pid" ]; then
    pid=$(cat "$D/timer.pid")
    case "$pid" in ''|*[!0-9]*) ;; *)
      if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$D/switch.sh"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      fi;;
    esac
    rm -f "$D/timer.pid"
  fi
  if [ -f "$D/timer.unit" ]; then
    systemctl stop "$UNIT.timer" >/dev/null 2>&1
    rm -f "$D/timer.unit"
  fi
  return 0
}

do_stage() {
  lock 30
  case "$(state)" in
    armed|applying|applied) fail "a change is pending (state $(state)); its rollback is still armed";;
  esac
  rm -rf "$D/old" "$D/new" "$D/stamp" "$D/timer.pid" "$D/timer.unit"
  mkdir -m 700 "$D/old" "$D/new" || fail "cannot create $D/old"
  : >"$D/old/list"; : >"$D/old/links"; : >"$D/new/list"
  n=0
  snapshot_list > "$D/old/files"
  while IFS= read -r f; do
    n=$((n + 1)); cp -p -- "$f" "$D/old/$n" || fail "cannot save $f"
    printf '%s\t%s\n' "$n" "$f" >>"$D/old/list"
  done < "$D/old/files"
  for i in $LINKS; do
    ip link show dev "$i" >/dev/null 2>&1 || continue
    m=$(master_of "$i")
    if ip -o link show dev "$i" | grep -q '[<,]UP[,>]'; then up=up; else up=down; fi
    printf '%s %s %s\n' "$i" "${m:--}" "$up" >>"$D/old/links"
    addrs_of "$i" > "$D/old/addr.$i"
  done
  ip -4 route show default | sed 's/ linkdown//; s/ dead//' > "$D/old/route"
  save_extra || fail "cannot save the active configuration"
  write_new || fail "cannot write the new files"
  printf '%s\n' "$STAMP_B64" | base64 -d > "$D/stamp" || fail "cannot write $D/stamp"
  set_state staged
  echo "staged: saved $(wc -l < "$D/old/list") file(s) and the state of: $LINKS"
}

do_arm() {
  lock 30
  [ "$(state)" = staged ] || fail "arm: state is $(state), expected staged"
  if [ "$TIMER" = auto ] && [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
    systemctl reset-failed "$UNIT.service" "$UNIT.timer" >/dev/null 2>&1
    systemd-run --quiet --unit="$UNIT" --on-active="$ROLLBACK_SECONDS" --timer-property=AccuracySec=1s \
      /bin/sh "$D/switch.sh" rollback || fail "systemd-run could not arm the rollback timer"
    echo "$UNIT" > "$D/timer.unit"
    how="systemd timer $UNIT.timer"
  else
    # shellcheck disable=SC2016 # $1 and $2 are the inner sh's arguments, expanded there
    setsid sh -c 'sleep "$1"; exec sh "$2" rollback' sh "$ROLLBACK_SECONDS" "$D/switch.sh" \
      </dev/null >>"$D/log" 2>&1 9>&- &
    echo $! > "$D/timer.pid"
    how="background timer (pid $!)"
  fi
  set_state armed
  echo "armed: $how restores the old configuration in $ROLLBACK_SECONDS s unless committed"
}

do_apply_worker() {
  lock 30
  [ "$(state)" = applying ] || fail "apply: state is $(state), expected applying"
  if install_new && log "installed the new files" && family_apply >>"$D/log" 2>&1; then
    set_state applied
  else
    log "apply failed; rolling back now"
    family_unapply >>"$D/log" 2>&1; restore_files; family_reapply >>"$D/log" 2>&1
    restore_runtime >>"$D/log" 2>&1
    disarm
    set_state failed
  fi
}

do_apply() {
  [ "$(state)" = armed ] || fail "apply: state is $(state), expected armed"
  set_state applying
  # Detached: the change may cut the SSH session that started it.
  setsid sh "$D/switch.sh" apply-worker </dev/null >>"$D/log" 2>&1 9>&- &
  waited=0
  while [ "$waited" -lt "$APPLY_WAIT" ]; do
    case "$(state)" in
      applied) echo "applied"; return 0;;
      failed) tail -n 20 "$D/log" >&2; fail "apply failed; the old configuration was restored";;
    esac
    sleep 1; waited=$((waited + 1))
  done
  fail "apply still running after $APPLY_WAIT s; the rollback timer restores the old configuration"
}

do_commit() {
  lock 60
  [ "$(state)" = applied ] || fail "commit: state is $(state), expected applied (rolled back already?)"
  # shellcheck disable=SC2015 # fail runs when any step of writing the stamp fails: wanted
  mkdir -p -- "$(dirname -- "$STAMP")" && cp -- "$D/stamp" "$STAMP.new" && chmod 644 "$STAMP.new" \
    && mv -f -- "$STAMP.new" "$STAMP" || fail "cannot write $STAMP"
  set_state committed
  disarm
  rm -rf "$D/old" "$D/new"
  echo "committed; rollback disarmed"
}

do_rollback() {
  lock 300
  case "$(state)" in
    armed|applying|applied) ;;
    *) log "rollback: state $(state), nothing to do"; exit 0;;
  esac
  log "rollback: restoring the old configuration"
  family_unapply >>"$D/log" 2>&1
  restore_files
  family_reapply >>"$D/log" 2>&1 || log "re-apply of the old files failed; restoring the kernel state anyway"
  restore_runtime >>"$D/log" 2>&1
  rm -f "$D/timer.pid" "$D/timer.unit"
  set_state rolledback
}

case "${1:-}" in
  stage) do_stage;;
  arm) do_arm;;
  apply) do_apply;;
  apply-worker) do_apply_worker;;
  commit) do_commit;;
  rollback) do_rollback;;
  *) fail "usage: switch.sh stage|arm|apply|commit|rollback";;
esac
