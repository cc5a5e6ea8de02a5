"""The management node: private /etc/hosts and dnsmasq config, and a real dnsmasq on port 53."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from inventories.defaults import DHCP_HOSTSFILE, DHCP_LEASEFILE, DNSMASQ_CONF
from inventories.defaults import DNS_ADDN_HOSTS as ADDN_HOSTS
from inventories.defaults import DNSMASQ_PID_FILE as PID_FILE

from . import network, proc
from .node import Node

REPO = Path(__file__).resolve().parent.parent
RELAY = Path(__file__).resolve().parent / "dnsrelay.py"
DOMAIN = "sandbox.internal"
DNS_PORT = 53
LEASE_FILE = DHCP_LEASEFILE


def inventory_data() -> dict:
    """The management node's host data: what deploys/mgmt_server.py writes into /etc/dnsmasq.conf
    (and what the workflows check reservations against)."""
    return {
        "dns_listen_address": network.MGMT_IP,
        "dns_domain": DOMAIN,
        "dhcp_range": network.DHCP_RANGE,
        "dnsmasq_conf": DNSMASQ_CONF,
        "dnsmasq_pid_file": PID_FILE,
        "dhcp_hostsfile": DHCP_HOSTSFILE,
        "dns_addn_hosts": ADDN_HOSTS,
        "dhcp_leasefile": LEASE_FILE,
    }


def prepare(node: Node) -> None:
    """Create the node's private files and directories and register its bind mounts."""
    node.private_file("/etc/hosts", "etc-hosts", Path("/etc/hosts").read_text())
    # Empty until deploys/mgmt_server.py writes it (with the dhcp-hosts and hosts files).
    node.private_file(DNSMASQ_CONF, "dnsmasq.conf", "")
    node.private_dir("/etc/dnsmasq.d", "etc-dnsmasq.d")
    node.private_dir("/etc/kvm-qemu", "etc-kvm-qemu")
    node.private_dir("/run/dnsmasq", "run-dnsmasq")
    node.private_dir("/var/lib/misc", "var-lib-misc")
    node.private_home()


def start_dnsmasq(node: Node) -> None:
    """Start dnsmasq with the configuration deploys/mgmt_server.py wrote, in the node's mount namespace
    and the cluster network namespace (as root: no privilege drop, so it can read every file), and
    the DNS relay from the node's loopback address to it. No systemd here: the sandbox starts it."""
    netns = str(network.netns_path())
    pid_file = node.dir / "run-dnsmasq" / "dnsmasq.pid"
    pid_file.unlink(missing_ok=True)
    log = node.dir / "dnsmasq.log"
    node.run(
        ["dnsmasq", f"--conf-file={DNSMASQ_CONF}", "--user=root", f"--log-facility={log}"], netns=netns
    )
    pid = proc.wait_for(lambda: proc.read_pid_file(pid_file), f"dnsmasq pid file (log: {log})", timeout=10)
    node.record_daemon("dnsmasq", pid)
    relay_pid = node.dir / "dnsrelay.pid"
    relay_pid.unlink(missing_ok=True)
    relay_log = node.dir / "dnsrelay.log"
    proc.spawn_daemon(
        proc.nsenter_argv(
            node.holder,
            ["/usr/bin/python3", str(RELAY), node.address, netns, network.MGMT_IP, str(relay_pid)],
        ),
        relay_log,
    )
    node.record_daemon(
        "dnsrelay",
        proc.wait_for(lambda: proc.read_pid_file(relay_pid), f"DNS relay (log: {relay_log})", timeout=10),
    )
    proc.wait_for(
        lambda: dns_answers(node.address), f"dnsmasq via {node.address}:53 (log: {log})", timeout=10
    )


def dns_answers(address: str, name: str = "localhost") -> bool:
    """True if a DNS server on address:53 answers a query (any response code)."""
    query_id = 0x5342
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = header + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(packet, (address, DNS_PORT))
            reply = sock.recv(512)
        except OSError:
            return False
    return len(reply) >= 2 and struct.unpack(">H", reply[:2])[0] == query_id
