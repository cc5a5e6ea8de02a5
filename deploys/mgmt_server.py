"""Management node setup (``mgmt`` group): dnsmasq for the cluster's DNS names and DHCP reservations.

    pyinfra inventories/manifest.py deploys/mgmt_server.py

Data keys and defaults: deploys/_host_defaults.py (MGMT_DEFAULTS).
"""

from pyinfra import host

from deploys._host_setup import mgmt_server

if "mgmt" in host.groups:
    mgmt_server()
