"""Two manifests share the sandbox's management node; a setting given once to mgmt_server is not needed
again by delete. Through the real pyinfra CLI.

Manifest A places ow-a1 on sm-01 only, manifest B places ow-b1 on sm-02 only, each from its own
directory (so each has its own owner tag). A cannot see sm-02, so B's reservation looks stale to A:
prune with A must keep it. Then delete runs with management node data that lacks ``dhcp_range`` and
``dns_listen_address`` (as when an operator gave them only to deploys/mgmt_server.py with --data): it
must still release the deleted VM's lease, on the address the node's dnsmasq.conf names.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from inventories.manifest_model import mac_for
from sandbox import client
from tests.integration.test_workflows import IDLE_BASE, Cluster, idle_base_xml

pytestmark = pytest.mark.integration

BASE = "ow-idle"
HOSTSFILE = "/etc/kvm-qemu/dnsmasq/dhcp-hosts"
ADDN_HOSTS = "/etc/kvm-qemu/dnsmasq/hosts"


def vmspec(vm: str, ip: str) -> dict[str, Any]:
    return {
        "name": vm,
        "hostname": f"{vm}.ow.internal",
        "ipaddress": ip,
        "vcpus": 1,
        "memoryGb": 1,
        "maxMemoryGb": 1,
        "numDisks": 0,
        "diskSize": 0,
        "clone": "linked",
        "srcvm": BASE,
    }


A = [{"host": "sm-01", "vmspecs": [vmspec("ow-a1", "10.10.5.61"), vmspec("ow-a2", "10.10.5.62")]}]
A_LATER = [{"host": "sm-01", "vmspecs": [vmspec("ow-a1", "10.10.5.61")]}]  # ow-a2 dropped, then undefined
B = [{"host": "sm-02", "vmspecs": [vmspec("ow-b1", "10.10.5.63")]}]


def text(result: Any) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def clusters(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    a = Cluster(sandbox_cluster, tmp_path_factory.mktemp("owner-a"))
    b = Cluster(sandbox_cluster, tmp_path_factory.mktemp("owner-b"))
    base = idle_base_xml(a.virsh("sm-01", "dumpxml", "--inactive", "centos7")).replace(IDLE_BASE, BASE)
    for host in ("sm-01", "sm-02"):
        client.ssh(client.node_data(a.inventory, host), "virsh -q define /dev/stdin", stdin=base)
    a.deploy(A, "pools")
    b.deploy(B, "pools")
    a.deploy(A, "build")
    b.deploy(B, "build")
    yield a, b
    a.deploy(A, "delete", expect_ok=False)
    b.deploy(B, "delete", expect_ok=False)
    for host in ("sm-01", "sm-02"):
        a.ssh(
            host,
            f"for v in ow-a1 ow-a2 ow-b1 {BASE}; do virsh -q undefine $v; done; rm -f /data01/primary/ow-*",
            check=False,
        )


def test_prune_with_one_manifest_keeps_the_other_manifests_reservation(clusters: Any) -> None:
    a, b = clusters
    mgmt = a.inventory["mgmt"]["name"]
    # Each manifest's owner tag is the comment of its addn-hosts lines; the dhcp-host lines carry no tag.
    names = a.ssh(mgmt, f"cat {ADDN_HOSTS}")
    a_tag = next(line for line in names.splitlines() if line.startswith("10.10.5.61 ")).split("#")[1]
    b_tag = next(line for line in names.splitlines() if line.startswith("10.10.5.63 ")).split("#")[1]
    assert a_tag.startswith(" kvmq-owner manifest-") and b_tag.startswith(" kvmq-owner manifest-") and a_tag != b_tag
    hosts = a.ssh(mgmt, f"cat {HOSTSFILE}")
    assert "set:" not in hosts
    b_line = next(line for line in hosts.splitlines() if line.startswith(mac_for("ow-b1")))
    a.ssh("sm-01", "virsh -q undefine ow-a2 && rm -f /data01/primary/ow-a2-*")

    report = text(a.deploy(A_LATER, "drift"))
    assert (
        f"{mac_for('ow-b1')} on {mgmt}: 10.10.5.63 ow-b1.ow.internal: belongs to another manifest" in report
    )
    assert f"stale-reservation: {mac_for('ow-a2')} on {mgmt}" in report and "prune removes it" in report

    text(a.deploy(A_LATER, "prune"))
    after = a.ssh(mgmt, f"cat {HOSTSFILE}")
    assert b_line in after.splitlines(), after
    assert mac_for("ow-a2") not in after and mac_for("ow-a1") in after


def test_delete_without_the_mgmt_settings_still_releases_the_lease(clusters: Any) -> None:
    _a, b = clusters
    forgetful = Cluster(copy.deepcopy(b.inventory), b.workdir)
    data = forgetful.inventory["mgmt"].setdefault("data", {})
    for key in ("dhcp_range", "dns_listen_address"):
        data.pop(key, None)
    result = forgetful.pyinfra(B, "-y", "deploys/delete.py", "-vvv")
    out = text(result)
    assert "Traceback" not in out
    assert f"released the DHCP lease of {mac_for('ow-b1')} (10.10.5.63)" in out, out[-4000:]
    assert mac_for("ow-b1") not in b.ssh(b.inventory["mgmt"]["name"], f"cat {HOSTSFILE}")
