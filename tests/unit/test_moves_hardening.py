"""Moves that must not lose or duplicate data: a disk another VM needs deeper in its chain, a VM that may
exist on a hypervisor not read in this run, a VM started again during an offline move's copy, an IPv6
migration address."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyinfra.api import Config, Inventory, State

import deploys.placement as placement_deploy
from deploys.cluster_state import why_unread
from operations.util.placement import Move, Target, _ssh_words, move_command, plan_placement
from tests.unit.fact_builders import SHARED, cluster_data, placed_domain_data, placed_host_data, states
from tests.unit.vmspec_builders import placed as spec

PRIMARY = "/data01/primary"


# --- item 1: a move never removes a file another domain's chain still needs ----------------------------


def _golden_and_web() -> dict[str, Any]:
    """sm-01: golden (shut off), web = snapshot overlay -> linked clone -> golden's disk."""
    golden = placed_domain_data([(f"{PRIMARY}/golden-vda.qcow2", None)], state="shut off")
    web = placed_domain_data([(f"{PRIMARY}/web-vda@s1.qcow2", None)], state="shut off")
    web["disks"][0]["backing"] = f"{PRIMARY}/web-vda.qcow2"
    hosts = cluster_data(placed_domain_data([("/secondary/other.qcow2", None)]), on="sm-02")
    del hosts["sm-02"]["domains"]["vm1"]
    hosts["sm-01"]["domains"].update(golden=golden, web=web)
    hosts["sm-01"]["files"].update({
        f"{PRIMARY}/web-vda@s1.qcow2": {"kind": "file", "backing": f"{PRIMARY}/web-vda.qcow2"},
        f"{PRIMARY}/web-vda.qcow2": {"kind": "file", "backing": f"{PRIMARY}/golden-vda.qcow2"},
        f"{PRIMARY}/golden-vda.qcow2": {"kind": "file", "backing": None},
    })  # fmt: skip
    return hosts


def test_moving_a_base_that_a_snapshot_of_its_linked_clone_needs_is_refused_naming_that_domain() -> None:
    hosts = _golden_and_web()
    plan = plan_placement({"sm-01": [spec("web")], "sm-02": [spec("golden")]}, states(hosts), SHARED)
    assert [m.vm for m in plan.moves] == ["golden"]
    assert (
        f"golden (sm-01 -> sm-02): {PRIMARY}/golden-vda.qcow2 is still needed by web on sm-01 "
        "(backing file of domain web); the move would remove it" in plan.refusals
    ), plan.refusals


def test_the_persistent_definition_of_another_domain_counts_too() -> None:
    hosts = _golden_and_web()
    web = hosts["sm-01"]["domains"]["web"]
    web["config"] = {"disks": web.pop("disks")}  # running with another disk; the definition keeps golden
    web["disks"] = [{"device": "disk", "path": "/secondary/web-tmp.qcow2", "backing": None}]
    plan = plan_placement({"sm-01": [spec("web")], "sm-02": [spec("golden")]}, states(hosts), SHARED)
    assert any("still needed by web" in r for r in plan.refusals), plan.refusals


def test_a_linked_clone_moves_although_its_base_is_shared_with_others() -> None:
    # web's own disk is used by nobody else: only the disk the move removes counts.
    hosts = _golden_and_web()
    hosts["sm-01"]["domains"]["web"]["disks"] = [
        {"device": "disk", "path": "/secondary/web2-vda.qcow2", "backing": f"{PRIMARY}/golden-vda.qcow2"}
    ]
    plan = plan_placement({"sm-01": [spec("web"), spec("golden")], "sm-02": []}, states(hosts), SHARED)
    assert plan.moves == [] and plan.refusals == []


# --- item 3: never create a VM that may exist on a hypervisor not read ---------------------------------

OUTSIDE = {"sm-02": "is outside --limit: run without --limit, or include sm-02 in it"}


def test_a_vm_built_on_a_host_outside_limit_is_not_built_again_without_proof() -> None:
    hosts: dict[str, Any] = {"sm-01": placed_host_data({}, uuid="u1"), "sm-02": None}
    plan = plan_placement(
        {"sm-01": [spec("vm1")], "sm-02": []}, states(hosts), SHARED, unread_why=OUTSIDE, reservations=None,
        reservations_note="the DHCP reservations on mgmt were not read (mgmt is outside --limit)",
    )  # fmt: skip
    assert plan.refusals == [] and plan.moves == []
    assert plan.held == {
        "sm-01": [
            "vm1: not built on sm-01: it may already be defined on sm-02, which is outside --limit: run "
            "without --limit, or include sm-02 in it; the DHCP reservations on mgmt were not read "
            "(mgmt is outside --limit)"
        ]
    }
    assert plan.not_cloned("sm-01") == {"vm1"}


def test_a_reservation_on_the_management_node_is_a_record_of_the_vm() -> None:
    hosts: dict[str, Any] = {"sm-01": placed_host_data({}, uuid="u1"), "sm-02": None}
    vm = spec("vm1")
    record = {vm.mac: {"mac": vm.mac, "ip": vm.ipaddress, "hostname": vm.hostname, "short": "vm1"}}
    plan = plan_placement(
        {"sm-01": [vm], "sm-02": []}, states(hosts), SHARED, unread_why=OUTSIDE, reservations=record
    )
    assert plan.not_cloned("sm-01") == {"vm1"}
    assert "the management node holds a reservation for it (" in plan.held["sm-01"][0]


def test_a_provably_new_vm_is_built_although_a_host_is_not_read() -> None:
    hosts: dict[str, Any] = {"sm-01": placed_host_data({}, uuid="u1"), "sm-02": None}
    other = spec("vm9")
    record = {other.mac: {"mac": other.mac, "ip": "10.10.5.99", "hostname": other.hostname, "short": "vm9"}}
    plan = plan_placement(
        {"sm-01": [spec("vm1")], "sm-02": []}, states(hosts), SHARED, unread_why=OUTSIDE, reservations=record
    )
    assert plan.held == {} and plan.refusals == [] and plan.not_cloned("sm-01") == set()


def test_a_move_to_a_host_not_read_is_held_on_the_source_not_refused_for_everyone() -> None:
    hosts = cluster_data(placed_domain_data([("/secondary/vm1-vda.qcow2", "none")]), on="sm-02")
    hosts["sm-01"] = None
    plan = plan_placement(
        {"sm-01": [spec("vm1")], "sm-02": []},
        states(hosts),
        SHARED,
        unread_why={"sm-01": "is outside --limit: run without --limit, or include sm-01 in it"},
    )
    assert plan.moves == [] and plan.refusals == []
    assert plan.held == {
        "sm-02": [
            "vm1: not moved from sm-02: its manifest host sm-01 is outside --limit: run without --limit, "
            "or include sm-01 in it"
        ]
    }


def test_why_unread_tells_outside_limit_from_unreachable_from_unreadable() -> None:
    inventory = Inventory((["sm-01", "sm-02", "sm-03", "mgmt"], {}))
    sm01, sm02, sm03, mgmt = (inventory.get_host(n) for n in ("sm-01", "sm-02", "sm-03", "mgmt"))
    state = State(inventory, Config(), initial_limit=[sm01, sm02, sm03])
    state.activate_host(sm01)
    state.activate_host(sm03)
    state.failed_hosts.add(sm02)
    assert why_unread(state, mgmt) == "is outside --limit: run without --limit, or include mgmt in it"
    assert why_unread(state, sm02) == "could not be reached: bring sm-02 back, then run again"
    assert why_unread(state, sm03) == (
        "did not answer for its libvirt state: bring libvirtd on sm-03 back, then run again"
    )


# --- item 4: an offline move checks that the VM is still shut off, right before the migration ----------


def test_offline_move_checks_the_state_right_before_the_migration_in_the_same_command() -> None:
    move = Move("vm1", "sm-01", "sm-02", False, (), (f"{PRIMARY}/vm1-vda.img",))
    text = move_command(move, Target("qemu+ssh://root@sm-02/system"), timeout=60).get_raw_value()
    check = "virsh -q -c qemu:///system domstate vm1"
    assert text.index("tar -C") < text.index(check) < text.index("migrate --offline") < text.index("rm -f")
    assert "kvm-qemu: timed out after 60 s: virsh domstate vm1" in text  # bounded, named
    assert "is no longer shut off" in text


def _fake_bin(tmp_path: Path, state: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "virsh": f"""#!/bin/sh
echo "virsh $*" >> {log}
case " $* " in
  *" domstate "*) printf '%s\\n\\n' '{state}' ;;
esac
exit 0
""",
        "ssh": f"""#!/bin/sh
echo "ssh $*" >> {log}
cat > /dev/null
if [ -n "$WRITE_DURING_COPY" ]; then sleep 0.05; echo more >> "$WRITE_DURING_COPY"; fi
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run_offline_move(
    tmp_path: Path, state: str, write_during_copy: bool = False
) -> tuple[subprocess.CompletedProcess[str], Path, str]:
    pool = tmp_path / "pool"
    pool.mkdir()
    disk = pool / "vm1-vda.img"
    disk.write_bytes(b"guest data")
    env = _fake_bin(tmp_path, state)
    if write_during_copy:
        env["WRITE_DURING_COPY"] = str(disk)
    move = Move("vm1", "sm-01", "sm-02", False, (), (str(disk),))
    text = move_command(move, Target("qemu+ssh://root@sm-02/system"), timeout=10, migrate_timeout=20)
    result = subprocess.run(
        ["sh", "-c", text.get_raw_value()], env=env, capture_output=True, text=True, timeout=60
    )
    return result, disk, (tmp_path / "calls.log").read_text()


def test_a_vm_started_during_the_copy_keeps_its_disks_and_is_not_migrated(tmp_path: Path) -> None:
    result, disk, calls = _run_offline_move(tmp_path, "running")
    assert result.returncode != 0
    assert disk.read_bytes() == b"guest data"
    assert "ssh -o BatchMode=yes -- root@sm-02" in calls  # the copy ran
    assert " migrate " not in calls
    assert "vm1 is no longer shut off (now: running)" in result.stderr


def test_a_vm_started_and_stopped_again_during_the_copy_keeps_its_disks(tmp_path: Path) -> None:
    # Shut off again when checked, but its disk changed after the copy began: the copy is stale.
    result, disk, calls = _run_offline_move(tmp_path, "shut off", write_during_copy=True)
    assert result.returncode != 0
    assert disk.read_bytes() == b"guest datamore\n"
    assert " migrate " not in calls
    assert "the disks of vm1 changed during the copy" in result.stderr


def test_a_vm_still_shut_off_is_migrated_and_its_source_disks_removed(tmp_path: Path) -> None:
    result, disk, calls = _run_offline_move(tmp_path, "shut off")
    assert result.returncode == 0, result.stderr
    assert " migrate --offline " in calls and not disk.exists()


# --- item 9: IPv6 migration addresses, and an ssh destination never read as an option -----------------


def _member(name: str, **data: Any) -> Any:
    return SimpleNamespace(name=name, data=data)


def test_a_default_migration_uri_brackets_an_ipv6_ssh_hostname() -> None:
    targets = placement_deploy._targets(
        [_member("sm-02", ssh_hostname="fd00::2"), _member("sm-03", ssh_hostname="[fd00::3]")]
    )
    assert targets["sm-02"]["uri"] == "qemu+ssh://root@[fd00::2]/system"
    assert targets["sm-03"]["uri"] == "qemu+ssh://root@[fd00::3]/system"
    assert _ssh_words(targets["sm-02"]["uri"])[-2:] == ["--", "root@fd00::2"]


def test_the_ssh_destination_comes_after_a_double_dash() -> None:
    words = _ssh_words("qemu+ssh://-oProxyCommand=x/system")
    assert words[-2:] == ["--", "-oproxycommand=x"]
    assert _ssh_words("qemu+ssh://root@127.0.1.2:2222/system?keyfile=/k") == [
        "ssh", "-o", "BatchMode=yes", "-p", "2222", "-i", "/k", "--", "root@127.0.1.2",
    ]  # fmt: skip
