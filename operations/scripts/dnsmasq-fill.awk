# kvm-qemu dnsmasq reservations: one line per merged entry ("KEY MAC IP FQDN SHORT OWNER"), from the
# templates rendered by operations/util/dnsmasq_entries.Entry itself (-v): T with the owner tag, U for an
# entry without one. Run by operations/scripts/dnsmasq-reservations.sh.
{
  l = ($6 == "-") ? U : T
  gsub(/@MAC@/, $2, l); gsub(/@IP@/, $3, l); gsub(/@FQDN@/, $4, l); gsub(/@SHORT@/, $5, l)
  gsub(/@OWNER@/, $6, l)
  print l
}
