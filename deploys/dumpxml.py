"""Save each VM's XML definition on the controller as ``<xml_dir>/<host>/<vm>.xml``.

pyinfra inventories/manifest.py deploys/dumpxml.py [--data xml_dir=xml]
"""

from deploys.vms import dumpxml

dumpxml()
