"""Define the base VM on every hypervisor from a controller-side XML file (the original ``-x``).

pyinfra inventories/manifest.py deploys/base_vm.py --data xml=centos7.xml
"""

from deploys.vms import base_vm

base_vm()
