"""Host setup deploys on the sandbox (Debian): kvm_host on sm-01, mgmt_server on mgmt-01.

Each deploy runs through the real pyinfra CLI; the written files are checked over SSH, then a
second run must report no change. The sandbox has no systemd, so nothing is (re)started: its
libvirtd and dnsmasq keep running, which is checked too. The mgmt run keeps the sandbox's
data (listen address, domain, DHCP range, from the inventory), so /etc/dnsmasq.conf ends up exactly
as the sandbox's own run of that deploy wrote it.
(The file name differs from tests/unit/test_host_deploys.py: pytest's default import mode needs
unique basenames across test directories without __init__.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import client
from sandbox import mgmt as sandbox_mgmt

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
MANIFEST = [{"host": "sm-01", "vmspecs": []}, {"host": "sm-02", "vmspecs": []}]


class Sandbox:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir
        (workdir / "manifest.json").write_text(json.dumps(MANIFEST))
        (workdir / "inventory.json").write_text(json.dumps(inventory))

    def ssh(self, host: str, command: str) -> str:
        return client.ssh(client.node_data(self.inventory, host), command)

    def pyinfra(self, deploy: str, limit: str, *data: str, dry: bool = False) -> tuple[dict[str, Any], str]:
        """Run a deploy with --json; return the parsed output and stderr (the human log)."""
        env = client.workflow_env(
            self.workdir / "manifest.json", self.workdir / "inventory.json", self.inventory["mgmt"]["name"]
        )
        args = [PYINFRA, "--json", "--limit", limit, "--dry" if dry else "-y"]
        args += [item for value in data for item in ("--data", value)]
        result = subprocess.run(
            [*args, "inventories/manifest.py", f"deploys/{deploy}.py"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads(result.stdout), result.stderr


def results(output: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    return {
        op["name"]: {key: op[key] for key in ("success", "error", "no_change")}
        for op in output["results"]["operations"]
    }


def changed(output: dict[str, Any]) -> list[str]:
    """Operations that changed something (or failed) in an executed run."""
    return [name for name, hosts in results(output).items() if hosts["success"] or hosts["error"]]


def planned_changes(output: dict[str, Any]) -> list[str]:
    """Operations a --dry run says will change.

    Operations guarded by "did an earlier one change?" (``_if``) are listed by pyinfra as
    conditional changes whenever they have a command; they are left out here and checked by the
    executed second run, where they must be skipped.
    """
    return [op["name"] for op in output["plan"] if op["hosts_with_change"]]


def settings(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield Sandbox(sandbox_cluster, tmp_path_factory.mktemp("host-deploys"))


def test_kvm_host_on_sm01_then_no_change(cluster: Sandbox) -> None:
    first, log = cluster.pyinfra("kvm_host", "sm-01")
    assert all(not hosts["error"] for hosts in results(first).values())
    assert "systemd is not running (no /run/systemd/system): libvirtd (and apparmor) not enabled" in log

    libvirtd = settings(cluster.ssh("sm-01", "cat /etc/libvirt/libvirtd.conf"))
    for line in (
        "listen_tcp = 0",
        "listen_tls = 0",
        'auth_tcp = "sasl"',
        'unix_sock_group = "libvirt"',
        'unix_sock_ro_perms = "0777"',
        'unix_sock_rw_perms = "0770"',
    ):
        assert libvirtd.count(line) == 1, line
    assert not [line for line in libvirtd if line.startswith(("listen_tcp = 1", 'auth_tcp = "none"'))]
    # Settings the deploy does not own survive (the sandbox's own log_outputs).
    assert 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"' in libvirtd

    qemu = settings(cluster.ssh("sm-01", "cat /etc/libvirt/qemu.conf"))
    assert [line for line in qemu if line.startswith(("vnc_listen", "spice_listen"))] == [
        'vnc_listen = "127.0.0.1"',
        'spice_listen = "127.0.0.1"',
    ]
    assert 'uri_default = "qemu:///system"' in settings(cluster.ssh("sm-01", "cat /etc/libvirt/libvirt.conf"))
    # Nobody but root creates or swaps a file there (kvm_primary_storage_mode, default 0711).
    assert cluster.ssh("sm-01", "stat -c '%U:%G %a' /data01/primary").split() == ["root:kvm", "711"]
    # The project's facts run python3 with libvirt on the hypervisors.
    assert (
        cluster.ssh("sm-01", "python3 -c 'import libvirt; print(libvirt.getVersion() > 0)'").strip() == "True"
    )
    apparmor = cluster.ssh("sm-01", "cat /etc/apparmor.d/local/abstractions/libvirt-qemu")
    assert '"/data01/primary/**" rwk,' in apparmor and '"/secondary/**" rwk,' in apparmor
    # Nothing was restarted and the sandbox's libvirtd still answers.
    assert "9.0.0" in cluster.ssh("sm-01", "virsh -c qemu:///system version")

    plan, _ = cluster.pyinfra("kvm_host", "sm-01", dry=True)
    assert planned_changes(plan) == []
    second, _ = cluster.pyinfra("kvm_host", "sm-01")
    assert changed(second) == []
    assert all(hosts["no_change"] == ["sm-01"] for hosts in results(second).values())


def test_mgmt_server_on_mgmt01_then_no_change(cluster: Sandbox) -> None:
    address = cluster.inventory["mgmt"]["data"]["ssh_hostname"]
    # The sandbox's data is in the inventory: no --data needed to reproduce its configuration.
    sandbox_conf = cluster.ssh("mgmt-01", "cat /etc/dnsmasq.conf")
    # A loopback upstream makes the config differ from the sandbox's, so the write and the
    # dnsmasq --test validation really run; it is put back below.
    extra = "dns_upstream_servers=127.0.0.1"
    try:
        first, log = cluster.pyinfra("mgmt_server", "mgmt-01", extra)
        ops = results(first)
        assert ops["Management node | dnsmasq configuration /etc/dnsmasq.conf"]["success"] == ["mgmt-01"]
        assert ops["Management node | Validate dnsmasq configuration (dnsmasq --test)"]["success"] == [
            "mgmt-01"
        ]
        assert all(not hosts["error"] for hosts in ops.values())
        assert "systemd is not running (no /run/systemd/system): dnsmasq not enabled" in log

        conf = cluster.ssh("mgmt-01", "cat /etc/dnsmasq.conf")
        assert settings(conf) == [
            "domain-needed",
            "bogus-priv",
            "no-resolv",
            "no-poll",
            "listen-address=10.10.5.1",
            "bind-interfaces",
            "server=127.0.0.1",
            "domain=sandbox.internal",
            "local=/sandbox.internal/",
            "expand-hosts",
            "dhcp-range=10.10.5.10,10.10.5.250,255.255.255.0,1h",
            "dhcp-lease-max=150",
            "pid-file=/run/dnsmasq/dnsmasq.pid",
            "dhcp-hostsfile=/etc/kvm-qemu/dnsmasq/dhcp-hosts",
            "addn-hosts=/etc/kvm-qemu/dnsmasq/hosts",
            "conf-dir=/etc/dnsmasq.d/,*.conf",
        ]
        assert "syntax check OK" in cluster.ssh(
            "mgmt-01", "dnsmasq --test --conf-file=/etc/dnsmasq.conf 2>&1"
        )
        assert (
            cluster.ssh(
                "mgmt-01",
                "test -f /etc/kvm-qemu/dnsmasq/dhcp-hosts && test -f /etc/kvm-qemu/dnsmasq/hosts && echo ok",
            ).strip()
            == "ok"
        )

        plan, _ = cluster.pyinfra("mgmt_server", "mgmt-01", extra, dry=True)
        assert planned_changes(plan) == []
        second, _ = cluster.pyinfra("mgmt_server", "mgmt-01", extra)
        assert changed(second) == []
    finally:
        restored, _ = cluster.pyinfra("mgmt_server", "mgmt-01")
    assert changed(restored) == [
        "Management node | dnsmasq configuration /etc/dnsmasq.conf",
        "Management node | Validate dnsmasq configuration (dnsmasq --test)",
    ]
    # Exactly what the sandbox started its dnsmasq with, and that dnsmasq still serves.
    assert cluster.ssh("mgmt-01", "cat /etc/dnsmasq.conf") == sandbox_conf
    assert sandbox_mgmt.dns_answers(address)
    again, _ = cluster.pyinfra("mgmt_server", "mgmt-01")
    assert changed(again) == []
