"""Build the manifest: clone every vmspec on its host, converge existing VMs, then DHCP + DNS on mgmt.

pyinfra inventories/manifest.py deploys/build.py [--data vcpu_allocation_ratio=4.0]
    [--data memory_allocation_ratio=1.0] [--data command_timeout=60]

A host whose VMs do not fit (capacity preflight) fails alone with a per-host table; the others are built.
"""

from deploys.vms import build

build()
