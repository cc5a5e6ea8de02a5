"""Delete the manifest's VMs with the files they own, and the DHCP reservations and DNS names of the
VMs that are gone.

pyinfra inventories/manifest.py deploys/delete.py [--data keep_disks=true] [--data command_timeout=60]

A VM whose hypervisor step failed (or whose hypervisor was not reached) keeps its reservation and DNS
name: the management node's step removes only those of VMs deleted in this run or already absent
(see ``operations.libvirt.vm_reservations`` for why that holds).
"""

from deploys.vms import delete

delete()
