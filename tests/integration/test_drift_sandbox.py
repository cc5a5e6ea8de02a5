"""Cluster drift report and prune on the sandbox, through the real pyinfra CLI.

Planted: a foreign domain with its disk, an orphan owned volume, a foreign file, a stale reservation (a
VM built, then undefined behind the tool's back), a VM defined on another host than the manifest says,
and resource drift. The report lists each; ``prune --dry`` changes nothing; prune removes only the
orphan volume and the stale reservation.

The VMs are linked clones of an idle base (no kernel, as in test_workflows.py): drift is about what
libvirt and the management node hold, which a booted guest does not change.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from inventories.manifest_model import mac_for
from sandbox import client
from tests.integration.test_workflows import IDLE_BASE, Cluster, idle_base_xml

pytestmark = pytest.mark.integration

BASE = "dr-idle"
HOSTSFILE = "/etc/kvm-qemu/dnsmasq/dhcp-hosts"
ORPHAN = "/data01/primary/dr-old-vdb.img"
FOREIGN_FILE = "/data01/primary/dr-notes.txt"
FOREIGN_DISK = "/data01/primary/dr-foreign-vda.img"


def vmspec(vm: str, ip: str, vcpus: int = 1) -> dict[str, Any]:
    return {
        "name": vm,
        "hostname": f"{vm}.dr.internal",
        "ipaddress": ip,
        "vcpus": vcpus,
        "memoryGb": 1,
        "maxMemoryGb": 1,
        "numDisks": 0,
        "diskSize": 0,
        "clone": "linked",
        "srcvm": BASE,
    }


# As built: dr-vm03 on sm-02, and dr-gone (undefined afterwards behind the tool's back).
BUILT = [
    {"host": "sm-01", "vmspecs": [vmspec("dr-vm01", "10.10.5.41"), vmspec("dr-gone", "10.10.5.44")]},
    {"host": "sm-02", "vmspecs": [vmspec("dr-vm02", "10.10.5.42"), vmspec("dr-vm03", "10.10.5.43")]},
]
# The manifest now: dr-gone dropped, dr-vm03 placed on sm-01, dr-vm01 with 2 vCPUs.
WANTED = [
    {"host": "sm-01", "vmspecs": [vmspec("dr-vm01", "10.10.5.41", vcpus=2), vmspec("dr-vm03", "10.10.5.43")]},
    {"host": "sm-02", "vmspecs": [vmspec("dr-vm02", "10.10.5.42")]},
]


def output(result: Any) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    c = Cluster(sandbox_cluster, tmp_path_factory.mktemp("drift"))
    base = idle_base_xml(c.virsh("sm-01", "dumpxml", "--inactive", "centos7")).replace(IDLE_BASE, BASE)
    root = ET.fromstring(base)
    root.find("name").text = "dr-foreign"
    for interface in root.findall("devices/interface"):
        root.find("devices").remove(interface)
    disk = next(d for d in root.findall("devices/disk") if d.get("device") == "disk")
    disk.find("source").set("file", FOREIGN_DISK)
    disk.find("driver").set("type", "raw")
    for host in ("sm-01", "sm-02"):
        client.ssh(client.node_data(c.inventory, host), "virsh -q define /dev/stdin", stdin=base)
    c.deploy(BUILT, "pools")
    c.deploy(BUILT, "build")
    mgmt = c.inventory["mgmt"]["name"]
    # plant the drift
    c.ssh("sm-01", "virsh -q undefine dr-gone && rm -f /data01/primary/dr-gone-vda.qcow2")
    c.ssh("sm-01", f"umask 077; truncate -s 1M {ORPHAN} {FOREIGN_FILE}")
    c.ssh("sm-02", f"umask 077; truncate -s 1M {FOREIGN_DISK}")
    client.ssh(
        client.node_data(c.inventory, "sm-02"),
        "virsh -q define /dev/stdin",
        stdin=ET.tostring(root, "unicode"),
    )
    c.mgmt = mgmt  # type: ignore[attr-defined]
    yield c
    c.deploy(BUILT, "delete", expect_ok=False)
    for host in ("sm-01", "sm-02"):
        c.ssh(
            host,
            f"virsh -q undefine dr-foreign; virsh -q undefine {BASE}; "
            f"for v in dr-vm01 dr-vm02 dr-vm03 dr-gone; do virsh -q undefine $v; done; "
            f"rm -f {ORPHAN} {FOREIGN_FILE} {FOREIGN_DISK} /data01/primary/dr-*",
            check=False,
        )


def state(c: Cluster) -> dict[str, Any]:
    return {
        "domains": {h: sorted(c.domains(h)) for h in ("sm-01", "sm-02")},
        "files": {h: c.files(h, "dr-*") for h in ("sm-01", "sm-02")},
        "hosts": c.ssh(c.mgmt, f"cat {HOSTSFILE}"),  # type: ignore[attr-defined]
    }


def test_report_then_dry_prune_then_prune(cluster: Cluster) -> None:
    report = output(cluster.deploy(WANTED, "drift"))
    gone_mac = mac_for("dr-gone")
    for line in (
        "wrong-host: dr-vm03 on sm-02: the manifest places it on sm-01",
        "unmanaged-domain: dr-foreign on sm-02: no manifest entry names it",
        "resources: dr-vm01 on sm-01: vcpus 1, manifest 2",
        f"orphan-volume: {ORPHAN} on sm-01: pool default: no domain dr-old, unused (prune removes it)",
        f"stale-reservation: {gone_mac} on {cluster.mgmt}: 10.10.5.44 dr-gone.dr.internal: "  # type: ignore[attr-defined]
        "no manifest VM, no domain on any host (prune removes it)",
    ):
        assert line in report, report[-4000:]
    assert report.count("wrong-host: dr-vm03") == 1  # one report for the cluster, not one per host
    assert "dr-notes" not in report and f"orphan-volume: {FOREIGN_DISK}" not in report
    assert "unmanaged-domain: dr-idle" not in report  # the manifest's base VM

    before = state(cluster)
    assert ORPHAN in before["files"]["sm-01"] and gone_mac in before["hosts"]
    dry = output(cluster.deploy(WANTED, "prune", flag="--dry"))
    assert f"remove orphan volume {ORPHAN}" in dry, dry[-4000:]
    assert "Remove stale DHCP reservations and DNS names" in dry
    assert state(cluster) == before

    output(cluster.deploy(WANTED, "prune"))
    after = state(cluster)
    assert after["domains"] == before["domains"]  # the foreign domain and the misplaced VM stay
    assert after["files"]["sm-01"] == [f for f in before["files"]["sm-01"] if f != ORPHAN]
    assert FOREIGN_FILE in after["files"]["sm-01"]
    assert after["files"]["sm-02"] == before["files"]["sm-02"]
    assert FOREIGN_DISK in after["files"]["sm-02"]
    assert after["hosts"] == "".join(
        line + "\n" for line in before["hosts"].splitlines() if gone_mac not in line
    )

    again = output(cluster.deploy(WANTED, "drift"))
    assert "prune removes it" not in again
    assert "wrong-host: dr-vm03 on sm-02" in again and "unmanaged-domain: dr-foreign on sm-02" in again
    assert "prune: nothing to remove" in output(cluster.deploy(copy.deepcopy(WANTED), "prune"))
