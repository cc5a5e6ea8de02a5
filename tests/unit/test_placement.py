"""Placement planning: moves from the hosts' libvirt state and the manifest, refusals, drain, commands."""

from __future__ import annotations

import copy
from typing import Any

from operations.util.placement import (
    Move,
    Target,
    drained_manifest,
    move_command,
    plan_drain,
    plan_placement,
)
from tests.unit.fact_builders import GIB_KIB, SHARED, states
from tests.unit.fact_builders import cluster_data as cluster
from tests.unit.fact_builders import placed_domain_data as domain
from tests.unit.fact_builders import placed_host_data as host
from tests.unit.vmspec_builders import placed as spec

SHARED_VM = domain([("/secondary/vm1-vda.qcow2", "none")])
LOCAL_VM = domain([("/data01/primary/vm1-vda.img", None)])


def test_a_vm_the_manifest_moved_to_another_host_moves_live_with_its_shared_disk_by_reference() -> None:
    plan = plan_placement(
        {"sm-01": [], "sm-02": [spec("vm1")]},
        states(cluster(SHARED_VM, shared_files=["/secondary/vm1-vda.qcow2"])),
        SHARED,
    )
    assert plan.refusals == []
    assert plan.moves == [Move("vm1", "sm-01", "sm-02", True, ("/secondary/vm1-vda.qcow2",), ())]
    assert plan.arriving("sm-02") == {"vm1"} and plan.leaving("sm-01") == plan.moves
    assert (
        plan.moves[0].describe() == "vm1: sm-01 -> sm-02, live; disks: /secondary/vm1-vda.qcow2 by reference"
    )


def test_a_vm_on_its_manifest_host_does_not_move() -> None:
    plan = plan_placement({"sm-01": [spec("vm1")], "sm-02": []}, states(cluster(SHARED_VM)), SHARED)
    assert plan.moves == [] and plan.refusals == []


def test_live_move_command_is_one_virsh_migrate_with_the_migration_address() -> None:
    move = Move("vm1", "sm-01", "sm-02", True, ("/secondary/vm1-vda.qcow2",), ())
    command = move_command(
        move, Target("qemu+ssh://root@sm-02/system", "10.0.0.2"), timeout=60, migrate_timeout=600
    )
    assert command.get_raw_value() == (
        "{ timeout -k 5 600 virsh -q -c qemu:///system migrate --live --persistent --undefinesource "
        "--migrateuri tcp://10.0.0.2 vm1 qemu+ssh://root@sm-02/system || { rc=$?; if [ $rc -eq 124 ] || "
        "[ $rc -eq 137 ]; then echo 'kvm-qemu: timed out after 600 s: virsh migrate --live' >&2; fi; (exit $rc); }; }"
    )


def test_live_move_of_local_disks_copies_storage_then_removes_the_source_copy() -> None:
    move = Move("vm1", "sm-01", "sm-02", True, (), ("/data01/primary/vm1-vda.img",))
    text = move_command(
        move, Target("qemu+ssh://root@sm-02/system", unsafe=True), migrate_timeout=600
    ).get_raw_value()
    assert (
        "migrate --live --persistent --undefinesource --copy-storage-all --unsafe vm1 qemu+ssh://root@sm-02/system"
        in text
    )
    assert text.index("migrate --live") < text.index("rm -f -- /data01/primary/vm1-vda.img")
    assert " && " in text


def test_offline_move_streams_local_disks_sparse_over_ssh_then_migrates_the_definition() -> None:
    move = Move("vm1", "sm-01", "sm-02", False, (), ("/data01/primary/vm1-vda.img",), autostart=True)
    text = move_command(
        move, Target("qemu+ssh://root@127.0.1.2:2222/system?keyfile=/k"), migrate_timeout=900
    ).get_raw_value()
    copy_part = (
        "sh -c 'tar -C /data01/primary -cSf - -- vm1-vda.img | ssh -o BatchMode=yes -p 2222 -i /k "
        "-- root@127.0.1.2 '\"'\"'tar -C /data01/primary -xkpSf -'\"'\"''"
    )
    assert copy_part in text
    assert (
        "migrate --offline --persistent --undefinesource vm1 'qemu+ssh://root@127.0.1.2:2222/system?keyfile=/k'"
        in text
    )
    assert "autostart vm1" in text
    assert text.index(copy_part) < text.index("migrate --offline") < text.index("rm -f --")


def test_manifest_values_reach_the_shell_quoted() -> None:
    move = Move("vm1;reboot", "sm-01", "sm-02", True, (), ())
    text = move_command(move, Target("qemu+ssh://root@x/system")).get_raw_value()
    assert "'vm1;reboot'" in text


def test_a_shut_off_vm_moves_offline() -> None:
    vm = domain([("/secondary/vm1-vda.qcow2", None)], state="shut off")
    plan = plan_placement(
        {"sm-01": [], "sm-02": [spec("vm1")]},
        states(cluster(vm, shared_files=["/secondary/vm1-vda.qcow2"])),
        SHARED,
    )
    assert plan.refusals == [] and plan.moves[0].live is False  # the cache mode matters only live


def test_refusal_shared_disk_with_unsafe_cache_mode() -> None:
    vm = domain([("/secondary/vm1-vda.qcow2", "writeback")])
    plan = plan_placement(
        {"sm-01": [], "sm-02": [spec("vm1")]},
        states(cluster(vm, shared_files=["/secondary/vm1-vda.qcow2"])),
        SHARED,
    )
    assert plan.refusals == [
        "vm1 (sm-01 -> sm-02): disk /secondary/vm1-vda.qcow2 in shared storage uses cache=writeback: "
        "a live move needs cache=none or directsync"
    ]


def test_refusal_names_every_reason() -> None:
    hosts = cluster(domain([("/secondary/vm1-vda.qcow2", None), ("/data02/vm1-vdb.img", None)],
                               cpu="<cpu mode='host-passthrough'/>"))  # fmt: skip
    hosts["sm-02"]["capacity"].update(host_uuid="u1", cpu_model="EPYC", cpus=1, memory_kib=GIB_KIB // 2)
    del hosts["sm-02"]["domains"]["centos7"]
    plan = plan_placement({"sm-01": [], "sm-02": [spec("vm1", vcpus=8)]}, states(hosts), SHARED)
    reasons = "\n".join(plan.refusals)
    assert "sm-01 and sm-02 report the same host UUID u1" in reasons
    assert "sm-02 has no storage pool at /data02 (for /data02/vm1-vdb.img)" in reasons
    assert "shared disk /secondary/vm1-vda.qcow2 is not visible on sm-02" in reasons
    assert "base VM centos7 is not defined on sm-02" in reasons
    assert "cache=default" in reasons
    assert (
        "CPU mode host-passthrough needs the same host CPU: AMD qemu64 on sm-01, AMD EPYC on sm-02" in reasons
    )
    assert "capacity of sm-02: 1 vCPUs > 1 CPUs x 4" not in reasons  # the domain's live vCPUs count: 1
    assert "capacity of sm-02: 1.0 GiB memory > 0.5 GiB x 1" in reasons
    assert all(r.startswith("vm1 (sm-01 -> sm-02): ") for r in plan.refusals)


def test_refusal_local_disk_already_on_the_destination() -> None:
    hosts = cluster(LOCAL_VM)
    hosts["sm-02"]["files"]["/data01/primary/vm1-vda.img"] = {"kind": "file"}
    plan = plan_placement({"sm-01": [], "sm-02": [spec("vm1")]}, states(hosts), SHARED)
    assert plan.refusals == ["vm1 (sm-01 -> sm-02): sm-02 already has /data01/primary/vm1-vda.img"]


def test_a_vm_defined_on_two_other_hosts_is_refused_and_not_moved() -> None:
    hosts = cluster(SHARED_VM)
    hosts["sm-03"] = copy.deepcopy(hosts["sm-01"])
    plan = plan_placement({"sm-01": [], "sm-02": [spec("vm1")], "sm-03": []}, states(hosts), SHARED)
    assert plan.moves == [] and plan.refusals == ["vm1: defined on sm-01 and sm-03; resolve by hand"]


def test_an_unread_host_holds_a_missing_vm_back_on_its_host_not_a_clone() -> None:
    hosts: dict[str, Any] = {"sm-01": None, "sm-02": host({}, uuid="u2")}
    plan = plan_placement({"sm-01": [], "sm-02": [spec("vm1")]}, states(hosts), SHARED)
    assert plan.refusals == [] and plan.not_cloned("sm-02") == {"vm1"}
    assert plan.held == {
        "sm-02": [
            "vm1: not built on sm-02: it may already be defined on sm-01, which could not be read; the "
            "management node's DHCP reservations, which could prove it new, were not read"
        ]
    }


def test_drain_spreads_the_vms_within_capacity() -> None:
    vms = {f"vm{i}": domain([(f"/secondary/vm{i}-vda.qcow2", "none")], vcpus=1) for i in range(1, 4)}
    files = [f"/secondary/vm{i}-vda.qcow2" for i in range(1, 4)]
    hosts = {
        "sm-01": host({}, files, uuid="u1", memory=2),
        "sm-02": host(vms, files, uuid="u2"),
        "sm-03": host({}, files, uuid="u3", memory=2),
    }
    manifest = {"sm-01": [], "sm-02": [spec(f"vm{i}") for i in range(1, 4)], "sm-03": []}
    plan = plan_drain("sm-02", manifest, states(hosts), SHARED)
    assert plan.refusals == []
    assert sorted((m.vm, m.destination) for m in plan.moves) == [
        ("vm1", "sm-01"), ("vm2", "sm-03"), ("vm3", "sm-01"),
    ]  # fmt: skip


def test_drain_refuses_when_a_vm_fits_nowhere() -> None:
    vms = {f"vm{i}": domain([(f"/secondary/vm{i}-vda.qcow2", "none")]) for i in range(1, 4)}
    files = [f"/secondary/vm{i}-vda.qcow2" for i in range(1, 4)]
    hosts = {"sm-01": host({}, files, uuid="u1", memory=2), "sm-02": host(vms, files, uuid="u2")}
    plan = plan_drain(
        "sm-02", {"sm-01": [], "sm-02": [spec(f"vm{i}") for i in range(1, 4)]}, states(hosts), SHARED
    )
    assert [m.vm for m in plan.moves] == ["vm1", "vm2"]
    assert plan.refusals == ["vm3: fits on no other host: capacity of sm-01: 3.0 GiB memory > 2.0 GiB x 1"]


def test_drain_of_an_unknown_host_is_refused() -> None:
    assert plan_drain("sm-09", {"sm-01": []}, states({"sm-01": host({})})).refusals == [
        "sm-09 is not a hypervisor of the manifest"
    ]


def test_drained_manifest_moves_the_vmspec_objects_and_keeps_everything_else() -> None:
    data = [
        {"host": "sm-01", "ssh": {"ssh_port": 22}, "vmspecs": [{"name": "a"}]},
        {"host": "sm-02", "vmspecs": [{"name": "b", "memoryGb": 2}, {"name": "c"}]},
    ]
    moves = [Move("b", "sm-02", "sm-01", True)]
    assert drained_manifest(data, moves) == [
        {"host": "sm-01", "ssh": {"ssh_port": 22}, "vmspecs": [{"name": "a"}, {"name": "b", "memoryGb": 2}]},
        {"host": "sm-02", "vmspecs": [{"name": "c"}]},
    ]
    assert data[1]["vmspecs"][0] == {"name": "b", "memoryGb": 2}
