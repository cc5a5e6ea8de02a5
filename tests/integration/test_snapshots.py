"""Snapshots on the sandbox: a full (raw) and a linked (qcow2) clone of the idle base, shut off.

--dry changes nothing -> the manifest's snapshot is created on both (0600 overlays, re-run changes
nothing) -> status lists it -> a write after the snapshot is undone by revert (disk content compared
with qemu-img, the VMs never boot) -> delete keeps the current data -> a running VM is refused ->
deleting a VM with snapshots leaves no file and no metadata, and the base is unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_workflows import BASE_DISK, IDLE_BASE, Cluster, idle_base_xml, totals

from sandbox import client

pytestmark = pytest.mark.integration

HOST = "sm-01"
POOL_DIR = "/data01/primary"
FULL, LINKED = "sn-full", "sn-linked"
SNAP = "before-upgrade"


def _spec(name: str, ip: str, clone: str) -> dict[str, Any]:
    return {
        "name": name,
        "hostname": f"{name}.sn.internal",
        "ipaddress": ip,
        "vcpus": 1,
        "memoryGb": 1,
        "maxMemoryGb": 1,
        "numDisks": 0,
        "diskSize": 0,
        "clone": clone,
        "srcvm": IDLE_BASE,
        "snapshots": [SNAP],
    }


MANIFEST = [
    {"host": HOST, "vmspecs": [_spec(FULL, "10.10.5.41", "full"), _spec(LINKED, "10.10.5.42", "linked")]},
]
ONLY_FULL = [{"host": HOST, "vmspecs": [MANIFEST[0]["vmspecs"][0]]}]


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    c = Cluster(sandbox_cluster, tmp_path_factory.mktemp("snapshots"))
    xml = idle_base_xml(c.virsh(HOST, "dumpxml", "--inactive", "centos7"))
    client.ssh(client.node_data(c.inventory, HOST), "virsh -q define /dev/stdin", stdin=xml)
    c.deploy(MANIFEST, "pools")
    c.deploy(MANIFEST, "build")
    yield c
    c.deploy(MANIFEST, "delete", expect_ok=False)
    for vm in (FULL, LINKED):
        c.ssh(HOST, f"virsh -q destroy {vm}; virsh -q undefine --snapshots-metadata {vm}", check=False)
        c.ssh(HOST, f"rm -f {POOL_DIR}/{vm}-*", check=False)
    c.ssh(HOST, f"virsh -q undefine {IDLE_BASE}", check=False)


def files(c: Cluster) -> list[str]:
    return c.files(HOST, "sn-*")


def snapshots(c: Cluster, vm: str) -> list[str]:
    return c.virsh(HOST, "snapshot-list", "--name", vm).split()


def disk(c: Cluster, vm: str) -> str:
    return c.virsh(HOST, "domblklist", vm).split()[1]


def same(c: Cluster, overlay: str, below: str) -> bool:
    """Whether the overlay reads exactly like the file below it (nothing written since the snapshot)."""
    out = c.ssh(HOST, f"qemu-img compare -q {overlay} {below}; echo rc=$?")
    return out.strip().endswith("rc=0")


def write(c: Cluster, path: str, pattern: str) -> None:
    c.ssh(HOST, f"qemu-io -f qcow2 -c 'write -P {pattern} 1M 64k' {path} >/dev/null")


def test_snapshot_lifecycle(cluster: Cluster) -> None:
    c = cluster
    base = c.ssh(HOST, client.content_checksum_command(BASE_DISK)).strip()
    built = files(c)
    assert built == [f"{POOL_DIR}/{FULL}-vda.img", f"{POOL_DIR}/{LINKED}-vda.qcow2"]

    # --dry changes nothing, for each action
    c.deploy(MANIFEST, "snapshot", flag="--dry")
    c.deploy(MANIFEST, "snapshot", f"snapshot={SNAP}", "snapshot_action=create", flag="--dry")
    assert files(c) == built and snapshots(c, FULL) == [] and snapshots(c, LINKED) == []

    # the manifest's snapshots are created on both clones, as private overlays
    c.deploy(MANIFEST, "snapshot")
    overlay = {vm: f"{POOL_DIR}/{vm}-vda@{SNAP}.qcow2" for vm in (FULL, LINKED)}
    for vm in (FULL, LINKED):
        assert snapshots(c, vm) == [SNAP]
        assert disk(c, vm) == overlay[vm]
        assert c.ssh(HOST, f"stat -c %a {overlay[vm]}").strip() == "600"
    assert totals(c.deploy(MANIFEST, "snapshot"))[1:3] == ["-", "-"]  # nothing to change
    status = c.deploy(MANIFEST, "status")
    rows = [line for line in (status.stdout + status.stderr).splitlines() if "shut off" in line]
    assert len(rows) == 2 and all(f"{SNAP}*" in row for row in rows), rows

    # revert throws away a write made after the snapshot (--dry does not)
    below = {FULL: f"{POOL_DIR}/{FULL}-vda.img", LINKED: f"{POOL_DIR}/{LINKED}-vda.qcow2"}
    for vm in (FULL, LINKED):
        write(c, overlay[vm], "0xab")
        assert not same(c, overlay[vm], below[vm])
    revert = (f"snapshot={SNAP}", "snapshot_action=revert")
    c.deploy(MANIFEST, "snapshot", *revert, flag="--dry")
    assert not same(c, overlay[FULL], below[FULL])
    c.deploy(MANIFEST, "snapshot", *revert)
    for vm in (FULL, LINKED):
        assert same(c, overlay[vm], below[vm]), vm
        assert snapshots(c, vm) == [SNAP] and disk(c, vm) == overlay[vm]

    # a second snapshot stacks on the first; the first can then be neither reverted to nor deleted
    two = copy.deepcopy(MANIFEST)
    for spec in two[0]["vmspecs"]:
        spec["snapshots"].append("second")
    c.deploy(two, "snapshot")
    assert snapshots(c, LINKED) == [SNAP, "second"]
    refused = c.deploy(two, "snapshot", *revert, expect_ok=False)
    assert refused.returncode != 0 and "has later snapshot(s) second" in refused.stdout + refused.stderr

    # delete keeps the current data: written into the newest overlay, committed below it
    write(c, f"{POOL_DIR}/{FULL}-vda@second.qcow2", "0xcd")
    c.deploy(ONLY_FULL, "snapshot", "snapshot=second", "snapshot_action=delete")
    assert snapshots(c, FULL) == [SNAP] and disk(c, FULL) == overlay[FULL]
    assert f"{POOL_DIR}/{FULL}-vda@second.qcow2" not in files(c)
    c.ssh(HOST, f"qemu-io -r -f qcow2 -c 'read -P 0xcd 1M 64k' {overlay[FULL]} | grep -q 'read 65536'")
    delete = (f"snapshot={SNAP}", "snapshot_action=delete")
    c.deploy(ONLY_FULL, "snapshot", *delete, flag="--dry")
    assert snapshots(c, FULL) == [SNAP] and disk(c, FULL) == overlay[FULL] and overlay[FULL] in files(c)
    c.deploy(ONLY_FULL, "snapshot", *delete)
    assert snapshots(c, FULL) == [] and disk(c, FULL) == below[FULL]
    c.ssh(HOST, f"qemu-io -r -f raw -c 'read -P 0xcd 1M 64k' {below[FULL]} | grep -q 'read 65536'")

    # a running VM is refused and left alone
    c.virsh(HOST, "start", FULL)
    try:
        running = c.deploy(MANIFEST, "snapshot", expect_ok=False)
        assert running.returncode != 0 and "offline only" in running.stdout + running.stderr
        assert snapshots(c, FULL) == []
    finally:
        c.virsh(HOST, "destroy", FULL)

    # deleting the VMs (the linked one still has two snapshots) leaves nothing, and the base is intact
    assert snapshots(c, LINKED) == [SNAP, "second"]
    c.deploy(MANIFEST, "delete")
    assert LINKED not in c.domains(HOST)
    assert files(c) == []
    left = c.ssh(HOST, "find /var/lib/libvirt/qemu/snapshot -path '*sn-*' -type f 2>/dev/null || true")
    assert left.split() == []
    assert c.ssh(HOST, client.content_checksum_command(BASE_DISK)).strip() == base
