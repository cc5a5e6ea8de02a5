"""Create a base VM from an ISO: define and start an installer VM on one hypervisor (``kvmsh create``).

pyinfra inventories/manifest.py deploys/installer.py --data installer_iso=CentOS-7-x86_64-Minimal-2009.iso
    [--data installer_name=centos7] [--data installer_pool=secondary] [--data installer_boot_size_gib=80]
    [--data uefi=false] [--data installer_graphics=none] [--data installer_host=sm-01]

Runs on ``installer_host`` (default: the first hypervisor of the inventory). Then install through
``virsh console <name>`` (or VNC on 127.0.0.1), save the XML with deploys/dumpxml.py and define the
base on every host with deploys/base_vm.py (README, "Creating a base VM from an ISO").
"""

from pyinfra import host

from deploys._settings import SettingError, is_hypervisor, setting
from deploys.installer_vm import installer_vm

hypervisors = host.inventory.get_group("kvm_hosts", [])
chosen = setting("installer_host") or (hypervisors[0].name if hypervisors else None)
if chosen not in {h.name for h in hypervisors}:
    raise SettingError(f"installer_host={chosen!r}: not a hypervisor of this inventory (group kvm_hosts)")
if is_hypervisor() and host.name == chosen:
    installer_vm()
