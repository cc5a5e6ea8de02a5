"""Start the manifest's VMs.

pyinfra inventories/manifest.py deploys/start.py
"""

from deploys._settings import is_hypervisor, seconds, setting, vmspecs
from operations import libvirt

if is_hypervisor():
    libvirt.domains_power(
        name="Start VMs",
        domains=[spec.name for spec in vmspecs()],
        running=True,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
