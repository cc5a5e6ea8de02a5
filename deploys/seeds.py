"""Write and attach the cloud-init seed of every VM with ``cloudInit: true`` (build does this too).

    pyinfra inventories/manifest.py deploys/seeds.py [--data command_timeout=60]

Users and SSH keys come from host or group data: ``cloud_init_users``.
"""

from deploys._seeds import cloud_init_seeds
from deploys._settings import is_hypervisor

if is_hypervisor():
    cloud_init_seeds()
