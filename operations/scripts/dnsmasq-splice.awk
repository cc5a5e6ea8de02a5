# kvm-qemu dnsmasq reservations: /etc/hosts with the "# BEGIN kvm-qemu" block replaced.
# Inputs: part=1 the merged entries, part=2 the file. Values (-v): B and E (the block's first and last
# lines), F (the file's path, for the message), T (the line template). Run by
# operations/scripts/dnsmasq-reservations.sh.
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
