"""Build the manifest: clone every vmspec on its host, converge existing VMs, then DHCP + DNS on mgmt.

pyinfra inventories/manifest.py deploys/build.py [--data vcpu_allocation_ratio=4.0]
    [--data memory_allocation_ratio=1.0] [--data command_timeout=60]

A host whose VMs do not fit (capacity preflight) fails alone with a per-host table; the others are built.
A VM the manifest puts on another host than the one it is defined on moves there first
(``deploys/placement.py``); it is converged by the next run.
"""

from deploys._capacity import allocation_ratios
from deploys._dns import dnsmasq_arguments, entries
from deploys._settings import is_hypervisor, is_mgmt, seconds, setting, vmspecs
from deploys.placement import defined_elsewhere, vms_placed
from operations import dnsmasq, libvirt

if is_hypervisor():
    # Placement hook: VMs the manifest moved to another host are migrated there, never cloned twice.
    vms_placed()
    arriving = defined_elsewhere()
    vcpu_ratio, memory_ratio = allocation_ratios()
    libvirt.domains_built(
        name="Clone and converge VMs",
        vmspecs=[spec.to_dict() for spec in vmspecs() if spec.name not in arriving],
        uri=setting("libvirt_uri"),
        vcpu_ratio=vcpu_ratio,
        memory_ratio=memory_ratio,
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
