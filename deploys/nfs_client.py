"""Mount the NFS secondary share at the secondary pool path on every ``kvm_hosts`` host.

    pyinfra inventories/manifest.py deploys/nfs_client.py

Data keys and defaults: deploys/_host_defaults.py (NFS_DEFAULTS).
"""

from pyinfra import host

from deploys._host_setup import nfs_client

if "kvm_hosts" in host.groups:
    nfs_client()
