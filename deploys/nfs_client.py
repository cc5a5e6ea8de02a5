"""Mount the NFS secondary share at the secondary pool path on every ``kvm_hosts`` host.

    pyinfra inventories/manifest.py deploys/nfs_client.py

Data keys and defaults: docs/settings.md (NFS share); the work: deploys/hosts.py.
"""

from pyinfra import host

from deploys.hosts import nfs_client

if "kvm_hosts" in host.groups:
    nfs_client()
