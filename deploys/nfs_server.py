"""Export the secondary storage share to the cluster's hypervisors.

    pyinfra inventories/manifest.py deploys/nfs_server.py

Runs on the ``nfs_server`` group's host if the inventory has that group, else on the ``mgmt`` host.
Data keys and defaults: docs/settings.md (NFS share); the work: deploys/hosts.py.
"""

from pyinfra import host

from deploys._settings import nfs_server_hosts
from deploys.hosts import nfs_server

if host in nfs_server_hosts():
    nfs_server()
