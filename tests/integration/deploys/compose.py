"""An operator's own deploy file: build, start and wait for the VMs named ``cp-*`` only.

    pyinfra inventories/manifest.py tests/integration/deploys/compose.py

Composes the workflow deploy functions of deploys/vms.py with its own choice of vmspecs; the
manifest's other VMs are left alone (not built, not reserved, not waited for).
"""

from pyinfra import host

from deploys.vms import build, start, wait


def picked(key: str) -> list:
    return [spec for spec in host.data.get(key, []) if spec.name.startswith("cp-")]


build(vmspecs=picked("kvm_vmspecs"), all_vmspecs=picked("kvm_all_vmspecs"))
start(vmspecs=picked("kvm_vmspecs"))
wait(all_vmspecs=picked("kvm_all_vmspecs"), timeout=180)
