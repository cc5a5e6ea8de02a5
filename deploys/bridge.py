"""Bridge networking (br0, optionally over a bond) on every ``kvm_hosts`` host, behind a dead-man switch.

    pyinfra inventories/manifest.py deploys/bridge.py --data kvm_bridge_ports=eth0 \
        --data kvm_bridge_address=10.10.5.2/24 --dry

Data keys and defaults: docs/settings.md (the kvm_bridge* and kvm_bond keys).
"""

from pyinfra import host

from deploys.network import bridge_network

if "kvm_hosts" in host.groups:
    bridge_network()
