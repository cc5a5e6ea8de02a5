"""Clone XML, converge plans, power and delete plans: pure functions, rendered commands, no host."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from operations.util.capacity import capacity_row, refusal_message
from operations.util.clone_plan import build_plans, clone_plan
from operations.util.converge_plan import converge_plan
from operations.util.delete_plan import delete_plan
from operations.util.domain_source import recorded_digest, with_source
from operations.util.domain_xml import CloneError, clone_xml, plan_disks, xml_covers
from operations.util.power_plan import power_plan
from operations.util.storage_ownership import owned_volumes
from tests.unit.command_text import rendered
from tests.unit.fact_builders import (
    BASE_XML,
    GIB,
    URI,
    built_domain,
    built_domain_data,
    host_data,
    host_state,
    typed,
    typed_domain,
    typed_domains,
)
from tests.unit.vmspec_builders import kvmhost01 as spec

# --- clone XML ------------------------------------------------------------------------------------


def test_clone_xml_sets_identity_resources_and_disks() -> None:
    vm = spec()
    disks = plan_disks(vm, BASE_XML, "/data01/primary")
    root = ET.fromstring(clone_xml(vm, BASE_XML, disks))
    assert root.findtext("name") == "kvmhost01"
    assert root.find("uuid") is None  # libvirt assigns a fresh one
    assert root.find("memory").text == str(4 * GIB) and root.find("memory").get("unit") == "KiB"
    assert root.find("currentMemory").text == str(2 * GIB)
    assert root.find("vcpu").text == "2"
    disks_xml = root.findall("./devices/disk")
    assert [
        (d.get("device"), d.find("source").get("file"), d.find("target").get("dev")) for d in disks_xml
    ] == [
        ("disk", "/data01/primary/kvmhost01-vda.img", "vda"),
        ("disk", "/data01/primary/kvmhost01-vdb.img", "vdb"),
        ("cdrom", "/secondary/CentOS-7-x86_64-Minimal-1908.iso", "hdc"),
    ]
    macs = [i.find("mac") for i in root.findall("./devices/interface")]
    assert macs[0].get("address") == vm.mac
    assert macs[1] is None  # libvirt generates a fresh MAC for further NICs


def test_clone_does_not_carry_the_base_source_digest() -> None:
    base = with_source(BASE_XML, "sha256:" + "0" * 64)
    vm = spec()
    root = ET.fromstring(clone_xml(vm, base, plan_disks(vm, base, "/data01/primary")))
    assert recorded_digest(base) == "sha256:" + "0" * 64
    assert root.find("metadata") is None


def test_clone_gets_its_own_console_log_file() -> None:
    base = BASE_XML.replace(
        "</devices>",
        "<serial type='file'><source path='/var/log/libvirt/qemu/centos7-console.log'/>"
        "<target port='0'/></serial>"
        "<console type='pty'><log file='/var/log/centos7.log' append='on'/></console>"
        "<serial type='file'><source path='/var/log/centos70-other.log'/></serial></devices>",
    )
    vm = spec()
    root = ET.fromstring(clone_xml(vm, base, plan_disks(vm, base, "/data01/primary")))
    assert [source.get("path") for source in root.findall("./devices/serial/source")] == [
        "/var/log/libvirt/qemu/kvmhost01-console.log",
        "/var/log/centos70-other.log",  # another domain's name prefix is not the base's name
    ]
    assert [log.get("file") for log in root.findall("./devices/console/log")] == ["/var/log/kvmhost01.log"]


def test_linked_clone_is_a_qcow2_overlay_on_the_base() -> None:
    vm = spec(clone="linked", num_disks=0)
    disks = plan_disks(vm, BASE_XML, "/data01/primary/")
    assert [(d.path, d.format, d.source.path if d.source else None) for d in disks] == [
        ("/data01/primary/kvmhost01-vda.qcow2", "qcow2", "/secondary/centos7-vda.img")
    ]
    root = ET.fromstring(clone_xml(vm, BASE_XML, disks))
    vda = root.find("./devices/disk")
    assert vda.find("driver").get("type") == "qcow2"
    assert vda.find("backingStore") is None


def test_clone_refuses_unknown_formats_and_missing_disks() -> None:
    with pytest.raises(CloneError, match="only raw or qcow2"):
        plan_disks(
            spec(),
            BASE_XML.replace(
                "type='raw'/>\n      <source file='/secondary/centos7",
                "type='vmdk'/>\n      <source file='/secondary/centos7",
            ),
            "/p",
        )
    with pytest.raises(CloneError, match="cannot be parsed"):
        plan_disks(spec(), "<domain", "/p")


def test_clone_plan_is_one_command_with_xml_on_stdin() -> None:
    plan = clone_plan(spec(), host_state(), URI)
    command = rendered(plan.command)
    assert plan.stdin is not None and "<name>kvmhost01</name>" in plan.stdin
    assert "cp --sparse=always -- /secondary/centos7-vda.img ./kvmhost01-vda.img" in command
    assert "truncate -s 10G -- ./kvmhost01-vdb.img" in command
    assert "virsh -q -c qemu:///system define /dev/stdin" in command
    assert "refusing to overwrite" in command and "trap cleanup EXIT" in command
    assert "; else cleanup; trap - EXIT; exit 1 ; fi" in command  # a failed step cleans up
    assert "setmem" not in command and "setvcpus" not in command  # resources are in the XML
    assert plan.summary().startswith(
        "kvmhost01: define from centos7 with 2 vCPU(s), memory 2 GiB (max 4 GiB)"
    )


def test_clone_plan_linked_uses_qemu_img_overlay() -> None:
    command = rendered(clone_plan(spec(clone="linked", num_disks=0), host_state(), URI).command)
    assert (
        "qemu-img create -q -f qcow2 -F raw -b /secondary/centos7-vda.img ./kvmhost01-vda.qcow2"
    ) in command


def test_clone_plan_quotes_every_value() -> None:
    plan = clone_plan(spec(name="vm;rm"), host_state(), "qemu:///system?x=$(id)")
    command = rendered(plan.command)
    assert "'/data01/primary/vm;rm-vda.img'" in command
    assert "'qemu:///system?x=$(id)'" in command


def test_clone_plan_reports_missing_base_or_pool_without_raising() -> None:
    assert "source domain rocky9 is not defined" in clone_plan(spec(srcvm="rocky9"), host_state(), URI).error
    assert "storage pool fast is not defined" in clone_plan(spec(pool="fast"), host_state(), URI).error


def test_clone_of_a_running_base_is_noted() -> None:
    snap = host_data()
    snap["domains"]["centos7"]["state"] = "running"
    assert "copied mid-write" in clone_plan(spec(), typed(snap), URI).notes[0]


def test_autostart_on_clone() -> None:
    assert "autostart kvmhost01" in rendered(clone_plan(spec(autostart=True), host_state(), URI).command)


# --- converge -------------------------------------------------------------------------------------


def test_matching_domain_is_up_to_date() -> None:
    plans = build_plans([spec()], host_state({"kvmhost01": built_domain()}), URI)
    assert [p.changes for p in plans] == [False]
    assert plans[0].summary() == "kvmhost01: up to date"


def test_shut_off_domain_changes_config_only() -> None:
    plan = converge_plan(
        spec(memory_gib=3, max_memory_gib=6, vcpus=4), host_state({"kvmhost01": built_domain()}), URI
    )
    command = rendered(plan.command)
    assert command == (
        "virsh -q -c qemu:///system setmaxmem kvmhost01 6291456 --config && "
        "virsh -q -c qemu:///system setmem kvmhost01 3145728 --config && "
        "virsh -q -c qemu:///system setvcpus kvmhost01 4 --maximum --config && "
        "virsh -q -c qemu:///system setvcpus kvmhost01 4 --config"
    )
    assert "--live" not in command


def test_shrinking_sets_current_before_max() -> None:
    plan = converge_plan(
        spec(memory_gib=1, max_memory_gib=1, vcpus=1), host_state({"kvmhost01": built_domain()}), URI
    )
    command = rendered(plan.command)
    assert command.index("setmem kvmhost01 1048576 --config") < command.index("setmaxmem kvmhost01 1048576")
    assert command.index("setvcpus kvmhost01 1 --config") < command.index("setvcpus kvmhost01 1 --maximum")


def test_running_domain_live_memory_increase_up_to_max() -> None:
    plan = converge_plan(spec(memory_gib=3), host_state({"kvmhost01": built_domain("running")}), URI)
    command = rendered(plan.command)
    assert "setmem kvmhost01 3145728 --config" in command
    assert "setmem kvmhost01 3145728 --live" in command
    assert plan.notes == []


def test_running_domain_max_memory_takes_effect_at_next_boot() -> None:
    plan = converge_plan(
        spec(memory_gib=6, max_memory_gib=8), host_state({"kvmhost01": built_domain("running")}), URI
    )
    command = rendered(plan.command)
    assert "setmaxmem kvmhost01 8388608 --config" in command
    assert "--live" not in command
    assert any("takes effect at next boot" in n for n in plan.notes)


def test_live_balloon_drift_is_reported_not_chased() -> None:
    # Without a guest balloon driver the live value never reaches the target: re-runs must not repeat setmem.
    domain = built_domain("running", memory_kib=4 * GIB)
    plan = converge_plan(spec(), host_state({"kvmhost01": domain}), URI)
    assert plan.command is None
    assert plan.notes == ["running with 4 GiB of memory (balloon), configured 2 GiB"]


def test_vcpu_decrease_on_running_domain_waits_for_reboot() -> None:
    plan = converge_plan(spec(vcpus=1), host_state({"kvmhost01": built_domain("running")}), URI)
    assert "--live" not in rendered(plan.command)
    assert any("vCPUs 2 -> 1 takes effect at next boot" in n for n in plan.notes)


def test_missing_data_disk_is_added_live_and_extra_is_reported() -> None:
    plan = converge_plan(spec(num_disks=2), host_state({"kvmhost01": built_domain("running")}), URI)
    command = rendered(plan.command)
    assert "truncate -s 10G -- ./kvmhost01-vdc.img" in command
    assert (
        "attach-disk kvmhost01 /data01/primary/kvmhost01-vdc.img vdc --targetbus virtio "
        "--subdriver raw --config --live"
    ) in command
    assert command.startswith("( umask 077;") and "else cleanup;" in command  # no half-added disk
    fewer = converge_plan(spec(num_disks=0), host_state({"kvmhost01": built_domain()}), URI)
    assert fewer.command is None
    assert fewer.notes == ["has data disk(s) vdb beyond numDisks 0: not removed"]


def test_disk_size_difference_is_reported_not_resized() -> None:
    volumes = {
        "default": {
            "kvmhost01-vdb.img": {"path": "/data01/primary/kvmhost01-vdb.img", "capacity": 5 * 1024**3}
        }
    }
    plan = converge_plan(spec(), host_state({"kvmhost01": built_domain()}, volumes), URI)
    assert plan.command is None
    assert plan.notes == ["data disk vdb is 5 GiB, manifest says 10 GiB: not resized"]


def test_autostart_and_mac_drift() -> None:
    domain = built_domain_data(interfaces=[{"mac": "52:54:00:aa:bb:cc"}])
    domain["config"]["interfaces"] = [{"mac": "52:54:00:aa:bb:cc"}]
    plan = converge_plan(spec(autostart=True), host_state({"kvmhost01": domain}), URI)
    assert rendered(plan.command) == "virsh -q -c qemu:///system autostart kvmhost01"
    assert "DHCP reservation will not match" in plan.notes[0]


def test_resize_only_reports_missing_domains() -> None:
    (plan,) = build_plans([spec()], host_state(), URI, clone=False)
    assert plan.command is None and "not defined on this host" in plan.notes[0]


# --- power ---------------------------------------------------------------------------------------


def test_power_start_and_noop() -> None:
    domains = typed_domains({"a": {"state": "shut off"}, "b": {"state": "running"}, "c": {"state": "paused"}})
    plan = power_plan(["a", "b", "c", "gone"], domains, True, URI)
    assert rendered(plan.command) == (
        "failed=0; for try in 1 2; do if virsh -q -c qemu:///system start a ; then st=0; break; "
        'else st=$?; fi; [ "$try" = 2 ] || sleep 1; done; (exit "$st") '
        "|| { s=$?; echo 'kvm-qemu: start of a failed' \"(exit $s)\" >&2; failed=1; }; "
        "virsh -q -c qemu:///system resume c "
        "|| { s=$?; echo 'kvm-qemu: resume of c failed' \"(exit $s)\" >&2; failed=1; }; "
        '(exit "$failed")'
    )
    assert plan.actions == ["start a", "resume c"]
    assert power_plan(["b"], domains, True, URI) is None
    assert power_plan(["a"], domains, False, URI) is None


def test_power_start_of_one_vm_is_one_plain_call() -> None:
    plan = power_plan(["a"], typed_domains({"a": {"state": "shut off"}}), True, URI, step_timeout=7)
    assert rendered(plan.command) == (
        "for try in 1 2; do if virsh -q -c qemu:///system start a ; then st=0; break; "
        'else st=$?; fi; [ "$try" = 2 ] || sleep 1; done; (exit "$st")'
    )
    assert plan.command.get_raw_value().startswith("for try in 1 2; do if { timeout -k 5 7 virsh -q -c")


def test_power_start_runs_each_vm_bounded_one_after_another() -> None:
    names = ["a", "b", "c", "d"]
    plan = power_plan(
        names, typed_domains({n: {"state": "shut off"} for n in names}), True, URI, step_timeout=7
    )
    raw = plan.command.get_raw_value()
    assert raw.count("timeout -k 5 7 virsh -q -c") == raw.count("virsh -q -c") == 4
    starts = [raw.index(f"start {n} ") for n in names]
    assert starts == sorted(starts) and "&" not in raw.replace(">&2", "")  # nothing in the background
    assert raw.endswith('(exit "$failed")')
    # the controller waits for the four bounded steps one after another, each tried twice a second apart
    assert plan.limit == 8 * (7 + 5) + 4 + 30


def test_power_start_quotes_every_vm_name() -> None:
    names = ["a b", "x'y"]
    plan = power_plan(names, typed_domains({n: {"state": "shut off"} for n in names}), True, URI)
    raw = plan.command.get_raw_value()
    assert "start 'a b' " in raw and "start 'x'\"'\"'y' " in raw
    assert "'kvm-qemu: start of a b failed'" in raw and "'kvm-qemu: start of x'\"'\"'y failed'" in raw


def test_power_start_one_failure_fails_the_host_naming_it_and_the_others_start(tmp_path: Path) -> None:
    """The command itself, run by sh with a virsh that fails to start b: a, c and d still start."""
    (tmp_path / "virsh").write_text(
        '#!/bin/sh\nfor last; do :; done\necho "$last" >> "$(dirname "$0")/started"\n'
        '[ "$last" = b ] && { echo "error: Failed to start domain \'b\'" >&2; exit 1; }\nexit 0\n'
    )
    (tmp_path / "virsh").chmod(0o755)
    names = ["a", "b", "c", "d"]
    plan = power_plan(
        names, typed_domains({n: {"state": "shut off"} for n in names}), True, URI, step_timeout=7
    )
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", "-c", plan.command.get_raw_value()], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "kvm-qemu: start of b failed (exit 1)" in result.stderr
    assert "start of a failed" not in result.stderr and "start of c failed" not in result.stderr
    assert (tmp_path / "started").read_text().split() == ["a", "b", "b", "c", "d"]  # b is tried twice


def test_power_start_takes_a_second_try_when_the_tap_name_was_taken(tmp_path: Path) -> None:
    """Two libvirtds in one network namespace may take the same free tap name at the same instant."""
    (tmp_path / "virsh").write_text(
        '#!/bin/sh\nif [ ! -e "$(dirname "$0")/tried" ]; then : > "$(dirname "$0")/tried"; '
        'echo "error: Unable to create tap device vnet0: Device or resource busy" >&2; exit 1; fi\nexit 0\n'
    )
    (tmp_path / "virsh").chmod(0o755)
    plan = power_plan(["a"], typed_domains({"a": {"state": "shut off"}}), True, URI, step_timeout=7)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", "-c", plan.command.get_raw_value()], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_power_stop_is_graceful_with_timeout_or_forced() -> None:
    domains = typed_domains({"a": {"state": "running"}, "b": {"state": "running"}})
    graceful = rendered(power_plan(["a", "b"], domains, False, URI, timeout=7).command)
    assert 'shutdown -- "$n"' in graceful and "+ 7 ))" in graceful and 'destroy -- "$n"' in graceful
    assert "for n in a b ;" in graceful
    forced = rendered(power_plan(["a"], domains, False, URI, force=True).command)
    assert forced == "virsh -q -c qemu:///system destroy a"


# --- delete --------------------------------------------------------------------------------------


def test_delete_removes_only_owned_volumes() -> None:
    domain = built_domain_data("running")
    domain["disks"].append({"target": "vdd", "device": "disk", "path": "/srv/elsewhere/kvmhost01-vdd.img"})
    domain["disks"].append({"target": "vde", "device": "disk", "path": "/data01/primary/shared-data.img"})
    plan = delete_plan("kvmhost01", host_state({"kvmhost01": domain}), URI)
    command = rendered(plan.command)
    assert "&& virsh -q -c qemu:///system destroy kvmhost01 && " in command
    assert "undefine --nvram --managed-save --snapshots-metadata --checkpoints-metadata kvmhost01" in command
    assert "pool-refresh default" in command
    assert "rm -f -- /data01/primary/kvmhost01-vda.img /data01/primary/kvmhost01-vdb.img" in command
    assert "CentOS" not in command and "centos7-vda" not in command
    assert "elsewhere" not in command and "shared-data" not in command
    assert any("not in a storage pool" in n for n in plan.notes)
    assert any("not named after kvmhost01" in n for n in plan.notes)
    assert any("(cdrom)" in n for n in plan.notes)


def test_delete_linked_clone_keeps_the_base() -> None:
    domain = built_domain_data()
    overlay = {
        "target": "vda",
        "device": "disk",
        "path": "/data01/primary/kvmhost01-vda.qcow2",
        "backing": "/secondary/centos7-vda.img",
    }
    domain["disks"] = domain["config"]["disks"] = [overlay]
    owned, _ = owned_volumes(
        "kvmhost01", typed_domain(domain, "kvmhost01"), host_state({"kvmhost01": domain})
    )
    assert owned == [("default", "kvmhost01-vda.qcow2")]


def test_delete_never_removes_a_backing_file_of_another_volume() -> None:
    volumes = {
        "default": {
            "other-vda.qcow2": {
                "path": "/data01/primary/other-vda.qcow2",
                "backing": "/data01/primary/kvmhost01-vda.img",
            }
        }
    }
    owned, kept = owned_volumes(
        "kvmhost01", built_domain(), host_state({"kvmhost01": built_domain()}, volumes)
    )
    assert ("default", "kvmhost01-vda.img") not in owned
    assert any("backing file of another volume" in k for k in kept)


def test_delete_keep_disks_and_absent_domain() -> None:
    plan = delete_plan("kvmhost01", host_state({"kvmhost01": built_domain()}), URI, keep_disks=True)
    command = rendered(plan.command)
    assert "rm -f" not in command and "undefine" in command
    assert delete_plan("kvmhost99", host_state(), URI) is None


def test_delete_name_prefix_is_not_a_match() -> None:
    # kvmhost01 must not claim kvmhost010's files (the original grep matched substrings).
    domain = built_domain_data()
    domain["config"]["disks"] = domain["disks"] = [
        {"target": "vda", "device": "disk", "path": "/data01/primary/kvmhost010-vda.img"}
    ]
    owned, _ = owned_volumes("kvmhost01", typed_domain(domain, "kvmhost01"), host_state())
    assert owned == []


# --- define-from-file, capacity -------------------------------------------------------------------


def test_xml_covers_ignores_libvirt_defaults() -> None:
    given = "<domain type='qemu'><name>x</name><memory unit='KiB'>1024</memory></domain>"
    defined = (
        "<domain type='qemu' id='3'><name>x</name><uuid>u</uuid><memory unit='KiB'>1024</memory>"
        "<devices/></domain>"
    )
    assert xml_covers(given, defined)
    assert not xml_covers(given.replace("1024", "2048"), defined)


def test_capacity_counts_manifest_and_other_domains_but_not_bases() -> None:
    data = host_data({"other": {"vcpus": 2, "memory_kib": 4 * GIB, "disks": []}})
    data["volumes"] = {
        "secondary": {"centos7-vda.img": {"path": "/secondary/centos7-vda.img", "allocation": 1024**3}}
    }
    snap = typed(data)
    row = capacity_row(
        "sm-01", [spec(), spec(name="b", clone="linked")], snap, vcpu_ratio=2.0, memory_ratio=2.0
    )
    assert (row.vcpus, row.memory_kib) == (6, 8 * GIB)
    assert row.disk_needs == {"default": 1024**3}
    assert row.problems == ["6 vCPUs > 2 CPUs x 2"]
    assert capacity_row("sm-01", [spec()], snap, vcpu_ratio=4.0, memory_ratio=2.0).problems == []


def test_vcpu_and_memory_have_separate_ratios_with_documented_defaults() -> None:
    snap = typed({**host_data({}), "capacity": {"cpus": 2, "memory_kib": 8 * GIB}})
    eight = [spec(name=f"v{i}", vcpus=1, memory_gib=1) for i in range(8)]
    row = capacity_row("sm-01", eight, snap)  # defaults: vCPU 4.0, memory 1.0
    assert (row.vcpu_ratio, row.memory_ratio) == (4.0, 1.0) and row.problems == []
    nine = eight + [spec(name="v9", vcpus=1, memory_gib=1)]
    assert capacity_row("sm-01", nine, snap).problems == [
        "9 vCPUs > 2 CPUs x 4",
        "9.0 GiB memory > 8.0 GiB x 1",
    ]
    assert capacity_row("sm-01", nine, snap, vcpu_ratio=5.0, memory_ratio=1.2).problems == []


def test_refusal_table_lists_every_host_and_where_each_vm_would_fit() -> None:
    snap = typed({**host_data({}), "capacity": {"cpus": 2, "memory_kib": 8 * GIB}})
    refused = capacity_row("sm-01", [spec(name="big", vcpus=9, memory_gib=1), spec(name="small")], snap)
    roomy = capacity_row("sm-02", [spec(name="other", vcpus=1, memory_gib=1)], snap)
    full = capacity_row("sm-03", [spec(name="x", vcpus=8, memory_gib=1)], snap)
    message = refusal_message(refused, [full, roomy])
    lines = message.splitlines()
    assert lines[0] == "capacity preflight refused the build on sm-01 (nothing was changed on it):"
    assert lines[1].split() == ["host", "vCPUs", "limit", "memory", "GiB", "limit", "verdict"]
    assert [line.split()[0] for line in lines[2:5]] == ["sm-01", "sm-02", "sm-03"]
    assert "11 vCPUs > 2 CPUs x 4" in lines[2] and lines[3].endswith("ok")
    assert "big (9 vCPU, 1 GiB) would fit on: no other host" in message
    assert "small (2 vCPU, 2 GiB) would fit on: sm-02" in message
