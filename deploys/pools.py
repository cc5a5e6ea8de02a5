"""Storage pools on every hypervisor: primary (local dir, autostart) and secondary (the NFS share).

pyinfra inventories/manifest.py deploys/pools.py
"""

from deploys.vms import pools

pools()
