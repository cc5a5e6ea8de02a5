"""Fault injection on the sandbox: frozen sshd, killed or frozen libvirtd, a pool too small for a copy.

A 4-host sandbox: sm-01..sm-03 each get one fault during the same build, sm-04 stays healthy. Each
failing host must fail with a clear message within the time limits, the healthy one must finish,
nothing may be half-made, and after the repair a re-run must converge without redoing work. Delete
keeps an ISO and a foreign disk, and the reservations of VMs it could not delete. Status with a frozen
libvirtd fails that host within the limit and still reports the others.

Every fault is undone in a ``with`` block (finally), and the sandbox is left down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandbox
from inventories.manifest_model import mac_for
from sandbox import client, cluster, faults

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
HOSTS = 4
HOSTSFILE = "/etc/kvm-qemu/dnsmasq/dhcp-hosts"


def vm(name: str, index: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "hostname": f"{name}.ft.internal",
        "ipaddress": f"10.10.5.{60 + index}",
        "vcpus": 1,
        "memoryGb": 1,
        "maxMemoryGb": 1,
        "numDisks": 0,
        "diskSize": 0,
        "clone": "linked",
        **extra,
    }


MANIFEST = [
    {"host": "sm-01", "vmspecs": [vm("ft-a1", 1)]},
    {"host": "sm-02", "vmspecs": [vm("ft-b1", 2)]},
    # A full copy of the 1 GiB base: does not fit in the small pool.
    {"host": "sm-03", "vmspecs": [vm("ft-c2", 4, clone="full")]},
    {"host": "sm-04", "vmspecs": [vm("ft-d1", 5, clone="full", numDisks=1, diskSize=2), vm("ft-d2", 6)]},
]
VMS = {entry["host"]: [spec["name"] for spec in entry["vmspecs"]] for entry in MANIFEST}


class Faulty:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir

    def ssh(self, host: str, command: str, check: bool = True) -> str:
        return client.ssh(client.node_data(self.inventory, host), command, check=check, timeout=60)

    def run(
        self, deploy: str, *data: str, limit: float = 300
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        manifest = self.workdir / "manifest.json"
        manifest.write_text(json.dumps(MANIFEST))
        inventory = self.workdir / "inventory.json"
        inventory.write_text(json.dumps(self.inventory))
        env = client.workflow_env(manifest, inventory, self.inventory["mgmt"]["name"])
        extra = [x for d in data for x in ("--data", d)]
        started = time.monotonic()
        result = subprocess.run(
            [PYINFRA, "-y", "inventories/manifest.py", f"deploys/{deploy}.py", *extra],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
        )
        return result, time.monotonic() - started

    def domains(self, host: str) -> set[str]:
        return set(self.ssh(host, "virsh -q list --all --name").split())

    def files(self, host: str) -> set[str]:
        out = self.ssh(host, "ls -1 /data01/primary/ft-* 2>/dev/null || true")
        return set(out.split())

    def disks(self, host: str, domain: str) -> set[str]:
        out = self.ssh(host, f"virsh -q domblklist --inactive {domain}")
        return {
            line.split()[1] for line in out.splitlines() if len(line.split()) == 2 and line.split()[1] != "-"
        }

    def reservations(self) -> str:
        return self.ssh("mgmt", f"cat {HOSTSFILE}")


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_nothing_half_made(c: Faulty, host: str) -> None:
    """Every ft- domain has all its disk files; every ft- file in the host's pool belongs to one of them."""
    files = c.files(host)
    used: set[str] = set()
    for domain in sorted(d for d in c.domains(host) if d.startswith("ft-")):
        disks = c.disks(host, domain)
        used |= {d for d in disks if d.startswith("/data01/")}
        missing = [d for d in disks if c.ssh(host, f"test -f {d} && echo ok").strip() != "ok"]
        assert not missing, f"{host}: {domain} is defined without {missing}"
    assert files <= used, f"{host}: files without a domain: {sorted(files - used)}"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (namespaces, bind mounts, sshd on port 22)")
    before = sandbox.status()
    hosts_before = len(before.get("hosts", {})) if before.get("up") else 0
    if hosts_before and hosts_before != HOSTS:
        sandbox.down()
    inventory = sandbox.up(hosts=HOSTS)
    c = Faulty(inventory, tmp_path_factory.mktemp("faults"))
    try:
        result, _ = c.run("pools")
        assert result.returncode == 0, output(result)[-3000:]
        yield c
    finally:
        recorded = cluster.snapshot()
        sandbox.down()
        if recorded is not None:
            problems = cluster.leftovers(recorded)
            assert not problems, "sandbox down left things behind:\n" + "\n".join(problems)
        if hosts_before:  # the session's cluster for the tests that follow
            sandbox.up(hosts=hosts_before)


def test_one_build_with_three_faults_then_repair_converges(faulty: Faulty) -> None:
    c = faulty
    # sm-03's secondary pool is inactive, as after a reboot (it does not autostart): the preflight
    # cannot size the base there, so the full copy meets the full pool at execution.
    c.ssh("sm-03", "virsh -q pool-destroy secondary")
    try:
        with (
            faults.frozen("sm-01", "sshd"),
            faults.killed("sm-02", "libvirtd"),
            faults.small_tmpfs("sm-03", "/data01/primary", 64),
        ):
            result, elapsed = c.run("build", "command_timeout=20", limit=150)
            print(f"faulty build: {elapsed:.1f} s")
            text = output(result)
            assert result.returncode != 0
            assert elapsed < 150, f"the faulty build took {elapsed:.0f} s"
            # pyinfra gives up on the frozen sshd after its connect timeout (10 s).
            assert "[sm-01]   SSH error" in text, text[-4000:]
            assert "kvm-qemu: cannot connect to libvirt at qemu:///system" in text, text[-4000:]
            assert "No space left on device" in text, text[-4000:]
            # The healthy host finished; sm-03 kept nothing of the copy that did not fit.
            assert {"ft-d1", "ft-d2"} <= c.domains("sm-04")
            assert "ft-c2" not in c.domains("sm-03") and c.files("sm-03") == set()
            for host in ("sm-03", "sm-04"):
                assert_nothing_half_made(c, host)
    finally:
        c.ssh("sm-03", "virsh -q pool-start secondary", check=False)
    for host in ("sm-01", "sm-02", "sm-03", "sm-04"):
        assert_nothing_half_made(c, host)
    assert "ft-b1" not in c.domains("sm-02") and "ft-a1" not in c.domains("sm-01")

    repaired, elapsed = c.run("build")
    print(f"re-run after repair: {elapsed:.1f} s")
    assert repaired.returncode == 0, output(repaired)[-4000:]
    defined = {
        line.split(": define from")[0].split()[-1]
        for line in output(repaired).splitlines()
        if ": define from" in line
    }
    assert defined == {"ft-a1", "ft-b1", "ft-c2"}  # only what the faults stopped
    for host, names in VMS.items():
        assert set(names) <= c.domains(host)
        assert_nothing_half_made(c, host)
    again, _ = c.run("build")
    assert again.returncode == 0 and "define from" not in output(again)
    assert "Grand total" in output(again)
    row = next(line for line in output(again).splitlines() if "Grand total" in line).split()[2:]
    assert row[1] == "-" and row[2] == "-", row  # nothing changed, nothing failed


def converged(c: Faulty) -> None:
    """Every VM of the manifest built (a no-op after the first test)."""
    result, _ = c.run("build")
    assert result.returncode == 0, output(result)[-4000:]


def test_status_with_a_frozen_libvirtd_fails_that_host_in_time_and_reports_the_others(faulty: Faulty) -> None:
    c = faulty
    converged(c)
    with faults.frozen("sm-02", "libvirtd"):
        result, elapsed = c.run("status", "command_timeout=5", limit=60)
    print(f"status with a frozen libvirtd: {elapsed:.1f} s")
    text = output(result)
    assert result.returncode != 0
    assert elapsed < 45, f"status took {elapsed:.0f} s"
    # The host and the step: "[sm-02] kvm-qemu: timed out after 5 s: libvirt probe, connect to ..."
    assert re.search(r"\[sm-02\] +kvm-qemu: timed out after 5 s: libvirt probe, \w+", text), text[-4000:]
    assert "sm-02" in text
    for name in ("ft-a1", "ft-c2", "ft-d1"):
        assert any(name in line and "absent" not in line for line in text.splitlines()), text[-4000:]


def test_delete_keeps_an_iso_a_foreign_disk_and_reservations_it_could_not_release(faulty: Faulty) -> None:
    c = faulty
    converged(c)
    c.ssh(
        "sm-04",
        "head -c 1048576 /dev/zero > /secondary/ft-media.iso; truncate -s 1G /data01/primary/foreign.img",
    )
    c.ssh(
        "sm-04",
        "virsh -q attach-disk ft-d1 /secondary/ft-media.iso hdc --type cdrom --mode readonly --config"
        " && virsh -q attach-disk ft-d1 /data01/primary/foreign.img vdc --config",
    )
    try:
        with faults.killed("sm-02", "libvirtd"):
            result, elapsed = c.run("delete", "command_timeout=20", limit=120)
        print(f"delete with a dead libvirtd: {elapsed:.1f} s")
        assert result.returncode != 0 and elapsed < 120
        assert "ft-d1" not in c.domains("sm-04")
        left = c.ssh(
            "sm-04",
            "ls -1 /secondary/ft-media.iso /data01/primary/foreign.img /data01/primary/ft-* 2>&1 || true",
        )
        assert "/secondary/ft-media.iso" in left and "/data01/primary/foreign.img" in left
        assert "/data01/primary/ft-d1" not in left and "/data01/primary/ft-d2" not in left
        hostsfile = c.reservations()
        assert mac_for("ft-b1") in hostsfile  # its VM still exists on sm-02
        assert mac_for("ft-d1") not in hostsfile and mac_for("ft-a1") not in hostsfile
        assert "ft-b1" in c.domains("sm-02")

        finished, _ = c.run("delete")
        assert finished.returncode == 0, output(finished)[-4000:]
        assert "ft-b1" not in c.domains("sm-02") and mac_for("ft-b1") not in c.reservations()
        for host in VMS:
            assert c.files(host) == set()
    finally:
        c.ssh("sm-04", "rm -f /secondary/ft-media.iso /data01/primary/foreign.img", check=False)
