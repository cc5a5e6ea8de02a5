"""KVM hypervisor setup on every ``kvm_hosts`` host: packages, groups, storage dir, libvirt config.

    pyinfra inventories/manifest.py deploys/kvm_host.py

Data keys and defaults: docs/settings.md (hypervisor setup); the work: deploys/hosts.py.
"""

from pyinfra import host

from deploys.hosts import kvm_host

if "kvm_hosts" in host.groups:
    kvm_host()
