"""dhcp_reservations against the sandbox's management node: the real dnsmasq answers, is HUP'ed, never restarted."""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import shlex
import time
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.resolver
import pytest
from pyinfra.api import Config, Inventory, OperationValueError, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_facts
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.facts.server import Command

from operations._dnsmasq_entries import BLOCK_BEGIN, parse_dhcp_hosts
from operations.dnsmasq import dhcp_reservations

pytestmark = pytest.mark.integration

DNS_SERVER = "127.0.2.1"
PID_FILE = "/run/dnsmasq/dnsmasq.pid"
HOSTSFILE = "/etc/kvm-qemu/dnsmasq/dhcp-hosts"
UNRELATED = "10.10.98.7\tunrelated.example.org   unrelated  # kept byte for byte"

# .13 and .130 side by side: removing one must never touch the other.
ENTRIES = [
    {
        "mac": "52:54:00:d5:00:13",
        "ip": "10.10.98.13",
        "hostname": "dnstest13.sandbox.internal",
        "short": "dnstest13",
    },
    {
        "mac": "52:54:00:d5:01:30",
        "ip": "10.10.98.130",
        "hostname": "dnstest130.sandbox.internal",
        "short": "dnstest130",
    },
]


class Mgmt:
    """The management node reached over SSH with the sandbox's connection data, one pyinfra State per run."""

    def __init__(self, cluster: dict[str, Any]) -> None:
        self.name = cluster["mgmt"]["name"]
        self.data = dict(cluster["mgmt"]["data"])

    def _state(self) -> State:
        inventory = Inventory(([(self.name, self.data)], {}))
        state = State(inventory=inventory, config=Config(PARALLEL=1))
        connect_all(state)
        return state

    def apply(self, **kwargs: Any) -> bool:
        """Run dhcp_reservations; True when it changed something. Raises if the host failed."""
        state = self._state()
        try:
            metas = add_op(state, dhcp_reservations, **kwargs)
            run_ops(state)
            (meta,) = metas.values()
            assert meta.did_succeed(), f"{meta.stdout}\n{meta.stderr}"
            return meta.did_change()
        finally:
            disconnect_all(state)

    def prepare_only(self, **kwargs: Any) -> None:
        state = self._state()
        try:
            add_op(state, dhcp_reservations, **kwargs)
        finally:
            disconnect_all(state)

    def sh(self, command: str) -> str:
        state = self._state()
        try:
            (value,) = get_facts(state, Command, kwargs={"command": command}).values()
            return value or ""
        finally:
            disconnect_all(state)

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)} 2>/dev/null || true")


def resolve(name: str) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_SERVER]
    resolver.lifetime = 3
    try:
        return sorted(answer.to_text() for answer in resolver.resolve(name, "A", search=False))
    except dns.exception.DNSException:
        return []


def settled(name: str, expected: list[str], timeout: float = 5.0) -> list[str]:
    """The answer for ``name`` once it equals ``expected`` (dnsmasq handles SIGHUP asynchronously)."""
    deadline = time.monotonic() + timeout
    while (answer := resolve(name)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


@pytest.fixture(scope="module")
def mgmt(sandbox_cluster: dict[str, Any]) -> Iterator[Mgmt]:
    node = Mgmt(sandbox_cluster)
    line = shlex.quote(UNRELATED)
    added = node.sh(f"grep -qxF {line} /etc/hosts || {{ printf '%s\\n' {line} >> /etc/hosts; echo added; }}")
    yield node
    node.apply(entries=ENTRIES, present=False, etc_hosts=True)
    if added.strip() == "added":
        # /etc/hosts is a bind-mounted file in the sandbox: rewrite it in place.
        node.sh(f't=$(mktemp) && grep -vxF {line} /etc/hosts > "$t"; cat "$t" > /etc/hosts; rm -f "$t"')


def test_reservations_lifecycle(mgmt: Mgmt) -> None:
    pid = mgmt.read(PID_FILE).strip()
    assert pid.isdigit(), "the sandbox dnsmasq is not running"
    hosts_before = mgmt.read("/etc/hosts")

    assert mgmt.apply(entries=ENTRIES, etc_hosts=True) is True

    for entry in ENTRIES:
        assert settled(entry["hostname"], [entry["ip"]]) == [entry["ip"]]
        assert settled(entry["short"], [entry["ip"]]) == [entry["ip"]]
    reserved = {mac: ip for _line, mac, ip, _short in parse_dhcp_hosts(mgmt.read(HOSTSFILE))}
    for entry in ENTRIES:
        assert reserved[entry["mac"]] == entry["ip"]
    assert mgmt.read(PID_FILE).strip() == pid, "dnsmasq was restarted instead of re-reading its files"
    hosts_after = mgmt.read("/etc/hosts")
    assert UNRELATED in hosts_after.splitlines()
    assert hosts_after.startswith(hosts_before.split(BLOCK_BEGIN)[0])

    assert mgmt.apply(entries=ENTRIES, etc_hosts=True) is False

    # Removing .13 keeps .130.
    assert mgmt.apply(entries=[{"mac": ENTRIES[0]["mac"]}], present=False, etc_hosts=True) is True
    assert settled(ENTRIES[0]["hostname"], []) == [] and settled(ENTRIES[0]["short"], []) == []
    assert resolve(ENTRIES[1]["hostname"]) == [ENTRIES[1]["ip"]]

    assert mgmt.apply(entries=ENTRIES, present=False, etc_hosts=True) is True
    for entry in ENTRIES:
        assert settled(entry["hostname"], []) == [] and settled(entry["short"], []) == []
    assert ENTRIES[1]["mac"] not in mgmt.read(HOSTSFILE)
    assert UNRELATED in mgmt.read("/etc/hosts").splitlines()
    assert BLOCK_BEGIN not in mgmt.read("/etc/hosts")
    assert mgmt.read(PID_FILE).strip() == pid


def test_conflict_is_refused_before_any_write(mgmt: Mgmt) -> None:
    assert mgmt.apply(entries=ENTRIES[:1]) is True
    before = mgmt.read(HOSTSFILE)
    thief = {"mac": "52:54:00:d5:99:99", "ip": ENTRIES[0]["ip"], "hostname": "thief.sandbox.internal"}
    with pytest.raises(OperationValueError, match=f"IP address {ENTRIES[0]['ip']} of 52:54:00:d5:99:99"):
        mgmt.prepare_only(entries=[thief])
    assert mgmt.read(HOSTSFILE) == before
    assert mgmt.apply(entries=ENTRIES[:1], present=False) is True
