"""The management node: private /etc/hosts and dnsmasq config, and a real dnsmasq on port 53."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from . import proc
from .node import Node

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "templates" / "dnsmasq.conf.j2"
DOMAIN = "sandbox.internal"
DNS_PORT = 53
DNSMASQ_DIR = "/etc/kvm-qemu/dnsmasq"
DHCP_HOSTSFILE = f"{DNSMASQ_DIR}/dhcp-hosts"
ADDN_HOSTS = f"{DNSMASQ_DIR}/hosts"
PID_FILE = "/run/dnsmasq/dnsmasq.pid"


def config_vars(address: str) -> dict:
    return {
        "listen_address": address,
        "domain": DOMAIN,
        "upstream_servers": [],
        "dhcp_range": None,
        "router": None,
        "tftp_root": None,
        "dhcp_hostsfile": DHCP_HOSTSFILE,
        "addn_hosts": ADDN_HOSTS,
        "pid_file": PID_FILE,
    }


def _fallback_config(v: dict) -> str:
    # Same settings the project's template produces for a DNS-only server.
    return "\n".join(
        [
            "domain-needed",
            "bogus-priv",
            "no-resolv",
            "no-poll",
            f"listen-address={v['listen_address']}",
            "bind-interfaces",
            f"domain={v['domain']}",
            f"local=/{v['domain']}/",
            "expand-hosts",
            f"pid-file={v['pid_file']}",
            f"dhcp-hostsfile={v['dhcp_hostsfile']}",
            f"addn-hosts={v['addn_hosts']}",
            "conf-dir=/etc/dnsmasq.d/,*.conf",
            "",
        ]
    )


def render_config(address: str) -> str:
    """Render the repository's dnsmasq template, so the sandbox runs what the deploy would write."""
    variables = config_vars(address)
    try:
        import jinja2
    except ImportError:
        return _fallback_config(variables)
    if not TEMPLATE.exists():
        return _fallback_config(variables)
    env = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE.read_text()).render(**variables)


def prepare(node: Node) -> None:
    """Create the node's private files and directories and register its bind mounts."""
    node.private_file("/etc/hosts", "etc-hosts", Path("/etc/hosts").read_text())
    node.private_file("/etc/dnsmasq.conf", "dnsmasq.conf", render_config(node.address))
    node.private_dir("/etc/dnsmasq.d", "etc-dnsmasq.d")
    kvm_qemu = node.private_dir("/etc/kvm-qemu", "etc-kvm-qemu")
    # dnsmasq refuses to start when its hosts files are missing; start them empty.
    (kvm_qemu / "dnsmasq").mkdir(exist_ok=True)
    for name in ("dhcp-hosts", "hosts"):
        (kvm_qemu / "dnsmasq" / name).touch()
    node.private_dir("/run/dnsmasq", "run-dnsmasq")
    node.private_dir("/var/lib/misc", "var-lib-misc")
    node.private_home()


def start_dnsmasq(node: Node) -> None:
    """Start dnsmasq in the node (as root: no privilege drop, so it can read every file)."""
    pid_file = node.dir / "run-dnsmasq" / "dnsmasq.pid"
    pid_file.unlink(missing_ok=True)
    log = node.dir / "dnsmasq.log"
    node.run(["dnsmasq", "--conf-file=/etc/dnsmasq.conf", "--user=root", f"--log-facility={log}"])
    pid = proc.wait_for(lambda: proc.read_pid_file(pid_file), f"dnsmasq pid file (log: {log})", timeout=10)
    node.record_daemon("dnsmasq", pid)
    proc.wait_for(lambda: dns_answers(node.address), f"dnsmasq on {node.address}:53 (log: {log})", timeout=10)


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
