"""Start the manifest's VMs.

pyinfra inventories/manifest.py deploys/start.py
"""

from deploys.vms import start

start()
