"""The floor of a full-clone build, for ``make bench``: pyinfra start + connect + one state read + the copy.

pyinfra -y inventories/manifest.py sandbox/bench_floor.py --data bench_srcvm=centos7

On every hypervisor: one read of the ``Hypervisor`` fact (the state a build needs), then one command
that copies the base VM's first disk into the primary pool the way a full clone does
(``cp --sparse=always``) and removes the copy. Nothing else: no define, no DHCP/DNS on mgmt.
"""

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand
from pyinfra.operations import server

from facts.libvirt import Hypervisor
from inventories.defaults import PRIMARY_POOL

if "kvm_hosts" in host.groups:
    host_state = host.get_fact(Hypervisor)
    base = host_state.domains.get(host.data.get("bench_srcvm") or "centos7")
    source = next((d.path for d in base.disks if d.is_disk), None) if base is not None else None
    primary = host_state.pools.get(PRIMARY_POOL)
    pool = primary.path if primary is not None else None
    if not source or not pool:
        raise SystemExit(f"bench floor: no base disk or primary pool on {host.name}")
    target = f"{pool}/bench-floor-copy.img"
    server.shell(
        name="full copy of the base disk, then remove it",
        commands=[
            StringCommand(
                "timeout",
                "600",
                "cp",
                "--sparse=always",
                "--",
                QuoteString(source),
                QuoteString(target),
                "&&",
                "rm",
                "-f",
                "--",
                QuoteString(target),
            )
        ],
    )
