"""Define the base VM on every hypervisor from a controller-side XML file (the original ``-x``).

pyinfra inventories/manifest.py deploys/base_vm.py --data xml=centos7.xml
"""

from pyinfra import host

from deploys._settings import is_hypervisor, setting
from operations import libvirt

if is_hypervisor():
    xml_file = host.data.get("xml")
    if not xml_file:
        raise ValueError("deploys/base_vm.py needs the base VM's XML: --data xml=path/to/centos7.xml")
    libvirt.domain_defined(
        name=f"Define base VM from {xml_file}", xml_file=xml_file, uri=setting("libvirt_uri")
    )
