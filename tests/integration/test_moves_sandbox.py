"""Placement by manifest and drain on booted guests: VMs move between the sandbox's hypervisors.

One sandbox and two guests for the module (the tests run in order and share them): a full clone with its
disk in each host's own primary pool (copied when it moves) and a linked clone in the shared secondary pool
(moved by reference). A running VM on shared storage without a safe cache mode is refused; a shut-off VM
moves offline; a running VM moves live and answers SSH throughout, keeping its address and its uptime;
drain previews, then moves every VM off a host and writes the patched manifest next to the original.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inventories.manifest_model import mac_for
from sandbox import client
from tests.integration.test_guests import PYINFRA, REPO, SHARED_BASE, Guests, _vm, output

pytestmark = [pytest.mark.integration, pytest.mark.guests]

LOCAL = _vm("mv-vm01", "10.10.5.61")
SHARED = _vm("mv-vm02", "10.10.5.62", clone="linked", srcvm=SHARED_BASE, pool="secondary")
SPECS = {"mv-vm01": LOCAL, "mv-vm02": SHARED}
# Largest gap between two successful SSH commands to the live-moving guest (TCG, 2 cores).
ALLOWED_GAP_SECONDS = 10.0


def manifest(**hosts: str) -> list[dict[str, Any]]:
    """The two VMs placed as given (``vm01="sm-02"``), on sm-01 by default."""
    where = {"mv-vm01": hosts.get("vm01", "sm-01"), "mv-vm02": hosts.get("vm02", "sm-01")}
    return [
        {"host": h, "vmspecs": [copy.deepcopy(SPECS[vm]) for vm in SPECS if where[vm] == h]}
        for h in ("sm-01", "sm-02")
    ]


class Cluster(Guests):
    def domains(self, host: str) -> dict[str, str]:
        out = self.host(
            host, 'for d in $(virsh -q list --all --name); do echo "$d $(virsh -q domstate $d)"; done'
        )
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if line.strip()}

    def ssh_guest(self, vm: str, command: str, check: bool = True, timeout: int = 120) -> str:
        data = client.guest_data(self.inventory, SPECS[vm]["ipaddress"])
        return client.ssh({**data}, command, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(sandbox_cluster, tmp_path_factory.mktemp("placement"))
    pools_before = {h: c.host(h, "virsh -q pool-list --all --name").split() for h in ("sm-01", "sm-02")}
    start = manifest()
    c.pyinfra(start, "pools")
    c.pyinfra(start, "build")
    c.pyinfra(start, "start")
    c.pyinfra(start, "wait", "wait_timeout=180")
    yield c
    c.pyinfra(manifest(), "delete", ok=False)
    for h in ("sm-01", "sm-02"):
        for vm in SPECS:
            c.host(h, f"virsh -q destroy {vm}; virsh -q undefine {vm}", check=False)
        c.host(h, "rm -f /data01/primary/mv-vm0* /secondary/mv-vm0*", check=False)
    for h in ("sm-01", "sm-02"):
        for pool in ("default", "secondary"):
            if pool not in pools_before[h]:
                c.host(h, f"virsh -q pool-destroy {pool}; virsh -q pool-undefine {pool}", check=False)


def test_a_running_vm_on_shared_storage_without_a_safe_cache_mode_is_refused(cluster: Cluster) -> None:
    result = cluster.pyinfra(manifest(vm02="sm-02"), "build", ok=False)
    assert result.returncode != 0
    assert "refusing to move any VM" in output(result), output(result)[-4000:]
    assert (
        "mv-vm02 (sm-01 -> sm-02): disk /secondary/mv-vm02-vda.qcow2 in shared storage uses cache=default"
        in output(result)
    ), output(result)[-3000:]
    assert cluster.domains("sm-01").get("mv-vm02") == "running"
    assert "mv-vm02" not in cluster.domains("sm-02")


def test_a_shut_off_vm_moves_offline_with_its_shared_disk_by_reference(cluster: Cluster) -> None:
    cluster.host("sm-01", "virsh -q destroy mv-vm02")
    result = cluster.pyinfra(manifest(vm02="sm-02"), "build")
    assert "mv-vm02: sm-01 -> sm-02, offline; disks: /secondary/mv-vm02-vda.qcow2 by reference" in output(
        result
    )
    assert "mv-vm02" not in cluster.domains("sm-01")
    assert cluster.domains("sm-02")["mv-vm02"] == "shut off"
    xml = cluster.host("sm-02", "virsh -q dumpxml --inactive mv-vm02")
    assert "/secondary/mv-vm02-vda.qcow2" in xml and SHARED["name"] in xml
    assert "52:54:00" in xml and client_mac(xml) == _mac("mv-vm02")
    again = cluster.pyinfra(manifest(vm02="sm-02"), "build")
    assert "move " not in output(again)


def client_mac(xml: str) -> str:
    return xml.split("<mac address='", 1)[1].split("'", 1)[0]


def _mac(vm: str) -> str:
    return mac_for(vm)


def test_a_running_vm_moves_live_and_answers_ssh_throughout(cluster: Cluster) -> None:
    vm = "mv-vm01"
    # A mark in the guest's RAM-only /run: still there afterwards means the guest never restarted.
    cluster.ssh_guest(vm, "echo before-move > /run/move-mark")
    uptime_before = float(cluster.ssh_guest(vm, "cut -d' ' -f1 /proc/uptime"))
    successes: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                cluster.ssh_guest(vm, "true", timeout=15)
                successes.append(time.monotonic())
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                failures.append(str(exc)[:200])
            time.sleep(0.2)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    time.sleep(2)
    started = time.monotonic()
    result = cluster.pyinfra(manifest(vm01="sm-02", vm02="sm-02"), "build")
    finished = time.monotonic()
    time.sleep(3)
    stop.set()
    thread.join(30)
    assert "mv-vm01: sm-01 -> sm-02, live; disks: /data01/primary/mv-vm01-vda.img copied" in output(result)
    assert cluster.domains("sm-02")[vm] == "running"
    assert vm not in cluster.domains("sm-01")
    assert cluster.host("sm-01", "ls /data01/primary/ | grep mv-vm01 || true").strip() == ""
    window = [t for t in successes if started - 2 <= t <= finished + 3]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    print(
        f"live move: build {finished - started:.1f} s, {len(window)} SSH probes, largest gap {max(gaps):.1f} s"
    )
    assert window and window[0] <= started and window[-1] >= finished, (failures, len(successes))
    assert max(gaps) <= ALLOWED_GAP_SECONDS, (gaps, failures)
    assert cluster.ssh_guest(vm, "cat /run/move-mark").strip() == "before-move"
    assert float(cluster.ssh_guest(vm, "cut -d' ' -f1 /proc/uptime")) > uptime_before
    assert f"inet {LOCAL['ipaddress']}/24" in cluster.ssh_guest(vm, "ip -4 -o address show dev eth0")
    xml = cluster.host("sm-02", "virsh -q dumpxml mv-vm01")
    assert client_mac(xml) == _mac(vm)


def test_drain_dry_previews_and_changes_nothing(cluster: Cluster) -> None:
    placed = manifest(vm01="sm-02", vm02="sm-02")
    before = {h: cluster.domains(h) for h in ("sm-01", "sm-02")}
    dry = _pyinfra_dry(cluster, placed, "drain", "drain=sm-02")
    text = output(dry)
    assert "drain: mv-vm01: sm-02 -> sm-01, live; disks: /data01/primary/mv-vm01-vda.img copied" in text, (
        text[-3000:]
    )
    assert "drain: mv-vm02: sm-02 -> sm-01, offline; disks: /secondary/mv-vm02-vda.qcow2 by reference" in text
    assert "manifest change that makes the drain permanent" in text
    assert {h: cluster.domains(h) for h in ("sm-01", "sm-02")} == before
    assert not (cluster.workdir / "manifest.json.drain-sm-02.json").exists()


def _pyinfra_dry(
    cluster: Cluster, placed: list[dict[str, Any]], deploy: str, *data: str
) -> subprocess.CompletedProcess[str]:
    path = cluster.workdir / "manifest.json"
    path.write_text(json.dumps(placed))
    (cluster.workdir / "inventory.json").write_text(json.dumps(cluster.inventory))
    env = client.workflow_env(path, cluster.workdir / "inventory.json", cluster.inventory["mgmt"]["name"])
    extra = [x for d in data for x in ("--data", d)]
    result = subprocess.run(
        [PYINFRA, "--dry", "inventories/manifest.py", f"deploys/{deploy}.py", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, output(result)[-3000:]
    return result


def test_drain_moves_every_vm_off_the_host_and_writes_the_manifest_change(cluster: Cluster) -> None:
    placed = manifest(vm01="sm-02", vm02="sm-02")
    result = cluster.pyinfra(placed, "drain", "drain=sm-02")
    assert cluster.domains("sm-02").keys().isdisjoint(SPECS)
    assert cluster.domains("sm-01")["mv-vm01"] == "running"
    assert cluster.domains("sm-01")["mv-vm02"] == "shut off"
    assert '"sm-01": [' in output(result) and '"name": "mv-vm01"' in output(result)
    original = cluster.workdir / "manifest.json"
    assert json.loads(original.read_text()) == placed
    patched = json.loads(Path(f"{original}.drain-sm-02.json").read_text())
    assert patched == manifest()
    assert f"inet {LOCAL['ipaddress']}/24" in cluster.ssh_guest("mv-vm01", "ip -4 -o address show dev eth0")
    # The patched manifest matches the cluster: a build with it moves nothing.
    again = cluster.pyinfra(patched, "build")
    assert "move " not in output(again)
