"""Set each guest's hostname (running + /etc/hostname) over SSH, with pyinfra's own operations.

    pyinfra inventories/guests.py deploys/sethostname.py

Clones boot with the base VM's hostname; this gives each its manifest FQDN.
"""

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand
from pyinfra.facts.files import Directory, FileContents
from pyinfra.facts.server import Hostname
from pyinfra.operations import server

spec = host.data.kvm_vmspec
wanted = spec["hostname"]

if host.get_fact(Directory, path="/run/systemd/system"):
    server.hostname(name="Set hostname", hostname=wanted)
else:
    # Without systemd there is no hostnamectl service; /etc/hostname is rewritten in place (it may be a
    # bind mount, which a rename-based upload cannot replace).
    if (host.get_fact(FileContents, path="/etc/hostname") or [""])[0].strip() != wanted:
        server.shell(
            name="Write /etc/hostname",
            commands=[StringCommand("printf", "'%s\\n'", QuoteString(wanted), ">", "/etc/hostname")],
        )
    if host.get_fact(Hostname) != wanted:
        server.shell(name="Set running hostname", commands=[StringCommand("hostname", QuoteString(wanted))])
