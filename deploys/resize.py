"""Converge vCPUs, memory and data disks of existing VMs to the manifest (live where possible).

pyinfra inventories/manifest.py deploys/resize.py
"""

from deploys.vms import resize

resize()
