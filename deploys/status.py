"""Per VM: manifest vs actual (state, vCPUs, memory, max memory, data disks, MAC, reservation).

    pyinfra inventories/manifest.py deploys/status.py

Read-only: one fact per host, printed as a table; drift is marked with ``!``.
"""

from pyinfra import host, logger

from deploys._settings import all_vmspecs, is_hypervisor, is_mgmt, seconds, setting, vmspecs
from facts.dnsmasq import DnsmasqReservations
from facts.libvirt import Hypervisor
from operations._status import reservation_lines, status_lines
from operations._virsh import session_limit

if is_hypervisor():
    snapshot = host.get_fact(
        Hypervisor,
        uri=setting("libvirt_uri"),
        timeout=seconds("command_timeout"),
        _timeout=session_limit(1, seconds("command_timeout") + 10),
    )
    # A failed read (libvirtd down or timed out) fails this host with the reason; its empty default
    # would show every VM as absent.
    if host not in host.state.failed_hosts:
        for line in status_lines(vmspecs(), snapshot):
            logger.info(f"{host.print_prefix}{line}")

if is_mgmt():
    reservations = host.get_fact(
        DnsmasqReservations, hostsfile=setting("dhcp_hostsfile"), addn_hosts=setting("dns_addn_hosts")
    )
    for line in reservation_lines(all_vmspecs(), reservations):
        logger.info(f"{host.print_prefix}{line}")
