"""Build the manifest: clone every vmspec on its host, converge existing VMs, then DHCP + DNS on mgmt.

pyinfra inventories/manifest.py deploys/build.py [--data vcpu_allocation_ratio=4.0]
    [--data memory_allocation_ratio=1.0] [--data command_timeout=60] [--data sysprep=true]

A host whose VMs do not fit (capacity preflight) fails alone with a per-host table; the others are built.
"""

from deploys._capacity import allocation_ratios
from deploys._dns import dnsmasq_arguments, entries
from deploys._seeds import cloud_init_seeds
from deploys._settings import is_hypervisor, is_mgmt, seconds, setting, vmspecs
from deploys._sysprep import with_sysprep_default
from operations import dnsmasq, libvirt

if is_hypervisor():
    vcpu_ratio, memory_ratio = allocation_ratios()
    libvirt.domains_built(
        name="Clone and converge VMs",
        vmspecs=[spec.to_dict() for spec in with_sysprep_default(vmspecs())],
        uri=setting("libvirt_uri"),
        vcpu_ratio=vcpu_ratio,
        memory_ratio=memory_ratio,
        command_timeout=seconds("command_timeout"),
        copy_timeout=seconds("copy_timeout"),
    )
    cloud_init_seeds()  # only VMs with cloudInit: their seed is written and attached before any start

if is_mgmt():
    dnsmasq.dhcp_reservations(
        name="DHCP reservations and DNS names",
        entries=entries(),
        dhcp_range=setting("dhcp_range"),
        **dnsmasq_arguments(),
    )
