"""Moves and builds that must not duplicate or lose a VM, on the sandbox.

Build under ``--limit`` never defines a VM a second time.

A VM built on sm-02 and then moved to sm-01 in the manifest may still exist on sm-02: a build limited
to sm-01 does not read sm-02, so it must not clone the VM on sm-01 (the same MAC and address twice).
It is refused, naming sm-02 and how to proceed, with or without the management node in the limit
(its reservation of the VM is a record of it). A VM no readable host and no reservation knows of is
provably new and is built.

An offline move of a VM that was started after the move was planned (during its disk copy) stops
right before the migration: the VM keeps running on its host with its disk, and is not defined on
the destination; once shut off, the same command moves it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from operations.util.placement import Move, Target, move_command
from sandbox import client
from tests.integration.test_workflows import IDLE_BASE, Cluster, idle_base_xml

pytestmark = pytest.mark.integration

VM = {
    "name": "lm-vm01",
    "hostname": "lm-vm01.wf.internal",
    "ipaddress": "10.10.5.71",
    "vcpus": 1,
    "memoryGb": 1,
    "maxMemoryGb": 1,
    "numDisks": 0,
    "diskSize": 0,
    "clone": "linked",
    "srcvm": IDLE_BASE,
}
STARTED = {**VM, "name": "lm-vm03", "hostname": "lm-vm03.wf.internal", "ipaddress": "10.10.5.73"}
NEW = {**VM, "name": "lm-vm02", "hostname": "lm-vm02.wf.internal", "ipaddress": "10.10.5.72"}
HOSTS = ("sm-01", "sm-02")


def manifest(**where: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"host": h, "vmspecs": copy.deepcopy(where.get(h.replace("-", "_"), []))} for h in HOSTS]


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(sandbox_cluster, tmp_path_factory.mktemp("limit"))
    idle = c.workdir / f"{IDLE_BASE}.xml"
    idle.write_text(idle_base_xml(c.virsh("sm-01", "dumpxml", "--inactive", "centos7")))
    for h in HOSTS:
        client.ssh(client.node_data(c.inventory, h), "virsh -q define /dev/stdin", stdin=idle.read_text())
    yield c
    c.deploy(manifest(sm_01=[VM, NEW, STARTED]), "delete", expect_ok=False)
    c.deploy(manifest(sm_02=[VM, NEW, STARTED]), "delete", expect_ok=False)
    for h in HOSTS:
        for vm in ("lm-vm01", "lm-vm02", "lm-vm03"):
            c.ssh(h, f"virsh -q destroy {vm}; virsh -q undefine --nvram {vm}", check=False)
        c.ssh(h, "rm -f /data01/primary/lm-vm0* /secondary/lm-vm0*", check=False)
        c.ssh(h, f"virsh -q undefine {IDLE_BASE}", check=False)


def limited_build(c: Cluster, spec: list[dict[str, Any]], *limit: str) -> Any:
    flags = [f"--limit={name}" for name in limit]
    return c.pyinfra(spec, "-y", *flags, "deploys/build.py", expect_ok=False)


def test_a_vm_defined_on_a_host_outside_limit_is_refused_not_cloned_again(cluster: Cluster) -> None:
    cluster.deploy(manifest(), "pools")
    cluster.deploy(manifest(sm_02=[VM]), "build")
    assert "lm-vm01" in cluster.domains("sm-02")
    moved = manifest(sm_01=[VM])
    for limit in (["sm-01"], ["sm-01", cluster.inventory["mgmt"]["name"]]):
        result = limited_build(cluster, moved, *limit)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert "lm-vm01: not built on sm-01: it may already be defined on sm-02" in output, output[-3000:]
        assert "run without --limit" in output
        assert "lm-vm01" not in cluster.domains("sm-01")
        assert "lm-vm01" in cluster.domains("sm-02")


def test_a_provably_new_vm_is_built_with_the_management_node_in_the_limit(cluster: Cluster) -> None:
    cluster.deploy(manifest(), "pools")
    result = limited_build(
        cluster, manifest(sm_01=[NEW], sm_02=[VM]), "sm-01", cluster.inventory["mgmt"]["name"]
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "lm-vm02" in cluster.domains("sm-01") and "lm-vm02" not in cluster.domains("sm-02")



def test_an_offline_move_of_a_vm_started_meanwhile_keeps_it_running_with_its_disk(cluster: Cluster) -> None:
    cluster.deploy(manifest(), "pools")
    cluster.deploy(manifest(sm_01=[STARTED]), "build")
    disk = "/data01/primary/lm-vm03-vda.qcow2"
    assert cluster.ssh("sm-01", f"test -f {disk} && echo yes").strip() == "yes"
    cluster.virsh("sm-01", "start", "lm-vm03")  # planned while shut off, started before the migration
    move = Move("lm-vm03", "sm-01", "sm-02", live=False, local_disks=(disk,))
    target = Target(str(cluster.inventory["hosts"]["sm-02"]["migration_uri"]))
    command = move_command(move, target, timeout=60, migrate_timeout=300).get_raw_value()
    try:
        out = cluster.ssh("sm-01", f"{{ {command} ; }} 2>&1; echo rc=$?", check=False)
        print(out)
        assert out.strip().splitlines()[-1] != "rc=0", out
        assert "lm-vm03 is no longer shut off (now: running)" in out, out
        assert cluster.domains("sm-01").get("lm-vm03") == "running"
        assert cluster.ssh("sm-01", f"test -f {disk} && echo yes").strip() == "yes"
        assert "lm-vm03" not in cluster.domains("sm-02")
        # Shut off and unchanged since the copy: the same command moves it (the real copy does not
        # change what the disk's stat shows) and removes the source's copy.
        cluster.virsh("sm-01", "destroy", "lm-vm03")
        cluster.ssh("sm-02", f"rm -f {disk}")
        out = cluster.ssh("sm-01", f"{{ {command} ; }} 2>&1; echo rc=$?", check=False)
        assert out.strip().splitlines()[-1] == "rc=0", out
        assert cluster.domains("sm-02").get("lm-vm03") == "shut off"
        assert "lm-vm03" not in cluster.domains("sm-01")
        assert cluster.ssh("sm-01", f"test -e {disk} || echo gone").strip() == "gone"
        assert cluster.ssh("sm-02", f"test -f {disk} && echo yes").strip() == "yes"
    finally:
        cluster.ssh("sm-01", "virsh -q destroy lm-vm03", check=False)
        cluster.ssh("sm-02", f"virsh -q undefine lm-vm03; rm -f {disk}", check=False)
