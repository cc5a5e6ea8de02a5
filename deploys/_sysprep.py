"""``sysprep`` host/group data: the default for vmspecs that do not set ``sysprep`` themselves."""

from __future__ import annotations

import dataclasses

from deploys._settings import flag
from inventories.manifest_model import VmSpec

SYSPREP_DEFAULTS = {"sysprep": False}


def with_sysprep_default(specs: list[VmSpec]) -> list[VmSpec]:
    """Each vmspec with ``sysprep`` set: its own value, else the ``sysprep`` data (default false)."""
    default = flag("sysprep", SYSPREP_DEFAULTS)
    return [s if s.sysprep is not None else dataclasses.replace(s, sysprep=default) for s in specs]
