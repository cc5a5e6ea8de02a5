"""A deploy file outside deploys/ composes build + start + wait (deploys.vms) against the sandbox.

One guest is built and booted from the composed file; a second VM of the same manifest, not picked
by the file, is neither defined nor reserved. The guest answers SSH with its own hostname's address.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inventories.manifest_model import mac_for
from sandbox import client

pytestmark = [pytest.mark.integration, pytest.mark.guests]

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
COMPOSE = "tests/integration/deploys/compose.py"


def _vm(name: str, ip: str) -> dict[str, Any]:
    return {
        "name": name, "hostname": f"{name}.sandbox.internal", "ipaddress": ip, "vcpus": 1, "memoryGb": 1,
        "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0,
    }  # fmt: skip


MANIFEST = [
    {"host": "sm-01", "vmspecs": [_vm("cp-vm01", "10.10.5.61")]},
    {"host": "sm-02", "vmspecs": [_vm("ot-vm02", "10.10.5.62")]},
]


def _pyinfra(inventory: dict[str, Any], workdir: Path, deploy: str) -> subprocess.CompletedProcess[str]:
    manifest = workdir / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    (workdir / "inventory.json").write_text(json.dumps(inventory))
    env = client.workflow_env(manifest, workdir / "inventory.json", inventory["mgmt"]["name"])
    return subprocess.run(
        [PYINFRA, "-y", "inventories/manifest.py", deploy],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def composed(
    sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], subprocess.CompletedProcess[str]]]:
    workdir = tmp_path_factory.mktemp("compose")
    inventory = sandbox_cluster
    pools_before = {
        host: client.ssh(client.node_data(inventory, host), "virsh -q pool-list --all --name").split()
        for host in ("sm-01", "sm-02")
    }
    assert _pyinfra(inventory, workdir, "deploys/pools.py").returncode == 0
    result = _pyinfra(inventory, workdir, COMPOSE)
    yield inventory, result
    _pyinfra(inventory, workdir, "deploys/delete.py")
    client.ssh(
        client.node_data(inventory, "sm-01"),
        "virsh -q destroy cp-vm01; virsh -q undefine cp-vm01; rm -f /data01/primary/cp-vm01-*",
        check=False,
    )
    for host, before in pools_before.items():
        for pool in ("default", "secondary"):
            if pool not in before:
                client.ssh(
                    client.node_data(inventory, host),
                    f"virsh -q pool-destroy {pool}; virsh -q pool-undefine {pool}",
                    check=False,
                )


def test_composed_deploy_builds_starts_and_waits_for_the_picked_vm_only(
    composed: tuple[dict[str, Any], subprocess.CompletedProcess[str]],
) -> None:
    inventory, result = composed
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    # wait's table: the picked guest had its lease and answered SSH; the other VM is not waited for.
    assert any(line.split("] ", 1)[-1].startswith("cp-vm01 ") and line.rstrip().endswith(" s")
               for line in out.splitlines()), out[-4000:]
    assert "ot-vm02" not in out
    sm01 = client.node_data(inventory, "sm-01")
    sm02 = client.node_data(inventory, "sm-02")
    assert client.ssh(sm01, "virsh -q domstate cp-vm01").strip() == "running"
    assert client.ssh(sm02, "virsh -q list --all --name").split().count("ot-vm02") == 0
    hosts = client.ssh(client.node_data(inventory, "mgmt-01"), "cat /etc/kvm-qemu/dnsmasq/dhcp-hosts")
    assert f"{mac_for('cp-vm01')},id:*,10.10.5.61,cp-vm01" in hosts
    assert mac_for("ot-vm02") not in hosts
    guest = client.guest_data(inventory, "10.10.5.61")
    assert "inet 10.10.5.61/24" in client.ssh(guest, "ip -4 -o address show dev eth0")
