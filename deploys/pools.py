"""Storage pools on every hypervisor: primary (local dir, autostart) and secondary (the NFS share).

pyinfra inventories/manifest.py deploys/pools.py
"""

from deploys._settings import is_hypervisor, seconds, setting
from operations import libvirt

if is_hypervisor():
    libvirt.pool(
        name="Primary storage pool",
        pool_name=setting("kvm_primary_pool"),
        path=setting("kvm_primary_storage"),
        autostart=True,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
    # Not autostarted: the NFS share may not be mounted yet when libvirtd starts.
    libvirt.pool(
        name="Secondary storage pool",
        pool_name=setting("kvm_secondary_pool"),
        path=setting("kvm_secondary_storage"),
        autostart=False,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
