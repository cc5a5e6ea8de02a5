"""DHCP proof: a client with a VM's MAC, in its own network namespace, gets the reserved address.

A dnsmasq with a dhcp-range (and DNS on its address) runs in a second namespace joined by a veth
pair; dhcp_reservations runs through the pyinfra API against @local and only SIGHUPs it. A lease
handed out before the change must still be in the lease database afterwards. Removing a reservation
with release_leases_on (what delete does) releases the VM's lease with dhcp_release, run inside the
server's namespace as on a management node. Needs root, iproute2 and dnsmasq; no sandbox.
"""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from operations.dnsmasq import dhcp_reservations

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not shutil.which("ip")
        or not shutil.which("dnsmasq", path="/usr/sbin:/sbin:/usr/bin"),
        reason="needs root, iproute2 and dnsmasq",
    ),
]

PROBE = Path(__file__).with_name("_dhcp_probe.py")
REPO = Path(__file__).resolve().parents[2]
SERVER_IP = "10.10.97.1"
DHCP_RANGE = "10.10.97.10,10.10.97.200,255.255.255.0,1h"
VM_MAC = "52:54:00:d5:0d:13"
OTHER_MAC = "52:54:00:d5:0d:99"


@dataclass
class DhcpNet:
    server_ns: str
    client_ns: str
    client_if: str
    conf: Path
    pid_file: Path
    lease_file: Path
    hostsfile: Path
    addn_hosts: Path

    def client_lease(self, mac: str) -> dict[str, str]:
        subprocess.run(["ip", "-n", self.client_ns, "link", "set", self.client_if, "down"], check=True)
        subprocess.run(
            ["ip", "-n", self.client_ns, "link", "set", self.client_if, "address", mac], check=True
        )
        subprocess.run(["ip", "-n", self.client_ns, "link", "set", self.client_if, "up"], check=True)
        result = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, sys.executable, str(PROBE), self.client_if, mac],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return json.loads(result.stdout)

    def files(self) -> dict[str, str]:
        """The dhcp_reservations arguments that name this server's files."""
        return {
            "hostsfile": str(self.hostsfile),
            "addn_hosts": str(self.addn_hosts),
            "dnsmasq_conf": str(self.conf),
            "pid_file": str(self.pid_file),
        }

    def leases(self) -> dict[str, str]:
        lines = self.lease_file.read_text().splitlines() if self.lease_file.exists() else []
        return {fields[1]: fields[2] for fields in (line.split() for line in lines) if len(fields) >= 3}


@pytest.fixture
def dhcp_net(tmp_path: Path) -> Iterator[DhcpNet]:
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"kvmq-s{tag}", f"kvmq-c{tag}"
    server_if, client_if = f"kvq{tag}s", f"kvq{tag}c"
    net = DhcpNet(
        server_ns,
        client_ns,
        client_if,
        tmp_path / "dnsmasq.conf",
        tmp_path / "dnsmasq.pid",
        tmp_path / "leases",
        tmp_path / "d" / "dhcp-hosts",
        tmp_path / "d" / "hosts",
    )
    # What deploys/mgmt_server.py leaves: the directory with both files, empty.
    net.hostsfile.parent.mkdir()
    net.hostsfile.touch()
    net.addn_hosts.touch()
    net.conf.write_text(
        "user=root\nno-resolv\nno-hosts\n"
        f"interface={server_if}\nbind-interfaces\ndhcp-range={DHCP_RANGE}\n"
        f"dhcp-hostsfile={net.hostsfile}\naddn-hosts={net.addn_hosts}\n"
        f"dhcp-leasefile={net.lease_file}\npid-file={net.pid_file}\n"
    )
    setup = [
        ["ip", "netns", "add", server_ns],
        ["ip", "netns", "add", client_ns],
        ["ip", "link", "add", server_if, "type", "veth", "peer", "name", client_if],
        ["ip", "link", "set", server_if, "netns", server_ns],
        ["ip", "link", "set", client_if, "netns", client_ns],
        ["ip", "-n", server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", server_if],
        ["ip", "-n", server_ns, "link", "set", server_if, "up"],
        ["ip", "-n", server_ns, "link", "set", "lo", "up"],
        ["ip", "netns", "exec", server_ns, "dnsmasq", f"--conf-file={net.conf}"],
    ]
    try:
        for command in setup:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                env={**os.environ, "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"},
            )
        for _ in range(50):
            if net.pid_file.exists() and net.pid_file.read_text().strip():
                break
            time.sleep(0.05)
        yield net
    finally:
        if net.pid_file.exists() and net.pid_file.read_text().strip():
            try:
                os.kill(int(net.pid_file.read_text()), 15)
            except ProcessLookupError:
                pass
        for namespace in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def apply_local(**kwargs: Any) -> bool:
    inventory = Inventory((["@local"], {}))
    state = State(inventory=inventory, config=Config(PARALLEL=1))
    connect_all(state)
    try:
        metas = add_op(state, dhcp_reservations, **kwargs)
        run_ops(state)
        (meta,) = metas.values()
        assert meta.did_succeed(), f"{meta.stdout}\n{meta.stderr}"
        return meta.did_change()
    finally:
        disconnect_all(state)


def test_vm_mac_gets_its_reservation_and_leases_survive(dhcp_net: DhcpNet) -> None:
    pid = dhcp_net.pid_file.read_text().strip()
    dynamic = dhcp_net.client_lease(OTHER_MAC)
    assert dynamic["ack"] == dynamic["offer"]
    reserved = "10.10.97.13" if dynamic["ack"] != "10.10.97.13" else "10.10.97.14"

    entry = {"mac": VM_MAC, "ip": reserved, "hostname": "vm13.sandbox.internal", "short": "vm13"}
    options = {
        "hostsfile": str(dhcp_net.hostsfile),
        "addn_hosts": str(dhcp_net.addn_hosts),
        "dnsmasq_conf": str(dhcp_net.conf),
        "pid_file": str(dhcp_net.pid_file),
        "dhcp_range": DHCP_RANGE,
    }
    assert apply_local(entries=[entry], **options) is True

    assert dhcp_net.client_lease(VM_MAC) == {"offer": reserved, "ack": reserved}
    leases = dhcp_net.leases()
    assert leases[OTHER_MAC] == dynamic["ack"], "a lease was lost"
    assert leases[VM_MAC] == reserved
    assert dhcp_net.pid_file.read_text().strip() == pid
    assert apply_local(entries=[entry], **options) is False


_APPLY_IN_NAMESPACE = """
from gevent import monkey; monkey.patch_all()
import json, sys
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from operations.dnsmasq import dhcp_reservations
state = State(inventory=Inventory((["@local"], {})), config=Config(PARALLEL=1), check_for_changes=False)
connect_all(state)
metas = add_op(state, dhcp_reservations, **json.loads(sys.argv[1]))
run_ops(state)
(meta,) = metas.values()
disconnect_all(state)
print("\\n".join(meta.stdout_lines + meta.stderr_lines))
sys.exit(0 if meta.did_succeed() else 1)
"""

_RESOLVE = """
import sys
import dns.exception, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers, resolver.lifetime = [sys.argv[1]], 3
try:
    print(" ".join(sorted(a.to_text() for a in resolver.resolve(sys.argv[2], "A", search=False))))
except dns.exception.DNSException:
    pass
"""


def in_server_namespace(net: DhcpNet, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python code in the server's namespace, as a process on the management node would."""
    return subprocess.run(
        ["ip", "netns", "exec", net.server_ns, sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
    )


def remove_and_release(net: DhcpNet, mac: str, options: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """What delete does on the node dnsmasq runs on: remove ``mac``'s reservation and release its lease."""
    request = {"entries": [{"mac": mac}], "present": False, "release_leases_on": SERVER_IP, **options}
    return in_server_namespace(net, _APPLY_IN_NAMESPACE, json.dumps(request))


def resolve(net: DhcpNet, name: str) -> list[str]:
    return in_server_namespace(net, _RESOLVE, SERVER_IP, name).stdout.split()


def eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


@pytest.mark.skipif(
    not shutil.which("dhcp_release", path="/usr/bin:/usr/sbin:/bin:/sbin"),
    reason="needs dhcp_release (dnsmasq-utils)",
)
def test_removing_a_reservation_releases_its_lease(dhcp_net: DhcpNet) -> None:
    options = dhcp_net.files()
    other = dhcp_net.client_lease(OTHER_MAC)
    reserved = "10.10.97.13" if other["ack"] != "10.10.97.13" else "10.10.97.14"
    entry = {"mac": VM_MAC, "ip": reserved, "hostname": "vm13.dhcp.internal", "short": "vm13"}
    assert apply_local(entries=[entry], dhcp_range=DHCP_RANGE, **options) is True
    assert dhcp_net.client_lease(VM_MAC) == {"offer": reserved, "ack": reserved}
    assert dhcp_net.leases()[VM_MAC] == reserved
    assert resolve(dhcp_net, "vm13") == [reserved]

    # What delete does: remove the reservation and release the lease, on the node dnsmasq runs on.
    removed = remove_and_release(dhcp_net, VM_MAC, options)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"released the DHCP lease of {VM_MAC} ({reserved})" in removed.stdout

    assert eventually(lambda: VM_MAC not in dhcp_net.leases()), f"lease still there: {dhcp_net.leases()}"
    assert eventually(lambda: resolve(dhcp_net, "vm13") == []), "the deleted VM's name still resolves"
    assert dhcp_net.leases()[OTHER_MAC] == other["ack"], "another lease was lost"
    assert VM_MAC not in dhcp_net.hostsfile.read_text()


def test_an_owned_reservation_removed_after_its_lease_leaves_dnsmasq_running(dhcp_net: DhcpNet) -> None:
    # dnsmasq 2.90 crashed (SIGSEGV) re-reading a dhcp-hostsfile whose leased line had gone when that line
    # carried a set: tag next to id:*; the owner tag must never reach an item dnsmasq acts on.
    options = {**dhcp_net.files(), "owner": "cluster-a"}
    pid = int(dhcp_net.pid_file.read_text())
    entry = {"mac": VM_MAC, "ip": "10.10.97.13", "hostname": "vm13.dhcp.internal", "short": "vm13"}
    assert apply_local(entries=[entry], dhcp_range=DHCP_RANGE, **options) is True
    assert "# kvmq-owner cluster-a" in dhcp_net.addn_hosts.read_text()
    assert dhcp_net.client_lease(VM_MAC) == {"offer": "10.10.97.13", "ack": "10.10.97.13"}
    removed = remove_and_release(dhcp_net, VM_MAC, options)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert eventually(lambda: VM_MAC not in dhcp_net.leases()), f"lease still there: {dhcp_net.leases()}"
    time.sleep(1)
    os.kill(pid, 0)  # still running: ProcessLookupError here is the crash
    assert resolve(dhcp_net, "vm13") == []
