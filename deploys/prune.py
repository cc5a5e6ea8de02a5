"""Remove the orphans the drift report proves to be the tool's own (orphan ``<vm>-vd*`` volumes, stale
reservations); everything else is only reported. Preview with ``--dry``.

    pyinfra inventories/manifest.py deploys/prune.py [--dry]
"""

from deploys.cluster_drift import orphans_pruned

orphans_pruned()
