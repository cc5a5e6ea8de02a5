"""Stop the manifest's VMs: graceful shutdown, destroyed after ``stop_timeout`` seconds (``force``: at once).

pyinfra inventories/manifest.py deploys/stop.py [--data stop_timeout=60] [--data force=true]
    [--data command_timeout=60]
"""

from deploys._settings import flag, is_hypervisor, number, seconds, setting, vmspecs
from operations import libvirt

if is_hypervisor():
    libvirt.domains_power(
        name="Stop VMs",
        domains=[spec.name for spec in vmspecs()],
        running=False,
        force=flag("force"),
        timeout=int(number("stop_timeout")),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
