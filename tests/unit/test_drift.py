"""Cluster drift findings and the prune plan: pure functions over manifest + facts, literal expectations."""

from __future__ import annotations

from typing import Any

from deploys._status import status_lines
from inventories.manifest_model import mac_for
from operations.orphans import removal_command
from operations.util.drift import (
    Finding,
    PrunePlan,
    drift,
    find,
    prune_plan,
    recheck,
    report_lines,
    running_pools,
)
from tests.unit.fact_builders import BASE_DISK, GIB, states, typed, typed_domain
from tests.unit.fact_builders import drift_domain_data as domain
from tests.unit.fact_builders import drift_host_data as host_data
from tests.unit.fact_builders import drift_vm_data as vm
from tests.unit.vmspec_builders import vmspec as spec

SHARED = ("/secondary",)


PLACEMENT = {"sm-01": [spec("vm01", "10.10.5.11")], "sm-02": [spec("vm02", "10.10.5.12")]}


def reservation(vm_name: str, ip: str, mac: str | None = None) -> dict[str, dict[str, str]]:
    m = mac or mac_for(vm_name)
    return {m: {"mac": m, "ip": ip, "hostname": f"{vm_name}.example.internal", "short": vm_name}}


def reservations(*extra: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    result = {**reservation("vm01", "10.10.5.11"), **reservation("vm02", "10.10.5.12")}
    for e in extra:
        result.update(e)
    return result


def clean() -> dict[str, Any]:
    return {"sm-01": host_data({"vm01": vm("vm01")}), "sm-02": host_data({"vm02": vm("vm02")})}


STALE_MAC = "52:54:00:aa:bb:cc"
NAMED = "pool default: no domain {0} here; the manifest names {0}"


def test_a_converged_cluster_has_no_drift() -> None:
    findings = find(PLACEMENT, states(clean()), reservations(), SHARED, mgmt="mgmt01")
    assert findings == []
    assert report_lines(findings) == ["no drift: every domain, volume and reservation matches the manifest"]
    assert prune_plan(findings, reservations()).empty()


def test_every_kind_of_drift_is_found_and_only_own_orphans_are_prunable() -> None:
    hosts = clean()
    # resize drift on sm-01, a foreign domain and a VM on the wrong host on sm-02
    hosts["sm-01"]["domains"]["vm01"] = vm("vm01", vcpus=1)
    hosts["sm-01"]["files"].update(
        {
            "/data01/primary/old-vdb.img": {"kind": "file"},  # orphan owned volume
            "/data01/primary/notes.txt": {"kind": "file"},  # foreign file
            "/data01/primary/iso-vdb": {"kind": "directory"},  # named like a disk, not a plain file
        }
    )
    hosts["sm-02"] = host_data(
        {
            "foreign": domain("foreign", ["/data01/primary/foreign-vda.img"], mac="52:54:00:12:34:56"),
            "vm02": vm("vm02"),
            "vm03": vm("vm03"),
        }
    )
    placement = {**PLACEMENT, "sm-01": [*PLACEMENT["sm-01"], spec("vm03", "10.10.5.13")]}
    stale = reservation("gone", "10.10.5.99", STALE_MAC)
    held = reservation("foreign", "10.10.5.98", "52:54:00:12:34:56")
    leases = reservations(stale, held, reservation("vm03", "10.10.5.13"))
    findings = find(placement, states(hosts), leases, SHARED, mgmt="mgmt01")
    assert findings == [
        Finding("wrong-host", "vm03", "sm-02", "the manifest places it on sm-01"),
        Finding("unmanaged-domain", "foreign", "sm-02", "no manifest entry names it"),
        Finding("resources", "vm01", "sm-01", "vcpus 1, manifest 2"),
        Finding(
            "orphan-volume",
            "/data01/primary/old-vdb.img",
            "sm-01",
            "pool default: no domain old, unused",
            True,
        ),
        Finding(
            "reservation",
            "52:54:00:12:34:56",
            "mgmt01",
            "10.10.5.98 foreign.example.internal: no manifest VM has this MAC (domain foreign on sm-02 uses it)",
        ),
        Finding(
            "stale-reservation",
            STALE_MAC,
            "mgmt01",
            "10.10.5.99 gone.example.internal: no manifest VM, no domain on any host",
            True,
        ),
    ]
    assert prune_plan(findings, leases) == PrunePlan(
        volumes={"sm-01": ["/data01/primary/old-vdb.img"]},
        reservations=[
            {"mac": STALE_MAC, "ip": "10.10.5.99", "hostname": "gone.example.internal", "short": "gone"}
        ],
    )
    assert report_lines(findings)[:3] == [
        "drift: 1 wrong-host, 1 unmanaged-domain, 1 resources, 1 orphan-volume, 1 reservation, 1 stale-reservation",
        "  wrong-host: vm03 on sm-02: the manifest places it on sm-01",
        "  unmanaged-domain: foreign on sm-02: no manifest entry names it",
    ]
    assert report_lines(findings)[4] == (
        "  orphan-volume: /data01/primary/old-vdb.img on sm-01: pool default: no domain old, unused (prune removes it)"
    )


def test_a_vm_on_two_hosts_and_a_vm_defined_nowhere() -> None:
    hosts = clean()
    hosts["sm-01"]["domains"]["vm02"] = vm("vm02")
    del hosts["sm-02"]["domains"]["vm02"]
    hosts["sm-02"]["domains"]["vm01"] = vm("vm01")
    del hosts["sm-01"]["domains"]["vm01"]
    placement = {**PLACEMENT, "sm-02": [*PLACEMENT["sm-02"], spec("vm04", "10.10.5.14")]}
    hosts["sm-01"]["domains"]["vm04"] = vm("vm04")
    hosts["sm-02"]["domains"]["vm04"] = vm("vm04", vcpus=4)
    leases = reservations(reservation("vm04", "10.10.5.14"))
    findings = find(placement, states(hosts), leases, SHARED, mgmt="mgmt01")
    assert findings == [
        Finding("duplicate", "vm04", "", "defined on sm-01, sm-02; the manifest places it on sm-02"),
        Finding("wrong-host", "vm01", "sm-02", "the manifest places it on sm-01"),
        Finding("wrong-host", "vm02", "sm-01", "the manifest places it on sm-02"),
        Finding("resources", "vm04", "sm-02", "vcpus 4, manifest 2"),
        # the moved VMs' disks stay where they were: reported, never pruned (the manifest names them)
        Finding("orphan-volume", "/data01/primary/vm01-vda.img", "sm-01", NAMED.format("vm01")),
        Finding("orphan-volume", "/data01/primary/vm01-vdb.img", "sm-01", NAMED.format("vm01")),
        Finding("orphan-volume", "/data01/primary/vm02-vda.img", "sm-02", NAMED.format("vm02")),
        Finding("orphan-volume", "/data01/primary/vm02-vdb.img", "sm-02", NAMED.format("vm02")),
    ]
    assert prune_plan(findings, leases).empty()
    del hosts["sm-01"]["domains"]["vm02"]
    assert Finding("absent", "vm02", "sm-02", "defined on no host read") in find(
        placement, states(hosts), leases, SHARED, mgmt="mgmt01"
    )


def test_resources_report_memory_disks_and_mac() -> None:
    hosts = clean()
    changed = vm("vm01", mac="52:54:00:01:02:03")
    changed["config"]["memory_kib"] = 2 * GIB
    changed["config"]["max_memory_kib"] = 3 * GIB
    changed["config"]["disks"] = changed["config"]["disks"][:1]
    hosts["sm-01"]["domains"]["vm01"] = changed
    findings = find(PLACEMENT, states(hosts), None, SHARED)
    assert findings == [
        Finding(
            "resources",
            "vm01",
            "sm-01",
            "memory 2097152, manifest 1048576; max memory 3145728, manifest 2097152; data disks 0, manifest 1; "
            "mac 52:54:00:01:02:03, manifest " + mac_for("vm01"),
        )
    ]


def test_an_unread_host_proves_nothing() -> None:
    hosts: dict[str, Any] = clean()
    hosts["sm-01"]["files"]["/secondary/old-vda.img"] = {"kind": "file"}
    hosts["sm-02"] = None
    leases = reservations(reservation("gone", "10.10.5.99", STALE_MAC))
    findings = find(PLACEMENT, states(hosts), leases, SHARED, mgmt="mgmt01")
    assert findings == [
        Finding(
            "unread-host",
            "sm-02",
            "",
            "not read (unreachable, failed or outside --limit); nothing is concluded about it",
        ),
        Finding(
            "orphan-volume",
            "/secondary/old-vda.img",
            "sm-01",
            "shared storage, seen on sm-01: not provable, sm-02 not read",
        ),
        Finding(
            "stale-reservation",
            STALE_MAC,
            "mgmt01",
            "10.10.5.99 gone.example.internal: no manifest VM; not provable: sm-02 not read",
        ),
    ]
    assert prune_plan(findings, leases).empty()


def test_shared_storage_orphans_need_every_host() -> None:
    hosts = clean()
    for s in hosts.values():
        s["files"]["/secondary/old-vda.img"] = {"kind": "file"}
        s["files"]["/secondary/kept-vda.img"] = {"kind": "file"}
    # a linked clone on sm-02 whose overlay sits on kept-vda.img: in use, on that host only
    hosts["sm-02"]["domains"]["vm02"] = domain(
        "vm02",
        ["/data01/primary/vm02-vda.qcow2", "/data01/primary/vm02-vdb.img"],
        backing="/secondary/kept-vda.img",
    )
    findings = find(PLACEMENT, states(hosts), None, SHARED)
    assert findings == [
        Finding(
            "orphan-volume",
            "/secondary/old-vda.img",
            "sm-01",
            "shared storage, seen on sm-01, sm-02: no domain old, unused",
            True,
        ),
    ]
    # a domain named old on one host keeps the file on the share
    hosts["sm-02"]["domains"]["old"] = domain("old", ["/data01/primary/other.img"])
    assert [f for f in find(PLACEMENT, states(hosts), None, SHARED) if f.kind == "orphan-volume"] == []


def test_base_images_manifest_vms_and_in_use_files_are_never_prunable() -> None:
    hosts = clean()
    for s in hosts.values():
        del s["domains"]["centos7"]  # the base image then has no domain
    hosts["sm-01"]["files"].update(
        {
            "/data01/primary/vm02-vdb.img": {"kind": "file"},  # vm02 runs on sm-02; the manifest names it
            "/data01/primary/chain-vda.img": {"kind": "file"},  # backs another file
            "/data01/primary/top.qcow2": {"kind": "file", "backing": "/data01/primary/chain-vda.img"},
            "/data01/primary/link-vda.img": {"kind": "symlink"},
        }
    )
    findings = find(PLACEMENT, states(hosts), None, SHARED)
    assert findings == [
        Finding(
            "orphan-volume",
            "/data01/primary/vm02-vdb.img",
            "sm-01",
            "pool default: no domain vm02 here; the manifest names vm02",
        ),
        Finding(
            "orphan-volume",
            BASE_DISK,
            "sm-01",
            "shared storage, seen on sm-01, sm-02: base image of centos7; kept",
        ),
    ]
    assert prune_plan(findings, None).empty()


def test_recheck_keeps_what_became_used_and_the_command_refuses_links() -> None:
    data = host_data({"vm01": vm("vm01")}, {"/data01/primary/old-vdb.img": {"kind": "file"}})
    assert recheck(["/data01/primary/old-vdb.img"], typed(data)) == (["/data01/primary/old-vdb.img"], [])
    data["domains"]["thief"] = domain("thief", ["/data01/primary/old-vdb.img"])
    assert recheck(["/data01/primary/old-vdb.img", "/etc/passwd"], typed(data)) == (
        [],
        [
            "/data01/primary/old-vdb.img (disk of domain thief)",
            "/etc/passwd (not in a storage pool directory)",
        ],
    )
    data["domains"]["old"] = data["domains"].pop("thief")
    assert recheck(["/data01/primary/old-vdb.img"], typed(data))[1] == [
        "/data01/primary/old-vdb.img (domain old is defined)"
    ]
    assert running_pools(["/data01/primary/old-vdb.img"], typed(data)) == ["default"]
    text = removal_command(
        ["/data01/primary/o'ld-vdb.img"], ["default"], "qemu:///system", 60
    ).get_raw_value()
    assert text.startswith("{ for f in '/data01/primary/o'\"'\"'ld-vdb.img' ; do if [ -L \"$f\" ]")
    assert "rm -f -- '/data01/primary/o'\"'\"'ld-vdb.img'" in text
    assert "virsh -q -c qemu:///system pool-refresh default" in text


def test_status_lines_and_drift_share_one_comparison() -> None:
    vm01 = spec("vm01", "10.10.5.11")
    changed = vm("vm01", vcpus=3)
    assert drift(vm01, typed_domain(changed)) == [("vcpus", 3, 2)]
    assert drift(vm01, typed_domain(vm("vm01"))) == []
    lines = status_lines([vm01, spec("vm09", "10.10.5.19")], typed({"domains": {"vm01": changed}}))
    assert lines[1:] == [
        f"vm01                 shut off   3!      1 GiB      2 GiB      1      {mac_for('vm01')}  -",
        "vm09                 absent!   ",
    ]
