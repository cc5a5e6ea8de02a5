"""Readiness after start: wait until every VM holds its DHCP lease and answers SSH.

    pyinfra inventories/manifest.py deploys/wait.py [--data wait_timeout=300]

One bounded command on the management node (deploys/_readiness.py) watches dnsmasq's lease file
for each VM's manifest MAC and IP, then its SSH port at the address pyinfra uses. Prints a table
(VM, IP, lease after N s, SSH after N s) and fails, naming them, when VMs are not ready in time.
"""

from deploys.vms import wait

wait()
