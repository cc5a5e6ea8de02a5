"""Save each VM's XML definition on the controller as ``<xml_dir>/<host>/<vm>.xml``.

pyinfra inventories/manifest.py deploys/dumpxml.py [--data xml_dir=xml]
"""

import os

from pyinfra import host

from deploys._settings import is_hypervisor, seconds, setting, vmspecs
from operations import libvirt

if is_hypervisor():
    libvirt.domains_xml_saved(
        name="Save VM XML",
        domains=[spec.name for spec in vmspecs()],
        directory=os.path.join(setting("xml_dir"), host.name),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
