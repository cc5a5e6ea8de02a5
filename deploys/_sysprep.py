"""``sysprep`` host/group data: the default for vmspecs that do not set ``sysprep`` themselves."""

from __future__ import annotations

import dataclasses

from deploys._settings import flag
from inventories.manifest_model import VmSpec


def with_sysprep_default(specs: list[VmSpec]) -> list[VmSpec]:
    """Each vmspec with ``sysprep`` set: its own value, else the ``sysprep`` data (default false)."""
    default = flag("sysprep")
    return [s if s.sysprep is not None else dataclasses.replace(s, sysprep=default) for s in specs]
