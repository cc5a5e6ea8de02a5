# kvm-qemu dnsmasq reservations: merge the requests into the files read under the lock.
# Run by operations/scripts/dnsmasq-reservations.sh (operations/dnsmasq.py, apply_command), which passes
# the values with -v: H (dhcp-hostsfile path), A (addn-hosts path), REL (file for released entries),
# P (owner tag prefix), O (owner comment).
# Inputs: part=1 the requests ("add MAC IP FQDN SHORT OWNER" / "del MAC OWNER UNTAGGED", see
# operations/util/dnsmasq_entries.request_lines), part=2 the dhcp-hostsfile, part=3 the addn-hosts file.
# Output: one "KEY MAC IP FQDN SHORT OWNER" line per entry (KEY sorts by address, OWNER "-" when the
# entry has no owner tag), and "MAC IP" lines of removed entries to the file REL. Another manifest's
# entry named by a "del" request is kept and named on stderr. Any conflict is printed and nothing is
# output (exit 3).
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
