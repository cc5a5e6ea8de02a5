"""Save each VM's XML definition on the controller as ``<xml_dir>/<host>/<vm>.xml``.

pyinfra inventories/manifest.py deploys/dumpxml.py [--data xml_dir=xml] [--data xml_domains=centos7,other]

``xml_domains``: these domains instead of the manifest's VMs (e.g. a base VM made by deploys/installer.py).
"""

import os

from pyinfra import host

from deploys._settings import is_hypervisor, seconds, setting, vmspecs
from operations import libvirt


def xml_domains() -> list[str]:
    value = host.data.get("xml_domains") or []
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


if is_hypervisor():
    libvirt.domains_xml_saved(
        name="Save VM XML",
        domains=xml_domains() or [spec.name for spec in vmspecs()],
        directory=os.path.join(setting("xml_dir"), host.name),
        uri=setting("libvirt_uri"),
        command_timeout=seconds("command_timeout"),
    )
