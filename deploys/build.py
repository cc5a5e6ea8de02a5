"""Build the manifest: clone every vmspec on its host, converge existing VMs, then DHCP + DNS on mgmt.

pyinfra inventories/manifest.py deploys/build.py [--data overcommit=2.0] [--data command_timeout=60]
"""

from pyinfra import host

from deploys._capacity import check_capacity
from deploys._dns import dnsmasq_arguments, entries
from deploys._settings import is_hypervisor, is_mgmt, number, seconds, setting, vmspecs
from facts.libvirt import Hypervisor
from operations import dnsmasq, libvirt
from operations._virsh import session_limit

if is_hypervisor():
    specs = vmspecs()
    # One read serves the preflight and the operation's planning; execution reads afresh.
    snapshot = host.get_fact(
        Hypervisor,
        uri=setting("libvirt_uri"),
        timeout=seconds("command_timeout"),
        _timeout=session_limit(1, seconds("command_timeout") + 10),
    )
    # A fact that failed (libvirtd down, timed out) already failed this host; its empty default must
    # not reach the preflight, whose refusal would stop every host.
    if host not in host.state.failed_hosts:
        check_capacity(specs, number("overcommit"), snapshot)
    libvirt.domains_built(
        name="Clone and converge VMs",
        vmspecs=[spec.to_dict() for spec in specs],
        uri=setting("libvirt_uri"),
        prepared_snapshot=snapshot,
        command_timeout=seconds("command_timeout"),
        copy_timeout=seconds("copy_timeout"),
    )

if is_mgmt():
    dnsmasq.dhcp_reservations(
        name="DHCP reservations and DNS names",
        entries=entries(),
        dhcp_range=setting("dhcp_range"),
        **dnsmasq_arguments(),
    )
