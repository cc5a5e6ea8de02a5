"""Per VM: manifest vs actual (state, vCPUs, memory, max memory, data disks, MAC, reservation).

    pyinfra inventories/manifest.py deploys/status.py

Read-only: one fact per host, printed as a table; drift is marked with ``!``.
"""

from deploys.vms import status

status()
