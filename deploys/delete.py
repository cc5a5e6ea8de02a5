"""Delete the manifest's VMs with the volumes they own, and their DHCP reservations and DNS names.

pyinfra inventories/manifest.py deploys/delete.py [--data keep_disks=true]
"""

from deploys._dns import dnsmasq_arguments, entries
from deploys._settings import flag, is_hypervisor, is_mgmt, setting, vmspecs
from operations import dnsmasq, libvirt

if is_hypervisor():
    libvirt.domains_deleted(
        name="Delete VMs" + (" (keeping disks)" if flag("keep_disks") else " and their volumes"),
        domains=[spec.name for spec in vmspecs()],
        keep_disks=flag("keep_disks"),
        uri=setting("libvirt_uri"),
    )

if is_mgmt():
    dnsmasq.dhcp_reservations(
        name="Remove DHCP reservations and DNS names",
        entries=entries(),
        present=False,
        **dnsmasq_arguments(),
    )
