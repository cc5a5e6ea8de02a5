"""Root-run paths: disk creation (links, modes), what delete may remove, retried deletes, reservations of
VMs that were not deleted, time limits, console passwords.

The shell commands run for real with ``sh`` and libvirt's built-in test driver (``test:///default``:
virsh without a daemon), in a temporary directory standing in for a pool.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from facts.libvirt import PROBE, Hypervisor
from operations import libvirt
from operations.util.clone_plan import clone_plan
from operations.util.converge_plan import converge_plan
from operations.util.delete_plan import delete_plan
from operations.util.disk_files import with_cleanup as with_cleanup
from operations.util.power_plan import power_plan
from operations.util.virsh import q, sh
from tests.unit.fact_builders import BASE_XML, base_domain_data, built_domain_data, host_data, typed
from tests.unit.vmspec_builders import kvmhost01 as spec

TEST_URI = "test:///default"
HOST_PYTHON = "/usr/bin/python3"


def sh_run(command: Any, stdin: str | None = None, umask: str = "022") -> subprocess.CompletedProcess[str]:
    text = command.get_raw_value() if hasattr(command, "get_raw_value") else command
    return subprocess.run(
        ["sh", "-c", f"umask {umask}; {text}"], input=stdin or "", text=True, capture_output=True, timeout=60
    )


def clone_in(tmp_path: Path, **overrides: Any) -> tuple[Any, Path]:
    """A clone plan of a 4 KiB base into ``tmp_path/pool`` (virsh define against the test driver)."""
    pool = tmp_path / "pool"
    pool.mkdir(exist_ok=True)
    base = tmp_path / "base.img"
    base.write_bytes(b"b" * 4096)
    snap = host_data()
    snap["pools"]["default"]["path"] = str(pool)
    snap["domains"]["centos7"]["xml"] = BASE_XML.replace("/secondary/centos7-vda.img", str(base))
    values = {"num_disks": 1, "disk_size_gib": 1, **overrides}
    return clone_plan(spec(**values), typed(snap), TEST_URI), pool


# --- 1. links are never followed when creating disks ----------------------------------------------


@pytest.mark.parametrize("which", ["kvmhost01-vda.img", "kvmhost01-vdb.img"])
def test_clone_refuses_a_dangling_link_planted_in_the_pool(tmp_path: Path, which: str) -> None:
    plan, pool = clone_in(tmp_path)
    target = tmp_path / "victim"
    (pool / which).symlink_to(target)
    result = sh_run(plan.command, plan.stdin)
    assert result.returncode != 0
    assert "already exists; refusing to overwrite it" in result.stderr
    assert not target.exists()  # nothing was written through the link
    assert sorted(p.name for p in pool.iterdir()) == [which]  # the link stays, nothing else was made


def test_clone_refuses_a_link_to_an_existing_file(tmp_path: Path) -> None:
    plan, pool = clone_in(tmp_path)
    target = tmp_path / "precious"
    target.write_text("keep me")
    (pool / "kvmhost01-vda.img").symlink_to(target)
    assert sh_run(plan.command, plan.stdin).returncode != 0
    assert target.read_text() == "keep me"


def test_disk_files_are_created_exclusively_inside_the_pool_directory(tmp_path: Path) -> None:
    pool, other = tmp_path / "pool", tmp_path / "other"
    pool.mkdir()
    other.mkdir()
    outside = str(other / "vm-vda.img")
    result = sh_run(with_cleanup([outside], str(pool), sh("true"), 10))
    assert result.returncode != 0 and "is not a file in the pool directory" in result.stderr
    assert not Path(outside).exists()  # removed again
    # A pool directory reached through a link is fine: the file resolves into the pool's real directory.
    (tmp_path / "pool-link").symlink_to(pool)
    inside = str(tmp_path / "pool-link" / "vm-vda.img")
    assert sh_run(with_cleanup([inside], str(tmp_path / "pool-link"), sh("true"), 10)).returncode == 0
    assert (pool / "vm-vda.img").is_file()
    # noclobber creation: the file appearing after the check is not opened.
    racing = str(pool / "vm-vdb.img")
    plant = sh("ln -s", q(str(tmp_path / "victim")), q(racing))
    command = with_cleanup([racing], str(pool), sh("true"), 10).get_raw_value()
    command = command.replace("trap cleanup EXIT;", f"{plant.get_raw_value()}; trap cleanup EXIT;", 1)
    result = sh_run(command)
    assert result.returncode != 0 and not (tmp_path / "victim").exists()
    assert os.path.islink(racing)  # not ours: left alone


def test_a_failed_clone_removes_only_what_it_made(tmp_path: Path) -> None:
    plan, pool = clone_in(tmp_path, disk_size_gib=1)
    command = plan.command.get_raw_value().replace("define /dev/stdin", "no-such-command")
    result = sh_run(command, plan.stdin)
    assert result.returncode != 0 and list(pool.iterdir()) == []


def test_converge_adds_data_disks_with_the_same_protection() -> None:
    plan = converge_plan(spec(num_disks=2), typed(host_data({"kvmhost01": built_domain_data()})), TEST_URI)
    command = plan.command.get_raw_value()
    assert "set -C" in command and '[ -L "$f" ]' in command and "umask 077" in command


# --- 2. disks readable by root only ----------------------------------------------------------------


def test_clone_and_data_disks_are_created_0600(tmp_path: Path) -> None:
    plan, pool = clone_in(tmp_path)
    result = sh_run(plan.command, plan.stdin, umask="022")
    assert result.returncode == 0, result.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in pool.iterdir()}
    assert modes == {"kvmhost01-vda.img": 0o600, "kvmhost01-vdb.img": 0o600}


def test_linked_clone_overlay_is_0600(tmp_path: Path) -> None:
    plan, pool = clone_in(tmp_path, clone="linked", num_disks=0)
    result = sh_run(plan.command, plan.stdin, umask="022")
    assert result.returncode == 0, result.stderr
    assert (pool / "kvmhost01-vda.qcow2").stat().st_mode & 0o777 == 0o600


# --- 3. delete keeps whatever another domain uses --------------------------------------------------


def rendered(plan: Any) -> str:
    return plan.command.get_raw_value()


def test_delete_keeps_a_data_disk_another_domain_uses() -> None:
    other = built_domain_data(
        disks=[{"target": "vdb", "device": "disk", "path": "/data01/primary/kvmhost01-vdb.img"}]
    )
    other["config"]["disks"] = other["disks"]
    plan = delete_plan(
        "kvmhost01", typed(host_data({"kvmhost01": built_domain_data(), "other": other})), TEST_URI
    )
    command = rendered(plan)
    assert "kvmhost01-vda.img" in command and "kvmhost01-vdb.img" not in command
    assert any("kvmhost01-vdb.img (disk of domain other)" in n for n in plan.notes)


def inactive_pool_with_a_linked_clone() -> dict[str, Any]:
    """The base's linked clone lives in an inactive pool: no volume list shows it, its XML has no chain."""
    clone = built_domain_data(
        disks=[{"target": "vda", "device": "disk", "path": "/data02/parked/web-vda.qcow2", "format": "qcow2"}]
    )
    clone["config"]["disks"] = clone["disks"]
    snap = host_data({"web": clone})
    snap["pools"]["parked"] = {"state": "inactive", "path": "/data02/parked"}
    snap["files"] = {
        "/data02/parked/web-vda.qcow2": {"kind": "file", "backing": "/secondary/centos7-vda.img"},
        "/secondary/centos7-vda.img": {"kind": "file", "backing": None},
    }
    return snap


def test_delete_of_a_base_keeps_its_disk_while_a_linked_clone_in_an_inactive_pool_uses_it() -> None:
    plan = delete_plan("centos7", typed(inactive_pool_with_a_linked_clone()), TEST_URI)
    assert "centos7-vda.img" not in rendered(plan).replace("kept", "")
    assert "rm -f" not in rendered(plan)
    assert any("centos7-vda.img (backing file of domain web)" in n for n in plan.notes)


def test_delete_keeps_the_backing_file_of_a_leftover_overlay() -> None:
    snap = inactive_pool_with_a_linked_clone()
    del snap["domains"]["web"]  # undefined, but its overlay is still in the (inactive) pool
    plan = delete_plan("centos7", typed(snap), TEST_URI)
    assert "rm -f" not in rendered(plan)
    assert any("backing file of another volume" in n for n in plan.notes)


# --- 4. a delete that failed halfway finishes on a re-run ------------------------------------------


def test_files_are_checked_before_the_undefine_and_removed_without_a_pool() -> None:
    snap = host_data({"kvmhost01": built_domain_data()})
    snap["pools"]["default"]["state"] = "inactive"
    command = rendered(delete_plan("kvmhost01", typed(snap), TEST_URI))
    assert command.index("is not a plain file any more") < command.index("undefine")
    assert "vol-delete" not in command and "pool-refresh" not in command  # an inactive pool cannot
    assert "rm -f -- /data01/primary/kvmhost01-vda.img /data01/primary/kvmhost01-vdb.img" in command


def test_a_rerun_removes_what_is_left_when_the_domain_is_already_gone() -> None:
    snap = host_data()
    snap["files"] = {
        "/data01/primary/kvmhost01-vda.img": {"kind": "file", "backing": None},
        "/data01/primary/kvmhost01-vdb.img": {"kind": "file", "backing": None},
        "/data01/primary/kvmhost010-vda.img": {"kind": "file", "backing": None},
        "/data01/primary/kvmhost01-notes.txt": {"kind": "file", "backing": None},
        "/srv/kvmhost01-vdc.img": {"kind": "file", "backing": None},
    }
    plan = delete_plan("kvmhost01", typed(snap), TEST_URI)
    command = rendered(plan)
    assert "undefine" not in command and "destroy" not in command
    assert "rm -f -- /data01/primary/kvmhost01-vda.img /data01/primary/kvmhost01-vdb.img" in command
    assert "kvmhost010" not in command and "notes" not in command and "/srv/" not in command
    assert delete_plan("kvmhost01", typed(snap), TEST_URI, keep_disks=True) is None
    # ...but never a file another domain uses.
    other = built_domain_data(
        disks=[{"target": "vdb", "device": "disk", "path": "/data01/primary/kvmhost01-vdb.img"}]
    )
    other["config"]["disks"] = other["disks"]
    snap["domains"]["other"] = other
    assert "kvmhost01-vdb.img" not in rendered(delete_plan("kvmhost01", typed(snap), TEST_URI))


def test_a_link_in_place_of_a_disk_stops_the_delete_before_the_undefine(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    disk = pool / "test-vda.img"
    disk.write_text("disk")
    snap = host_data(
        {"test": built_domain_data("running", disks=[{"target": "vda", "device": "disk", "path": str(disk)}])}
    )
    snap["pools"]["default"]["path"] = str(pool)
    snap["files"] = {str(disk): {"kind": "file", "backing": None}}
    plan = delete_plan("test", typed(snap), TEST_URI)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    disk.unlink()
    disk.symlink_to(victim)  # swapped after the fact was read
    result = sh_run(plan.command)
    assert result.returncode != 0 and "is not a plain file any more" in result.stderr
    assert "destroy" not in result.stderr and victim.read_text() == "keep" and disk.is_symlink()


# --- 5. reservations go only with the VMs ----------------------------------------------------------


def run_reservations(executing: bool, gone: dict[str, list[str]]) -> list[str]:
    state = FakeState()
    state.is_executing = executing
    key = "addn_hosts=/h, hostsfile=/d"
    current = {
        "52:54:00:00:00:0a": {
            "mac": "52:54:00:00:00:0a",
            "ip": "10.0.0.10",
            "hostname": "a.x.y",
            "short": "a",
        },
        "52:54:00:00:00:0b": {
            "mac": "52:54:00:00:00:0b",
            "ip": "10.0.0.11",
            "hostname": "b.x.y",
            "short": "b",
        },
    }
    host = create_host(state, facts={"dnsmasq.DnsmasqReservations": {key: current}})
    for on, vms in gone.items():
        libvirt._record_gone(state, type("H", (), {"name": on})(), vms)
    vmspecs = [
        spec(name=e["short"], hostname=e["hostname"], ipaddress=e["ip"], mac=e["mac"])
        for e in current.values()
    ]
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(
            libvirt.vm_reservations._inner(
                vmspecs=vmspecs,
                present=False,
                vm_hosts={"a": "sm-01", "b": "sm-02"},
                hostsfile="/d",
                addn_hosts="/h",
                dnsmasq_conf=None,
                pid_file=None,
            )
        )
    # The node-side command reads its changes on stdin, one line per entry.
    return [line for c in commands for line in c.connector_arguments["_stdin"]]


def test_reservations_of_vms_not_deleted_stay() -> None:
    # sm-02's delete failed: b was not recorded, so only a's reservation goes.
    assert run_reservations(True, {"sm-01": ["a"]}) == ["del 52:54:00:00:00:0a"]
    assert run_reservations(True, {}) == []  # nothing deleted, nothing removed
    # --dry shows what a complete delete removes.
    assert run_reservations(False, {}) == ["del 52:54:00:00:00:0a", "del 52:54:00:00:00:0b"]


def test_delete_records_a_vm_only_after_its_command() -> None:
    state = FakeState()
    state.is_executing = True
    snap = host_data({"kvmhost01": built_domain_data()})
    host = create_host(state, facts={"libvirt.Hypervisor": {"timeout=60, uri=qemu:///system": typed(snap)}})
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(libvirt.vms._inner(vmspecs=[spec(), spec(name="gone")], present=False))
    assert libvirt.gone_in_this_run(state, host.name) == {"gone"}  # absent at execute time
    assert [type(c).__name__ for c in commands] == ["StringCommand", "FunctionCommand"]
    commands[1].function(state, host, *commands[1].args)  # what pyinfra runs after the delete succeeded
    assert libvirt.gone_in_this_run(state, host.name) == {"gone", "kvmhost01"}


# --- 8. every remote step has a time limit ---------------------------------------------------------


def every_virsh_is_bounded(command: str, seconds: int) -> bool:
    calls = re.findall(r"(\S+ \S+ \S+ \S+ )virsh -q", command)
    return bool(calls) and all(c == f"timeout -k 5 {seconds} " for c in calls)


def test_every_virsh_call_is_bounded_and_named() -> None:
    snap = host_data({"kvmhost01": built_domain_data("running")})
    commands = [
        rendered(clone_plan(spec(name="new"), typed(snap), TEST_URI, timeout=7)),
        rendered(converge_plan(spec(num_disks=2, vcpus=3, memory_gib=3), typed(snap), TEST_URI, timeout=7)),
        rendered(delete_plan("kvmhost01", typed(snap), TEST_URI, timeout=7)),
        rendered(power_plan(["kvmhost01"], typed(snap).domains, False, TEST_URI, step_timeout=7)),
        rendered(power_plan(["kvmhost01"], typed(snap).domains, False, TEST_URI, force=True, step_timeout=7)),
    ]
    for command in commands:
        assert every_virsh_is_bounded(command, 7), command
    assert "timed out after 7 s: virsh undefine --nvram" in commands[2]
    assert "timeout -k 5 3600 cp --sparse=always" in commands[0]  # copies have their own limit


def test_command_timeout_reaches_the_fact_and_the_commands() -> None:
    state = FakeState()
    host = create_host(
        state, facts={"libvirt.Hypervisor": {"timeout=9, uri=qemu:///system": typed(host_data())}}
    )
    with ctx_state.use(state), ctx_host.use(host):
        (command,) = list(libvirt.vms._inner(vmspecs=[spec(name="new")], command_timeout=9))
    assert every_virsh_is_bounded(command.get_raw_value(), 9)
    assert "timeout -k 5 19" in Hypervisor().command(timeout=9).get_raw_value()


@pytest.mark.skipif(not Path(HOST_PYTHON).exists(), reason="needs the host's python3")
def test_the_probe_names_the_step_that_hung(tmp_path: Path) -> None:
    if subprocess.run([HOST_PYTHON, "-c", "import libvirt"], capture_output=True).returncode:
        pytest.skip("python3-libvirt is not installed")
    # A libvirt socket that accepts and never answers: the connect hangs, like a frozen libvirtd.
    path = str(tmp_path / "libvirt-sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    try:
        result = subprocess.run(
            [HOST_PYTHON, "-c", PROBE, f"qemu+unix:///system?socket={path}", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.close()
    assert result.returncode == 124
    assert "kvm-qemu: timed out after 2 s: libvirt probe, connect to qemu+unix" in result.stderr


# --- 13. console passwords survive a clone ---------------------------------------------------------


NODE_XML = """<node>
  <domain type='test'>
    <name>based</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><source file='/secondary/based-vda.img'/><target dev='vda' bus='virtio'/></disk>
      <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret-pw'/>
    </devices>
  </domain>
</node>
"""


@pytest.mark.skipif(not Path(HOST_PYTHON).exists(), reason="needs the host's python3")
def test_the_probe_reads_definitions_with_console_passwords(tmp_path: Path) -> None:
    if subprocess.run([HOST_PYTHON, "-c", "import libvirt"], capture_output=True).returncode:
        pytest.skip("python3-libvirt is not installed")
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    result = subprocess.run(
        [HOST_PYTHON, "-c", PROBE, f"test://{node}", "20"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    domain = Hypervisor().process(result.stdout.splitlines()).to_dict()["domains"]["based"]
    assert "passwd='s3cret-pw'" in domain["xml"]
    base = {**base_domain_data(), "xml": domain["xml"].replace("type='test'", "type='kvm'")}
    snap = host_data({"based": base})
    clone = clone_plan(spec(srcvm="based", num_disks=0), typed(snap), TEST_URI)
    assert 'passwd="s3cret-pw"' in clone.stdin or "passwd='s3cret-pw'" in clone.stdin


def test_probe_stays_python36_compatible() -> None:
    compile(PROBE, "probe", "exec")
    assert 'f"' not in PROBE and ":=" not in PROBE
    assert sys.version_info >= (3, 11)


def test_a_host_whose_fact_failed_at_execution_records_nothing() -> None:
    # pyinfra returns the empty default and marks the host failed: that must not read as "all absent".
    state = FakeState()
    state.is_executing = True
    host = create_host(
        state, facts={"libvirt.Hypervisor": {"timeout=60, uri=qemu:///system": typed(host_data())}}
    )
    state.failed_hosts = {host}
    with ctx_state.use(state), ctx_host.use(host):
        (command,) = list(libvirt.vms._inner(vmspecs=[spec()], present=False))
    assert "could not be read" in command.get_raw_value() and command.get_raw_value().endswith("exit 1")
    assert libvirt.gone_in_this_run(state, host.name) == set()


def test_leftovers_in_shared_storage_are_kept() -> None:
    # /secondary is shared by every hypervisor: a kvmhost01 disk there may be the disk of a VM of the
    # same name on another host, which this host's domain list cannot show.
    snap = host_data()
    snap["files"] = {
        "/secondary/kvmhost01-vda.img": {"kind": "file", "backing": None},
        "/data01/primary/kvmhost01-vdb.img": {"kind": "file", "backing": None},
    }
    plan = delete_plan("kvmhost01", typed(snap), TEST_URI, shared_dirs=("/secondary",))
    command = rendered(plan)
    assert "/data01/primary/kvmhost01-vdb.img" in command and "/secondary/kvmhost01-vda.img" not in command
    assert any("may belong to a VM on another host" in n for n in plan.notes)
    # A disk the domain here really has is still its own, shared storage or not.
    domain = built_domain_data(
        disks=[{"target": "vda", "device": "disk", "path": "/secondary/kvmhost01-vda.img"}]
    )
    domain["config"]["disks"] = domain["disks"]
    snap["domains"]["kvmhost01"] = domain
    assert "/secondary/kvmhost01-vda.img" in rendered(
        delete_plan("kvmhost01", typed(snap), TEST_URI, shared_dirs=("/secondary",))
    )


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "1.5", "", "ten", True])
def test_command_timeout_must_be_whole_seconds(value: Any) -> None:
    from deploys._settings import SettingError, seconds

    state = FakeState()
    host = create_host(state, facts={})
    host.data = {"command_timeout": value}
    with ctx_state.use(state), ctx_host.use(host), pytest.raises(SettingError, match="command_timeout="):
        seconds("command_timeout")


def test_command_timeout_default_and_override() -> None:
    from deploys._settings import seconds

    state = FakeState()
    host = create_host(state, facts={})
    with ctx_state.use(state), ctx_host.use(host):
        host.data = {}
        assert seconds("command_timeout") == 60 and seconds("copy_timeout") == 3600
        host.data = {"command_timeout": "15"}
        assert seconds("command_timeout") == 15


def test_every_command_also_has_a_controller_side_limit() -> None:
    # A host whose sshd stops answering mid-command never reports the remote timeout: pyinfra stops
    # waiting after the sum of the command's step limits plus slack.
    state = FakeState()
    snap = host_data({"kvmhost01": built_domain_data("running")})
    host = create_host(state, facts={"libvirt.Hypervisor": {"timeout=7, uri=qemu:///system": typed(snap)}})
    with ctx_state.use(state), ctx_host.use(host):
        built = list(libvirt.vms._inner(vmspecs=[spec(name="new")], command_timeout=7))
        stopped = list(
            libvirt.vms_running._inner(vmspecs=[spec()], running=False, stop_timeout=20, command_timeout=7)
        )
        deleted = list(libvirt.vms._inner(vmspecs=[spec()], present=False, command_timeout=7))
        pooled = list(libvirt.pool._inner(pool_name="fast", path="/srv/fast", command_timeout=7))
    limits = [
        c.connector_arguments.get("_timeout")
        for c in built + stopped + deleted + pooled
        if c.connector_arguments
    ]
    assert len(limits) == 4 and all(limits)
    assert limits[0] >= 3600  # the clone copies the base: copy_timeout
    assert 20 < limits[1] < 3600 and limits[3] == 4 * 12 + 30
