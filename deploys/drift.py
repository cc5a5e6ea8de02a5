"""Cluster-wide drift report: foreign domains, misplaced or duplicated VMs, resource drift, orphan
volumes, stale reservations. Read-only.

    pyinfra inventories/manifest.py deploys/drift.py
"""

from deploys.cluster_drift import drift_report

drift_report()
