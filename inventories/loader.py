"""Shared by the inventory files: read the manifest named by the environment, or exit with its problems.

pyinfra exec's inventory files, so a bad manifest must stop the run here, before any host is contacted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from inventories.manifest_model import HostEntry, ManifestError, load

MANIFEST_ENV = "KVM_MANIFEST"
INVENTORY_DATA_ENV = "KVM_INVENTORY_DATA"
MGMT_HOST_ENV = "KVM_MGMT_HOST"


def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV, "manifest.json"))


def load_or_exit() -> list[HostEntry]:
    try:
        return load(manifest_path())
    except ManifestError as exc:
        print(f"kvm-qemu: {exc.render()}", file=sys.stderr)
        print("kvm-qemu: nothing was changed; no host was contacted.", file=sys.stderr)
        raise SystemExit(2) from None


def connection_data() -> dict[str, Any]:
    """Extra per-host connection data (e.g. the sandbox's addresses and key), keyed hosts/mgmt/guests."""
    path = os.environ.get(INVENTORY_DATA_ENV)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"kvm-qemu: cannot read {INVENTORY_DATA_ENV}={path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
