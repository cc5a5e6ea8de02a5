"""The libvirt facts against a real libvirtd over SSH: exact reports, one command per host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox import client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
MANIFEST = [{"host": h, "vmspecs": []} for h in ("sm-01", "sm-02")]

SETUP = r"""
set -e
mkdir -p /data01/factpool
virsh -q pool-define-as factpool dir --target /data01/factpool >/dev/null
virsh -q pool-start factpool >/dev/null
qemu-img create -q -f qcow2 /data01/factpool/outside.qcow2 1G
virsh -q dumpxml --inactive centos7 | sed -e 's/<name>centos7</<name>fact-vm</' -e '/<uuid>/d' \
  -e 's/52:54:00:00:00:01/52:54:00:00:fa:01/' -e "s#<vcpu placement='static'>1#<vcpu placement='static'>3#" \
  > /tmp/fact-vm.xml
virsh -q define /tmp/fact-vm.xml >/dev/null
"""
TEARDOWN = r"""
virsh -q undefine fact-vm >/dev/null 2>&1; virsh -q pool-destroy factpool >/dev/null 2>&1
virsh -q pool-undefine factpool >/dev/null 2>&1; rm -rf /data01/factpool /tmp/fact-vm.xml
"""


def run_fact(
    inventory: dict[str, Any], tmp_path: Path, manifest: list[Any], options: list[str], fact_args: list[str]
) -> subprocess.CompletedProcess[str]:
    manifest_file, data = tmp_path / "manifest.json", tmp_path / "inventory.json"
    manifest_file.write_text(json.dumps(manifest))
    data.write_text(json.dumps(inventory))
    return subprocess.run(
        [PYINFRA, "--limit", "kvm_hosts", *options, "inventories/manifest.py", "fact", *fact_args],
        cwd=REPO, env=client.workflow_env(manifest_file, data, inventory["mgmt"]["name"]),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def fact(inventory: dict[str, Any], tmp_path: Path, name: str) -> tuple[dict[str, Any], str]:
    result = run_fact(inventory, tmp_path, MANIFEST, ["--debug", "--json"], [f"facts.libvirt.{name}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)[f"facts.libvirt.{name}"], result.stdout + result.stderr


def test_facts_report_what_virsh_defined(sandbox_cluster: dict[str, Any], tmp_path: Path) -> None:
    host = client.node_data(sandbox_cluster, "sm-01")
    client.ssh(host, TEARDOWN)
    client.ssh(host, SETUP)
    try:
        snapshot, log = fact(sandbox_cluster, tmp_path, "Hypervisor")
        sm01, sm02 = snapshot["sm-01"], snapshot["sm-02"]
        assert sm01["pools"]["factpool"]["path"] == "/data01/factpool"
        assert sm01["pools"]["factpool"]["state"] == "running"
        assert "factpool" not in sm02["pools"]  # hosts are independent
        # Created with qemu-img, unknown to libvirt until the probe's refresh.
        outside = sm01["volumes"]["factpool"]["outside.qcow2"]
        assert (outside["format"], outside["capacity"]) == ("qcow2", 1024**3)
        vm = sm01["domains"]["fact-vm"]
        assert (vm["state"], vm["vcpus"], vm["max_vcpus"], vm["memory_kib"]) == (
            "shut off",
            3,
            3,
            1024 * 1024,
        )
        assert vm["interfaces"][0]["mac"] == "52:54:00:00:fa:01"
        assert vm["disks"][0]["path"] == "/secondary/centos7-vda.img"
        assert "fact-vm" not in sm02["domains"]
        # One command per host, however many objects exist.
        for name in ("sm-01", "sm-02"):
            assert log.count(f"Running command on {name}:") == 1, log[-2000:]
    finally:
        client.ssh(host, TEARDOWN)


def test_stopped_libvirtd_fails_the_host_with_a_message(
    sandbox_cluster: dict[str, Any], tmp_path: Path
) -> None:
    # A wrong URI stands in for a stopped daemon: the socket is not there.
    fact_args = ["facts.libvirt.Domains", "uri=qemu:///session?socket=/run/nothing.sock"]
    result = run_fact(sandbox_cluster, tmp_path, MANIFEST[:1], [], fact_args)
    assert "cannot connect to libvirt" in result.stdout + result.stderr
    # In a deploy the failing fact fails the host (and the run's exit status), never "no domains".
    build = subprocess.run(
        [PYINFRA, "-y", "inventories/manifest.py", "deploys/build.py", "--data", f"libvirt_uri={fact_args[1][4:]}"],
        cwd=REPO, env=client.workflow_env(tmp_path / "manifest.json", tmp_path / "inventory.json", "mgmt-01"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode != 0
    assert "cannot connect to libvirt" in build.stdout + build.stderr
