"""dhcp_reservations: planning against faked facts, and the generated command run for real in a temp dir."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import OperationValueError, StringCommand
from pyinfra.connectors.util import make_unix_command
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from facts.dnsmasq import DnsmasqNode
from inventories.manifest_model import VmSpec
from operations.dnsmasq import RELEASE_AS_CONFIGURED, RESERVATIONS_SCRIPT, apply_command, dhcp_reservations
from operations.util.dnsmasq_entries import (
    BLOCK_BEGIN,
    BLOCK_END,
    Entry,
    render_addn_hosts,
    render_dhcp_hosts,
    request_lines,
)

HF, AH = "/etc/kvm-qemu/dnsmasq/dhcp-hosts", "/etc/kvm-qemu/dnsmasq/hosts"

E13 = Entry("52:54:00:00:00:13", "10.10.5.13", "vm13.example.internal", "vm13")
E130 = Entry("52:54:00:00:01:30", "10.10.5.130", "vm130.example.internal", "vm130")
E14 = Entry("52:54:00:00:00:14", "10.10.5.14", "vm14.example.internal", "vm14")


def reservations(*entries: Entry) -> dict[str, dict[str, str]]:
    return {entry.mac: entry.to_dict() for entry in entries}


def run_op(
    current: dict[str, dict[str, str]], etc_hosts_text: str | None = None, diff: bool = False, **kwargs: Any
) -> tuple[list[StringCommand], Any]:
    key = f"addn_hosts={kwargs.get('addn_hosts', AH)}, hostsfile={kwargs.get('hostsfile', HF)}"
    facts: dict[str, Any] = {"dnsmasq.DnsmasqReservations": {key: current}}
    if etc_hosts_text is not None or kwargs.get("etc_hosts"):
        facts["dnsmasq.HostsFileText"] = {"path=/etc/hosts": etc_hosts_text}
    state = FakeState()
    state.config.DIFF = diff
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(dhcp_reservations._inner(**kwargs))
    return commands, host


def stdin_lines(command: StringCommand) -> list[str]:
    return list(command.connector_arguments["_stdin"])


def add(*entries: Entry) -> list[str]:
    return request_lines(list(entries), present=True)


# --- planning with faked facts -----------------------------------------------------------------


def test_up_to_date_is_a_noop() -> None:
    commands, host = run_op(reservations(E13, E130), entries=[E13.to_dict(), E130.to_dict()])
    assert commands == []
    assert host.noop_description == "dnsmasq reservations are up to date"


def test_removing_absent_macs_is_a_noop() -> None:
    commands, host = run_op(reservations(E13), entries=[{"mac": E14.mac}], present=False)
    assert commands == [] and host.noop_description == "dnsmasq reservations are up to date"


def test_adding_an_entry_is_one_locked_command() -> None:
    (command,), host = run_op(reservations(E130), entries=[E13.to_dict()])
    assert host.noop_description is None
    raw = command.get_raw_value()
    assert f"h={HF}; a={AH}; e=''; conf=/etc/dnsmasq.conf; pidf=/run/dnsmasq/dnsmasq.pid; rel=''\n" in raw
    assert 'l="$h.lock"' in raw and "wait=120" in raw and 'flock -w "$wait" 9 ||' in raw
    assert command.connector_arguments["_timeout"] == 180
    assert 'dnsmasq --test ${conf:+"--conf-file=$conf"} --conf-file="$tc"' in raw
    assert "sync -- $t0 $t1 $t2" in raw and 'kill -HUP "$pid"' in raw
    assert "sudo" not in raw  # the caller decides (_sudo=True)
    # Only the requested entry travels, on stdin, never on the command line; the node merges it.
    assert E13.ip not in raw and E13.mac not in raw
    assert stdin_lines(command) == [f"add {E13.mac} {E13.ip} {E13.hostname} {E13.short}"]


def test_vmspecs_are_accepted_and_vmspec_dicts_refused() -> None:
    spec = VmSpec(
        name="vm14", hostname=E14.hostname, ipaddress=E14.ip, mac=E14.mac, vcpus=1, memory_gib=1,
        max_memory_gib=1, num_disks=0, disk_size_gib=0,
    )  # fmt: skip
    (command,), _ = run_op({}, entries=[spec])
    assert stdin_lines(command) == [f"add {E14.mac} {E14.ip} {E14.hostname} vm14"]
    with pytest.raises(OperationValueError, match=r"vm14\.example\.internal: None is not an IPv4 address"):
        run_op({}, entries=[spec.to_json()])


def test_removal_sends_only_reserved_macs() -> None:
    (command,), _ = run_op(
        reservations(E13, E130), entries=[{"mac": E13.mac.upper()}, {"mac": E14.mac}], present=False
    )
    assert stdin_lines(command) == [f"del {E13.mac}"]


def test_paths_and_options_are_quoted() -> None:
    (command,), _ = run_op(
        {},
        entries=[E13.to_dict()],
        hostsfile="/srv/my dir/dhcp-hosts",
        addn_hosts="/srv/$(id)/hosts",
        dnsmasq_conf="/etc/dnsmasq conf",
        pid_file="/run/x;y.pid",
        release_leases_on="10.10.5.1",
    )
    raw = command.get_raw_value()
    assert (
        "h='/srv/my dir/dhcp-hosts'; a='/srv/$(id)/hosts'; e=''; conf='/etc/dnsmasq conf'; "
        "pidf='/run/x;y.pid'; rel=10.10.5.1\n" in raw
    )


def test_without_conf_and_pid_file() -> None:
    (command,), _ = run_op({}, entries=[E13.to_dict()], dnsmasq_conf=None, pid_file=None)
    assert "conf=''; pidf=''; rel=''\n" in command.get_raw_value()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [E14.to_dict() | {"ip": "10.10.5.13"}],
            r"IP address 10\.10\.5\.13 of 52:54:00:00:00:14 .*52:54:00:00:00:13",
        ),
        (
            [E14.to_dict() | {"hostname": "vm13.example.internal"}],
            "name vm13.example.internal of 52:54:00:00:00:14",
        ),
        ([E14.to_dict() | {"short": "vm13"}], "name vm13 of 52:54:00:00:00:14"),
        ([E14.to_dict(), E14.to_dict() | {"mac": "52:54:00:00:00:15"}], "also given in entries"),
        (
            [E13.to_dict() | {"ip": "10.10.5.14"}],
            r"MAC 52:54:00:00:00:13 of vm13\.example\.internal \(10\.10\.5\.14\) "
            r"is already reserved in .* for vm13\.example\.internal \(10\.10\.5\.13\)",
        ),
        ([E13.to_dict() | {"hostname": "thirteen.example.internal"}], "MAC 52:54:00:00:00:13 of thirteen"),
    ],
)
def test_conflicts_raise_before_any_command(entries: list[dict[str, str]], message: str) -> None:
    with pytest.raises(OperationValueError, match=message):
        run_op(reservations(E13), entries=entries)


def test_conflict_message_names_the_files() -> None:
    with pytest.raises(OperationValueError, match=f"already reserved in {HF} / {AH}"):
        run_op(reservations(E13), entries=[E14.to_dict() | {"ip": E13.ip}])


def test_out_of_range_and_invalid_input() -> None:
    with pytest.raises(
        OperationValueError, match=r"10\.10\.5\.130 of .* outside dhcp_range 10\.10\.5\.100-10\.10\.5\.120"
    ):
        run_op({}, entries=[E130.to_dict()], dhcp_range="10.10.5.100,10.10.5.120,255.255.255.0,12h")
    with pytest.raises(OperationValueError, match="invalid entries"):
        run_op({}, entries=[{"mac": "xx", "ip": "1.2.3.4", "hostname": "a.b", "short": "a"}])
    with pytest.raises(OperationValueError, match="dhcp_range"):
        run_op({}, entries=[E13.to_dict()], dhcp_range="everything")
    with pytest.raises(OperationValueError, match="release_leases_on"):
        run_op({}, entries=[E13.to_dict()], release_leases_on="eth0")
    with pytest.raises(OperationValueError, match="lock_wait"):
        run_op({}, entries=[E13.to_dict()], lock_wait=0)


def test_the_files_must_differ() -> None:
    with pytest.raises(OperationValueError, match="the files must differ"):
        run_op({}, entries=[E13.to_dict()], hostsfile=AH)
    with pytest.raises(OperationValueError, match="the files must differ"):
        run_op(
            {},
            entries=[E13.to_dict()],
            etc_hosts=True,
            etc_hosts_path="/etc/kvm-qemu/dnsmasq/../dnsmasq/hosts",
        )


def test_etc_hosts_is_passed_along() -> None:
    (command,), _ = run_op(
        reservations(E130), etc_hosts_text="127.0.0.1 localhost\n", entries=[E13.to_dict()], etc_hosts=True
    )
    assert "e=/etc/hosts;" in command.get_raw_value()


def test_etc_hosts_only_change() -> None:
    (command,), _ = run_op(
        reservations(E13), etc_hosts_text="127.0.0.1 localhost\n", entries=[E13.to_dict()], etc_hosts=True
    )
    assert stdin_lines(command) == add(E13)
    block = f"127.0.0.1 localhost\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n"
    commands, host = run_op(reservations(E13), etc_hosts_text=block, entries=[E13.to_dict()], etc_hosts=True)
    assert commands == [] and host.noop_description == "dnsmasq reservations are up to date"


def test_missing_etc_hosts_is_created_only_when_needed() -> None:
    commands, _ = run_op({}, etc_hosts_text=None, entries=[], etc_hosts=True)
    assert commands == []


def test_malformed_etc_hosts_block_is_refused() -> None:
    with pytest.raises(OperationValueError, match="malformed kvm-qemu block"):
        run_op({}, etc_hosts_text=f"{BLOCK_BEGIN}\n", entries=[E13.to_dict()], etc_hosts=True)


def test_diff_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_op(reservations(E13, E130), diff=True, entries=[E14.to_dict()])
    lines = [r.getMessage() for r in caplog.records]
    assert f"{HF}:" in lines
    assert "    +52:54:00:00:00:14,id:*,10.10.5.14,vm14" in lines
    assert "    +10.10.5.14 vm14.example.internal vm14" in lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_op(reservations(E13), diff=False, entries=[E14.to_dict()])
    assert not caplog.records


# --- the generated command, run for real -----------------------------------------------------

DNSMASQ = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
needs_dnsmasq = pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq is not installed")


def run_command(command: StringCommand, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    stdin = "".join(f"{line}\n" for line in command.connector_arguments["_stdin"])
    env = dict(os.environ)
    if env_path:
        env["PATH"] = f"{env_path}:{env['PATH']}"
    return subprocess.run(
        ["sh", "-c", command.get_raw_value()],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "dnsmasq.conf"
    path.write_text("no-resolv\ndomain=example.internal\ndhcp-range=10.10.5.10,10.10.5.200,12h\n")
    (tmp_path / "d").mkdir()
    return path


def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "d" / "dhcp-hosts", tmp_path / "d" / "hosts"


def command_for(tmp_path: Path, requests: list[str], conf: Path | None, **kwargs: Any) -> StringCommand:
    hostsfile, addn_hosts = files(tmp_path)
    return apply_command(requests, str(hostsfile), str(addn_hosts), str(conf) if conf else None, **kwargs)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".kvm-qemu"))


@needs_dnsmasq
def test_command_creates_and_merges_files(tmp_path: Path, conf: Path) -> None:
    result = run_command(command_for(tmp_path, add(E130), conf))
    assert result.returncode == 0, result.stderr
    result = run_command(command_for(tmp_path, add(E13), conf))
    assert result.returncode == 0, result.stderr
    hostsfile, addn_hosts = files(tmp_path)
    # Read under the lock: E130 from the first run is kept, sorted by address (.13 before .130).
    assert hostsfile.read_text() == render_dhcp_hosts([E13, E130])
    assert addn_hosts.read_text() == render_addn_hosts([E13, E130])
    assert stat.S_IMODE(addn_hosts.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d" / "dhcp-hosts.lock").stat().st_mode) == 0o600
    assert leftovers(tmp_path / "d") == []
    again = run_command(command_for(tmp_path, add(E13), conf))
    assert again.returncode == 0 and "already up to date" in again.stdout
    removed = run_command(command_for(tmp_path, [f"del {E13.mac}"], conf))
    assert removed.returncode == 0, removed.stderr
    assert hostsfile.read_text() == render_dhcp_hosts([E130])
    assert addn_hosts.read_text() == render_addn_hosts([E130])


@needs_dnsmasq
def test_concurrent_runs_keep_every_reservation(tmp_path: Path, conf: Path) -> None:
    many = [
        Entry(f"52:54:00:00:10:{i:02x}", f"10.10.5.{20 + i}", f"c{i}.example.internal", f"c{i}")
        for i in range(12)
    ]
    commands = [command_for(tmp_path, add(entry), conf) for entry in many]
    stdin = ["".join(f"{line}\n" for line in c.connector_arguments["_stdin"]) for c in commands]
    running = [
        subprocess.Popen(
            ["sh", "-c", c.get_raw_value()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    for process, text in zip(running, stdin, strict=True):
        process.stdin.write(text)
        process.stdin.close()
    for process in running:
        assert process.wait(timeout=60) == 0, process.stderr.read()
    hostsfile, addn_hosts = files(tmp_path)
    assert hostsfile.read_text() == render_dhcp_hosts(many)
    assert addn_hosts.read_text() == render_addn_hosts(many)


@needs_dnsmasq
def test_lock_held_elsewhere_waits_then_gives_up(tmp_path: Path, conf: Path) -> None:
    lock = tmp_path / "d" / "dhcp-hosts.lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "30"])
    try:
        for _ in range(100):
            if lock.exists():
                break
            time.sleep(0.02)
        time.sleep(0.2)
        result = run_command(command_for(tmp_path, add(E13), conf, lock_wait=1))
        assert result.returncode == 1
        assert f"another run held {lock} for more than 1 s; nothing was changed" in result.stderr
        assert not files(tmp_path)[0].exists()
    finally:
        holder.kill()
        holder.wait()


@needs_dnsmasq
def test_conflict_found_under_the_lock_names_both(tmp_path: Path, conf: Path) -> None:
    # Another manifest reserved the same VM name (so the same MAC) after this run's fact was read.
    assert run_command(command_for(tmp_path, add(E13), conf)).returncode == 0
    before = [p.read_text() for p in files(tmp_path)]
    other = Entry(E13.mac, "10.10.6.13", "vm13.other.internal", "vm13x")
    result = run_command(command_for(tmp_path, add(other, E14), conf))
    assert result.returncode == 1
    assert (
        f"MAC {E13.mac} of vm13.other.internal (10.10.6.13) is already reserved for "
        f"vm13.example.internal (10.10.5.13, MAC {E13.mac})"
    ) in result.stderr
    assert "conflicting reservations, nothing was changed" in result.stderr
    taken = Entry("52:54:00:00:00:77", E13.ip, "vm77.example.internal", "vm77")
    result = run_command(command_for(tmp_path, add(taken), conf))
    assert result.returncode == 1 and f"IP address {E13.ip} of vm77.example.internal" in result.stderr
    assert [p.read_text() for p in files(tmp_path)] == before
    assert leftovers(tmp_path / "d") == []


@needs_dnsmasq
def test_command_keeps_mode_and_other_bytes(tmp_path: Path, conf: Path) -> None:
    original = b"127.0.0.1\tlocalhost\r\n# caf\xe9\n10.0.0.1 x"
    etc = tmp_path / "etc-hosts"
    etc.write_bytes(original)
    etc.chmod(0o600)
    result = run_command(command_for(tmp_path, add(E13), conf, etc_hosts_path=str(etc)))
    assert result.returncode == 0, result.stderr
    assert etc.read_bytes() == original + f"\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n".encode()
    assert stat.S_IMODE(etc.stat().st_mode) == 0o600
    result = run_command(command_for(tmp_path, add(E130), conf, etc_hosts_path=str(etc)))
    assert result.returncode == 0, result.stderr
    assert (
        etc.read_bytes()
        == original + f"\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{E130.hosts_line()}\n{BLOCK_END}\n".encode()
    )
    result = run_command(
        command_for(tmp_path, [f"del {E13.mac}", f"del {E130.mac}"], conf, etc_hosts_path=str(etc))
    )
    assert result.returncode == 0, result.stderr
    assert etc.read_bytes() == original + b"\n"


@needs_dnsmasq
def test_malformed_etc_hosts_block_on_the_node_changes_nothing(tmp_path: Path, conf: Path) -> None:
    etc = tmp_path / "etc-hosts"
    etc.write_text(f"{BLOCK_BEGIN}\n")
    result = run_command(command_for(tmp_path, add(E13), conf, etc_hosts_path=str(etc)))
    assert result.returncode == 1 and "malformed kvm-qemu block" in result.stderr
    assert not files(tmp_path)[0].exists() and etc.read_text() == f"{BLOCK_BEGIN}\n"


@needs_dnsmasq
def test_rejected_configuration_keeps_old_files(tmp_path: Path, conf: Path) -> None:
    assert run_command(command_for(tmp_path, add(E13), conf)).returncode == 0
    # Another configuration file already hands 10.10.5.14 to a different MAC.
    conf.write_text(conf.read_text() + "dhcp-host=52:54:00:99:99:99,10.10.5.14\n")
    result = run_command(command_for(tmp_path, add(E14), conf))
    assert result.returncode == 1
    assert "dnsmasq rejected the new reservations, nothing was changed" in result.stderr
    assert "duplicate dhcp-host IP address 10.10.5.14" in result.stderr
    assert files(tmp_path)[0].read_text() == render_dhcp_hosts([E13])
    assert leftovers(tmp_path / "d") == []


@needs_dnsmasq
def test_symlinked_files_are_not_followed(tmp_path: Path, conf: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    files(tmp_path)[0].symlink_to(target)
    result = run_command(command_for(tmp_path, add(E13), conf))
    assert result.returncode == 1 and "is a symbolic link; not followed" in result.stderr
    assert target.read_text() == "keep\n"


# Without deploys/mgmt_server.py: say what is missing and which deploy sets it up.
@needs_dnsmasq
def test_missing_main_conf_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    result = run_command(command_for(tmp_path, add(E13), tmp_path / "nope.conf"))
    assert result.returncode == 1
    assert (
        f"the dnsmasq configuration {tmp_path}/nope.conf is missing: deploys/mgmt_server.py sets it up"
        in result.stderr
    )
    assert not files(tmp_path)[0].exists()


@needs_dnsmasq
def test_missing_directory_says_what_to_run(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("no-resolv\n")
    result = run_command(command_for(tmp_path, add(E13), conf))
    assert result.returncode == 1
    assert (
        f"directory {tmp_path}/d is missing, so dnsmasq is not set up here: deploys/mgmt_server.py sets it up"
        in result.stderr
    )
    assert not (tmp_path / "d").exists()


@needs_dnsmasq
def test_no_running_dnsmasq_says_what_to_run(tmp_path: Path, conf: Path) -> None:
    result = run_command(command_for(tmp_path, add(E13), conf, pid_file=str(tmp_path / "pid")))
    assert result.returncode == 1
    assert (
        f"dnsmasq is not running (no {tmp_path}/pid), nothing was changed: start it; "
        "deploys/mgmt_server.py sets it up" in result.stderr
    )
    (tmp_path / "pid").write_text("999999999\n")
    result = run_command(command_for(tmp_path, add(E13), conf, pid_file=str(tmp_path / "pid")))
    assert result.returncode == 1 and "stale" in result.stderr
    assert not files(tmp_path)[0].exists()


@needs_dnsmasq
def test_pid_of_another_program_is_not_signalled(tmp_path: Path, conf: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pid").write_text(f"{sleeper.pid}\n")
        result = run_command(command_for(tmp_path, add(E13), conf, pid_file=str(tmp_path / "pid")))
        assert result.returncode == 1 and "is not dnsmasq; not signalled" in result.stderr
        assert sleeper.poll() is None
        assert not files(tmp_path)[0].exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_dnsmasq
def test_release_needs_dhcp_release_and_an_interface(tmp_path: Path, conf: Path) -> None:
    assert run_command(command_for(tmp_path, add(E13), conf)).returncode == 0
    before = files(tmp_path)[0].read_text()
    result = run_command(command_for(tmp_path, [f"del {E13.mac}"], conf, release_address="192.0.2.123"))
    assert result.returncode == 1
    assert (
        "no interface here holds 192.0.2.123" in result.stderr
        or "dhcp_release is not installed (package dnsmasq-utils)" in result.stderr
    )
    assert files(tmp_path)[0].read_text() == before


@needs_dnsmasq
def test_runs_under_sudo_with_stdin(tmp_path: Path, conf: Path) -> None:
    # A stand-in sudo that drops its options: proves the quoting and stdin survive the wrapper.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sudo"
    fake.write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    fake.chmod(0o755)
    command = command_for(tmp_path, add(E13), conf)
    wrapped = make_unix_command(command, _sudo=True)
    assert wrapped.get_raw_value().startswith("sudo -H -n sh -c ")
    wrapped.connector_arguments["_stdin"] = command.connector_arguments["_stdin"]
    result = run_command(wrapped, env_path=str(bin_dir))
    assert result.returncode == 0, result.stderr
    assert files(tmp_path)[1].read_text() == render_addn_hosts([E13])


@needs_dnsmasq
def test_node_side_lines_follow_entry_rendering(tmp_path: Path, conf: Path) -> None:
    # Lines with extra dhcp-host items (id:*, set:...) are read by the form of their fields, and
    # every line is written the way Entry renders it.
    hostsfile, addn_hosts = files(tmp_path)
    hostsfile.write_text(f"# old header\n{E13.mac},id:*,set:vms,{E13.ip},{E13.short}\n")
    addn_hosts.write_text(f"{E13.hosts_line()}\n")
    result = run_command(command_for(tmp_path, add(E130, E13), conf))
    assert result.returncode == 0, result.stderr
    assert hostsfile.read_text() == render_dhcp_hosts([E13, E130])
    assert addn_hosts.read_text() == render_addn_hosts([E13, E130])


# --- leases released as the node's own configuration says (settings given once to mgmt_server) ---


def run_configured(node: dict[str, Any]) -> tuple[list[StringCommand], Any]:
    key = f"addn_hosts={AH}, conf=/etc/dnsmasq.conf, hostsfile={HF}"
    state = FakeState()
    host = create_host(state, facts={"dnsmasq.DnsmasqNode": {key: node}})
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(
            dhcp_reservations._inner(
                entries=[{"mac": E13.mac}],
                present=False,
                dnsmasq_conf="/etc/dnsmasq.conf",
                release_leases_on=RELEASE_AS_CONFIGURED,
            )
        )
    return commands, host


def test_delete_releases_the_lease_on_the_configured_address() -> None:
    commands, _ = run_configured(
        {"reservations": reservations(E13), "dhcp": True, "listen_address": "10.10.5.2"}
    )
    assert "; rel=10.10.5.2\n" in commands[0].get_raw_value()
    commands, _ = run_configured(
        {"reservations": reservations(E13), "dhcp": False, "listen_address": "10.10.5.2"}
    )
    assert "; rel=''\n" in commands[0].get_raw_value()


def test_a_lease_that_cannot_be_released_is_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        commands, _ = run_configured(
            {"reservations": reservations(E13), "dhcp": True, "listen_address": None}
        )
    assert "; rel=''\n" in commands[0].get_raw_value()
    assert f"the DHCP lease of {E13.hostname} ({E13.ip}, MAC {E13.mac}) is not released" in caplog.text


def test_node_fact_reads_reservations_and_dhcp_in_one_command(tmp_path: Path) -> None:
    hostsfile, addn = tmp_path / "dhcp-hosts", tmp_path / "hosts"
    hostsfile.write_text(render_dhcp_hosts([E13]))
    addn.write_text(render_addn_hosts([E13]))
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        "# Managed by kvm-qemu\nlisten-address=10.10.5.2\nbind-interfaces\ndhcp-range=10.10.5.100,10.10.5.200\n"
    )
    fact = DnsmasqNode()
    raw = fact.command(hostsfile=str(hostsfile), addn_hosts=str(addn), conf=str(conf)).get_raw_value()
    out = subprocess.run(["sh", "-c", raw], capture_output=True, text=True, check=True).stdout.splitlines()
    assert fact.process(out) == {
        "reservations": reservations(E13),
        "dhcp": True,
        "listen_address": "10.10.5.2",
    }
    conf.write_text("listen-address=10.10.5.2\n")
    out = subprocess.run(["sh", "-c", raw], capture_output=True, text=True, check=True).stdout.splitlines()
    assert fact.process(out)["dhcp"] is False


def test_the_program_file_refuses_to_run_without_its_values(tmp_path: Path) -> None:
    # operations/scripts/dnsmasq-reservations.sh gets every value from apply_command's prelude.
    result = subprocess.run(
        ["sh", "-c", RESERVATIONS_SCRIPT], cwd=tmp_path, input="", capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 and "h: parameter" in result.stderr
    assert list(tmp_path.iterdir()) == []
