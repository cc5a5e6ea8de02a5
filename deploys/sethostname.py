"""Set each guest's hostname (running + /etc/hostname) over SSH, with pyinfra's own operations.

    pyinfra inventories/guests.py deploys/sethostname.py

Clones boot with the base VM's hostname; this gives each its manifest FQDN.
"""

from deploys.guests import sethostname

sethostname()
