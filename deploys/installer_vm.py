"""The ``@deploy`` behind deploys/installer.py: an installer VM booting an ISO from a storage pool."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys._settings import SettingError, flag, seconds, setting, whole
from operations import installer
from operations.util.installer_plan import InstallerError, InstallerSpec


def installer_spec() -> InstallerSpec:
    """The installer VM from host data / ``--data``; a bad value raises SettingError naming the key."""
    iso = setting("installer_iso")
    if not iso:
        raise SettingError("installer_iso is required: the ISO's volume name in installer_iso_pool")
    pool = setting("installer_pool")
    spec = InstallerSpec(
        vm=str(setting("installer_name")),
        iso=str(iso),
        iso_pool=str(setting("installer_iso_pool") or pool),
        pool=str(pool),
        boot_size_gib=whole("installer_boot_size_gib"),
        vcpus=whole("installer_vcpus"),
        memory_mib=whole("installer_memory_mib"),
        uefi=flag("uefi"),
        console=flag("console"),
        graphics=str(setting("installer_graphics")),
        bridge=str(setting("installer_bridge") or ""),
        domain_type=str(setting("installer_domain_type")),
    )
    try:
        spec.check()
    except InstallerError as exc:
        raise SettingError(str(exc)) from None
    return spec


@deploy("Installer VM")
def installer_vm(spec: InstallerSpec | None = None) -> None:
    """Define and start the installer VM on this host (``spec``: from host data when None)."""
    spec = spec or installer_spec()
    installer.installer_vm(
        name=f"Installer VM {spec.vm} from {spec.iso_pool}/{spec.iso}",
        spec=spec,
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
