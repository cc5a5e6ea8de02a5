"""Stop the manifest's VMs: graceful shutdown, destroyed after ``stop_timeout`` seconds (``force``: at once).

pyinfra inventories/manifest.py deploys/stop.py [--data stop_timeout=60] [--data force=true]
    [--data command_timeout=60]
"""

from deploys.vms import stop

stop()
