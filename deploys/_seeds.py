"""The cloud-init seeds workflow as a ``@deploy`` function (``deploys/seeds.py``, and ``deploys/build.py``
after the clones are defined, so a new VM boots with its seed).

Host or group data: ``cloud_init_users: [{name, ssh_authorized_keys: [...], sudo}]`` on the hypervisor
(the users every seed of that host carries). Invalid data stops the run before any host is touched.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import deploy

from deploys._settings import SettingError, seconds, setting
from deploys._settings import vmspecs as manifest_vmspecs
from inventories.manifest_model import VmSpec
from operations import cloud_init
from operations.util.cloud_init_seed import SeedError, validate_users


def seed_users() -> list[dict[str, Any]]:
    """``cloud_init_users`` from host data, checked (a ``SettingError`` names the bad key and value).

    A string is read as JSON, so ``--data cloud_init_users='[{"name": "ops", ...}]'`` works too.
    """
    value = setting("cloud_init_users")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise SettingError(f"cloud_init_users={value!r}: not JSON ({exc})") from None
    try:
        return validate_users(value)
    except SeedError as exc:
        raise SettingError(str(exc)) from None


@deploy("cloud-init seeds")
def cloud_init_seeds(vmspecs: list[VmSpec] | None = None) -> None:
    """Write and attach the NoCloud seed of every vmspec with ``cloudInit`` on this hypervisor
    (``vmspecs``: the manifest's for this host when None)."""
    specs = manifest_vmspecs() if vmspecs is None else vmspecs
    if not any(s.cloud_init for s in specs):
        return
    cloud_init.seeds(
        name="cloud-init seeds",
        vmspecs=specs,
        users=seed_users(),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
