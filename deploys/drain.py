"""Drain a hypervisor: move every manifest VM off it onto the other hypervisors, within capacity.

pyinfra inventories/manifest.py deploys/drain.py --data drain=sm-02 [--dry]
    [--data vcpu_allocation_ratio=4.0] [--data memory_allocation_ratio=1.0] [--data migrate_timeout=1800]

Running VMs move live, shut-off ones offline. The plan and the manifest change that makes it permanent are
printed; after the moves the patched manifest is written next to the original as
``<manifest>.drain-<host>.json``.
"""

from deploys.placement import host_drained

host_drained()
