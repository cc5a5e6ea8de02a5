"""dhcp_reservations against the sandbox's management node: the real dnsmasq answers, is HUP'ed, never restarted."""

# ruff: noqa: E402
from gevent import monkey

monkey.patch_all()

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
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

from inventories.manifest_model import mac_for
from operations.dnsmasq import dhcp_reservations
from operations.util.dnsmasq_entries import BLOCK_BEGIN, parse_dhcp_hosts
from sandbox import client

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


# --- concurrent runs against one management node ---------------------------------------------

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

_APPLY_ONE = """
from gevent import monkey; monkey.patch_all()
import json, sys
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from operations.dnsmasq import dhcp_reservations
name, data, kwargs = json.loads(sys.argv[1])
state = State(inventory=Inventory(([(name, data)], {})), config=Config(PARALLEL=1), check_for_changes=False)
connect_all(state)
metas = add_op(state, dhcp_reservations, **kwargs)
run_ops(state)
(meta,) = metas.values()
disconnect_all(state)
sys.exit(0 if meta.did_succeed() else 1)
"""


def concurrent_entries(count: int) -> list[dict[str, str]]:
    return [
        {"mac": f"52:54:00:d5:c0:{i:02x}", "ip": f"10.10.98.{50 + i}",
         "hostname": f"conc{i}.sandbox.internal", "short": f"conc{i}"}
        for i in range(count)
    ]


def test_concurrent_runs_keep_every_reservation(mgmt: Mgmt) -> None:
    """Eight runs at once, each adding its own entry: every one is kept (flock on the node)."""
    entries = concurrent_entries(8)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _APPLY_ONE, json.dumps([mgmt.name, mgmt.data, {"entries": [entry]}])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for entry in entries
    ]
    try:
        outputs = [run.communicate(timeout=180)[0] for run in runs]
        assert [run.returncode for run in runs] == [0] * len(runs), "\n".join(outputs)[-3000:]
        reserved = {mac: ip for _line, mac, ip, _short in parse_dhcp_hosts(mgmt.read(HOSTSFILE))}
        missing = [entry["hostname"] for entry in entries if reserved.get(entry["mac"]) != entry["ip"]]
        assert missing == [], f"reservations lost by concurrent runs: {missing}"
        for entry in entries:
            assert settled(entry["hostname"], [entry["ip"]]) == [entry["ip"]]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        mgmt.apply(entries=entries, present=False)
    assert not any(entry["mac"] in mgmt.read(HOSTSFILE) for entry in entries)


def _manifest(host: str, prefix: str, first_ip: int) -> list[dict[str, Any]]:
    return [{
        "host": host,
        "vmspecs": [
            {"name": f"{prefix}{i}", "hostname": f"{prefix}{i}.conc.internal", "ipaddress": f"10.10.5.{first_ip + i}",
             "vcpus": 1, "memoryGb": 1, "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0, "clone": "linked"}
            for i in range(3)
        ],
    }]


def _workflows(sandbox_cluster: dict[str, Any], tmp_path: Path, deploy: str,
               manifests: dict[str, list[dict[str, Any]]]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``deploy`` for every manifest at the same time through the real CLI; wait for all."""
    (tmp_path / "inventory.json").write_text(json.dumps(sandbox_cluster))
    running = []
    for label, manifest in manifests.items():
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(manifest))
        env = client.workflow_env(path, tmp_path / "inventory.json", sandbox_cluster["mgmt"]["name"])
        running.append(subprocess.Popen(
            [PYINFRA, "-y", "inventories/manifest.py", f"deploys/{deploy}.py"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    results = []
    for process in running:
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_two_concurrent_builds_of_different_manifests_keep_every_reservation(
    mgmt: Mgmt, sandbox_cluster: dict[str, Any], tmp_path: Path
) -> None:
    # Inside the sandbox's dhcp_range, apart from the addresses other tests use.
    manifests = {"a": _manifest("sm-01", "conca", 230), "b": _manifest("sm-02", "concb", 240)}
    hosts = {host: client.node_data(sandbox_cluster, host) for host in ("sm-01", "sm-02")}
    pools_before = {host: set(client.ssh(data, "virsh -q pool-list --all --name").split())
                    for host, data in hosts.items()}
    (pools,) = _workflows(sandbox_cluster, tmp_path, "pools", {"all": manifests["a"] + manifests["b"]})
    try:
        assert pools.returncode == 0, (pools.stdout + pools.stderr)[-3000:]
        _build_and_check(sandbox_cluster, tmp_path, manifests, mgmt)
    finally:
        # Leave the hosts' pools as they were (later tests define their own on the same paths).
        for host, data in hosts.items():
            for pool in set(client.ssh(data, "virsh -q pool-list --all --name").split()) - pools_before[host]:
                client.ssh(data, f"virsh -q pool-destroy {shlex.quote(pool)}; virsh -q pool-undefine {shlex.quote(pool)}",
                           check=False)


def _build_and_check(sandbox_cluster: dict[str, Any], tmp_path: Path,
                     manifests: dict[str, list[dict[str, Any]]], mgmt: Mgmt) -> None:
    specs = [spec for manifest in manifests.values() for spec in manifest[0]["vmspecs"]]
    try:
        for result in _workflows(sandbox_cluster, tmp_path, "build", manifests):
            assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        reserved = {mac: ip for _line, mac, ip, _short in parse_dhcp_hosts(mgmt.read(HOSTSFILE))}
        for spec in specs:
            assert reserved.get(mac_for(spec["name"])) == spec["ipaddress"], f"{spec['name']} lost its reservation"
            assert settled(spec["hostname"], [spec["ipaddress"]]) == [spec["ipaddress"]]
    finally:
        deleted = _workflows(sandbox_cluster, tmp_path, "delete", manifests)
    for result in deleted:
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    hostsfile = mgmt.read(HOSTSFILE)
    assert not any(mac_for(spec["name"]) in hostsfile for spec in specs)
    for spec in specs:
        assert settled(spec["hostname"], []) == []
