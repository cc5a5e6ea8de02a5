"""Delete the manifest's VMs with the files they own, and the DHCP reservations and DNS names of the
VMs that are gone.

pyinfra inventories/manifest.py deploys/delete.py [--data keep_disks=true] [--data command_timeout=60]

A VM whose hypervisor step failed (or whose hypervisor was not reached) keeps its reservation and DNS
name: the management node's step removes only those of VMs deleted in this run or already absent
(see ``operations.libvirt.reservations_of_deleted`` for why that holds).
"""

from pyinfra import host

from deploys._dns import dnsmasq_arguments, entries
from deploys._settings import all_vmspecs, flag, is_hypervisor, is_mgmt, seconds, setting, vmspecs
from operations import libvirt

if is_hypervisor():
    libvirt.domains_deleted(
        name="Delete VMs" + (" (keeping disks)" if flag("keep_disks") else " and their volumes"),
        domains=[spec.name for spec in vmspecs()],
        keep_disks=flag("keep_disks"),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
        shared_dirs=[setting("kvm_secondary_storage")],
    )

if is_mgmt():
    vm_hosts = {
        spec["name"]: member.name
        for member in host.inventory.get_group("kvm_hosts", default=[])
        for spec in member.data.get("kvm_vmspecs", [])
    }
    names = [spec.name for spec in all_vmspecs()]
    libvirt.reservations_of_deleted(
        name="Remove DHCP reservations and DNS names of deleted VMs",
        entries=[{"vm": vm, **entry} for vm, entry in zip(names, entries(), strict=True)],
        vm_hosts=vm_hosts,
        **dnsmasq_arguments(),
    )
