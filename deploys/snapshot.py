"""Named offline snapshots of the manifest's VMs (the VMs must be shut off).

pyinfra inventories/manifest.py deploys/snapshot.py
    creates every vmspec's ``snapshots`` that are missing
pyinfra inventories/manifest.py deploys/snapshot.py --data snapshot=NAME [--data snapshot_action=create]
pyinfra inventories/manifest.py deploys/snapshot.py --data snapshot=NAME --data snapshot_action=revert
pyinfra inventories/manifest.py deploys/snapshot.py --data snapshot=NAME --data snapshot_action=delete
    [--data command_timeout=60] [--limit sm-01]
"""

from deploys._snapshot import manage_snapshots

manage_snapshots()
