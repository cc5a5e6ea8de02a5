"""Converge vCPUs, memory and data disks of existing VMs to the manifest (live where possible).

pyinfra inventories/manifest.py deploys/resize.py
"""

from deploys._settings import is_hypervisor, seconds, setting, vmspecs
from operations import libvirt

if is_hypervisor():
    libvirt.domains_built(
        name="Converge VM resources",
        vmspecs=[spec.to_dict() for spec in vmspecs()],
        clone=False,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
