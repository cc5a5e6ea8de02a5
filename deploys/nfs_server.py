"""Export the secondary storage share to the cluster's hypervisors.

    pyinfra inventories/manifest.py deploys/nfs_server.py

Runs on the ``nfs_server`` group's host if the inventory has that group, else on the ``mgmt`` host.
Data keys and defaults: deploys/_host_defaults.py (NFS_DEFAULTS).
"""

from pyinfra import host

from deploys._host_defaults import nfs_server_hosts
from deploys._host_setup import nfs_server

if host in nfs_server_hosts():
    nfs_server()
