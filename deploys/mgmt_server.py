"""Management node setup (``mgmt`` group): dnsmasq for the cluster's DNS names and DHCP reservations.

    pyinfra inventories/manifest.py deploys/mgmt_server.py

Data keys and defaults: docs/settings.md (management node); the work: deploys/hosts.py.
"""

from pyinfra import host

from deploys.hosts import mgmt_server

if "mgmt" in host.groups:
    mgmt_server()
