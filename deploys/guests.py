"""Deploy functions run on the guests themselves (inventories/guests.py: one host per VM)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand
from pyinfra.api.deploy import deploy
from pyinfra.facts.files import Directory, FileContents
from pyinfra.facts.server import Hostname
from pyinfra.operations import server

from deploys._settings import inventory_value


@deploy("Guest hostname")
def sethostname(hostname: str | None = None) -> None:
    """Set the guest's hostname, running and in /etc/hostname, with pyinfra's own operations.

    + hostname: the FQDN; default: the guest's manifest ``hostname`` (host data ``kvm_vmspec``)
    """
    wanted = hostname or inventory_value("kvm_vmspec").hostname
    if host.get_fact(Directory, path="/run/systemd/system"):
        server.hostname(name="Set hostname", hostname=wanted)
        return
    # Without systemd there is no hostnamectl service; /etc/hostname is rewritten in place (it may be
    # a bind mount, which a rename-based upload cannot replace).
    if (host.get_fact(FileContents, path="/etc/hostname") or [""])[0].strip() != wanted:
        server.shell(
            name="Write /etc/hostname",
            commands=[StringCommand("printf", "'%s\\n'", QuoteString(wanted), ">", "/etc/hostname")],
        )
    if host.get_fact(Hostname) != wanted:
        server.shell(name="Set running hostname", commands=[StringCommand("hostname", QuoteString(wanted))])
