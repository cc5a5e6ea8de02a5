"""dhcp_reservations: planning against faked facts, and the generated command run for real in a temp dir."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import OperationValueError, StringCommand
from pyinfra.connectors.util import make_unix_command
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from operations._dnsmasq_entries import (
    BLOCK_BEGIN,
    BLOCK_END,
    Entry,
    render_addn_hosts,
    render_dhcp_hosts,
    render_test_conf,
)
from operations.dnsmasq import FileWrite, apply_command, dhcp_reservations

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


def stdin_files(command: StringCommand) -> list[str]:
    return [base64.b64decode(line).decode() for line in command.connector_arguments["_stdin"]]


# --- planning with faked facts -----------------------------------------------------------------


def test_up_to_date_is_a_noop() -> None:
    commands, host = run_op(reservations(E13, E130), entries=[E13.to_dict(), E130.to_dict()])
    assert commands == []
    assert host.noop_description == "dnsmasq reservations are up to date"


def test_removing_absent_macs_is_a_noop() -> None:
    commands, host = run_op(reservations(E13), entries=[{"mac": E14.mac}], present=False)
    assert commands == [] and host.noop_description == "dnsmasq reservations are up to date"


def test_adding_an_entry_writes_both_files_in_one_command() -> None:
    (command,), host = run_op(reservations(E130), entries=[E13.to_dict()])
    assert host.noop_description is None
    raw = command.get_raw_value()
    assert f"f0={HF}\n" in raw and f"f1={AH}\n" in raw and "f2=" not in raw
    assert "dnsmasq --test --conf-file=/etc/dnsmasq.conf --conf-file=\"$tc\"" in raw
    assert "pidf=/run/dnsmasq/dnsmasq.pid\n" in raw and 'kill -HUP "$pid"' in raw
    assert "sudo" not in raw  # the caller decides (_sudo=True)
    # Contents never appear on the command line.
    assert E13.ip not in raw and E13.mac not in raw
    assert stdin_files(command) == [
        render_dhcp_hosts([E13, E130]),
        render_addn_hosts([E13, E130]),
        render_test_conf([E13, E130]),
    ]


def test_renaming_only_rewrites_the_hosts_file() -> None:
    renamed = E13.to_dict() | {"hostname": "thirteen.example.internal"}
    (command,), _ = run_op(reservations(E13), entries=[renamed])
    raw = command.get_raw_value()
    assert f"f0={AH}\n" in raw and "f1=" not in raw
    assert stdin_files(command)[0].endswith("10.10.5.13 thirteen.example.internal vm13\n")


def test_vmspec_dicts_are_accepted() -> None:
    spec = {"name": "vm14", "hostname": E14.hostname, "ipaddress": E14.ip, "mac": E14.mac, "vcpus": 1}
    (command,), _ = run_op({}, entries=[spec])
    assert stdin_files(command)[0].endswith(f"{E14.mac},id:*,{E14.ip},vm14\n")


def test_removal_by_mac_keeps_the_neighbour() -> None:
    (command,), _ = run_op(reservations(E13, E130), entries=[{"mac": E13.mac.upper()}], present=False)
    dhcp, hosts, test_conf = stdin_files(command)
    assert dhcp == render_dhcp_hosts([E130]) and hosts == render_addn_hosts([E130])
    assert test_conf == render_test_conf([E130])


def test_paths_and_options_are_quoted() -> None:
    (command,), _ = run_op(
        {},
        entries=[E13.to_dict()],
        hostsfile="/srv/my dir/dhcp-hosts",
        addn_hosts="/srv/$(id)/hosts",
        dnsmasq_conf="/etc/dnsmasq conf",
        pid_file="/run/x;y.pid",
    )
    raw = command.get_raw_value()
    assert "f0='/srv/my dir/dhcp-hosts'\n" in raw and "f1='/srv/$(id)/hosts'\n" in raw
    assert "--conf-file='/etc/dnsmasq conf' " in raw and "pidf='/run/x;y.pid'\n" in raw


def test_without_conf_and_pid_file() -> None:
    (command,), _ = run_op({}, entries=[E13.to_dict()], dnsmasq_conf=None, pid_file=None)
    raw = command.get_raw_value()
    assert 'dnsmasq --test --conf-file="$tc"' in raw and "kill" not in raw


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([E14.to_dict() | {"ip": "10.10.5.13"}], r"IP address 10\.10\.5\.13 of 52:54:00:00:00:14 .*52:54:00:00:00:13"),
        ([E14.to_dict() | {"hostname": "vm13.example.internal"}], "name vm13.example.internal of 52:54:00:00:00:14"),
        ([E14.to_dict() | {"short": "vm13"}], "name vm13 of 52:54:00:00:00:14"),
        ([E14.to_dict(), E14.to_dict() | {"mac": "52:54:00:00:00:15"}], "also given in entries"),
    ],
)
def test_conflicts_raise_before_any_command(entries: list[dict[str, str]], message: str) -> None:
    with pytest.raises(OperationValueError, match=message):
        run_op(reservations(E13), entries=entries)


def test_conflict_message_names_the_files() -> None:
    with pytest.raises(OperationValueError, match=f"already reserved in {HF} / {AH}"):
        run_op(reservations(E13), entries=[E14.to_dict() | {"ip": E13.ip}])


def test_thirteen_is_not_one_hundred_thirty() -> None:
    (command,), _ = run_op(reservations(E130), entries=[E13.to_dict()], dhcp_range="10.10.5.10,10.10.5.200")
    assert stdin_files(command)[0] == render_dhcp_hosts([E13, E130])


def test_out_of_range_and_invalid_input() -> None:
    with pytest.raises(OperationValueError, match=r"10\.10\.5\.130 of .* outside dhcp_range 10\.10\.5\.100-10\.10\.5\.120"):
        run_op({}, entries=[E130.to_dict()], dhcp_range="10.10.5.100,10.10.5.120,255.255.255.0,12h")
    with pytest.raises(OperationValueError, match="invalid entries"):
        run_op({}, entries=[{"mac": "xx", "ip": "1.2.3.4", "hostname": "a.b", "short": "a"}])
    with pytest.raises(OperationValueError, match="dhcp_range"):
        run_op({}, entries=[E13.to_dict()], dhcp_range="everything")


def test_the_files_must_differ() -> None:
    with pytest.raises(OperationValueError, match="the files must differ"):
        run_op({}, entries=[E13.to_dict()], hostsfile=AH)
    with pytest.raises(OperationValueError, match="the files must differ"):
        run_op({}, entries=[E13.to_dict()], etc_hosts=True, etc_hosts_path="/etc/kvm-qemu/dnsmasq/../dnsmasq/hosts")


def test_etc_hosts_block_is_added_as_third_file() -> None:
    text = "127.0.0.1 localhost\n"
    (command,), _ = run_op(reservations(E130), etc_hosts_text=text, entries=[E13.to_dict()], etc_hosts=True)
    assert "f2=/etc/hosts\n" in command.get_raw_value()
    assert stdin_files(command)[2] == (
        f"{text}{BLOCK_BEGIN}\n{E13.hosts_line()}\n{E130.hosts_line()}\n{BLOCK_END}\n"
    )


def test_etc_hosts_only_change() -> None:
    (command,), _ = run_op(reservations(E13), etc_hosts_text="127.0.0.1 localhost\n", entries=[E13.to_dict()],
                           etc_hosts=True)
    assert "f0=/etc/hosts\n" in command.get_raw_value() and "f1=" not in command.get_raw_value()
    block = f"127.0.0.1 localhost\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n"
    commands, host = run_op(reservations(E13), etc_hosts_text=block, entries=[E13.to_dict()], etc_hosts=True)
    assert commands == [] and host.noop_description == "dnsmasq reservations are up to date"


def test_missing_etc_hosts_is_created_only_when_needed() -> None:
    commands, _ = run_op({}, etc_hosts_text=None, entries=[], etc_hosts=True)
    assert commands == []
    (command,), _ = run_op({}, etc_hosts_text=None, entries=[E13.to_dict()], etc_hosts=True)
    assert stdin_files(command)[2] == f"{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n"


def test_malformed_etc_hosts_block_is_refused() -> None:
    with pytest.raises(OperationValueError, match="malformed kvm-qemu block"):
        run_op({}, etc_hosts_text=f"{BLOCK_BEGIN}\n", entries=[E13.to_dict()], etc_hosts=True)


def test_diff_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_op(reservations(E13, E130), diff=True, entries=[E13.to_dict() | {"ip": "10.10.5.14"}])
    lines = [r.getMessage() for r in caplog.records]
    assert f"{HF}:" in lines
    assert "    -52:54:00:00:00:13,id:*,10.10.5.13,vm13" in lines
    assert "    +52:54:00:00:00:13,id:*,10.10.5.14,vm13" in lines
    assert "    +10.10.5.14 vm13.example.internal vm13" in lines
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
        ["sh", "-c", command.get_raw_value()], input=stdin, capture_output=True, text=True, env=env
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "dnsmasq.conf"
    path.write_text("no-resolv\ndomain=example.internal\ndhcp-range=10.10.5.10,10.10.5.200,12h\n")
    return path


def writes_for(tmp_path: Path, entries: list[Entry], etc_hosts: str | None = None) -> list[FileWrite]:
    writes = [
        FileWrite(str(tmp_path / "d" / "dhcp-hosts"), None, render_dhcp_hosts(entries)),
        FileWrite(str(tmp_path / "d" / "hosts"), None, render_addn_hosts(entries)),
    ]
    if etc_hosts is not None:
        writes.append(FileWrite(str(tmp_path / "etc-hosts"), None, etc_hosts))
    return writes


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".kvm-qemu"))


@needs_dnsmasq
def test_command_creates_files_and_directory(tmp_path: Path, conf: Path) -> None:
    command = apply_command(writes_for(tmp_path, [E13]), render_test_conf([E13]), str(conf), str(tmp_path / "pid"))
    result = run_command(command)
    assert result.returncode == 0, result.stderr
    assert "dnsmasq is not running (no " in result.stdout
    assert (tmp_path / "d" / "dhcp-hosts").read_text() == render_dhcp_hosts([E13])
    assert (tmp_path / "d" / "hosts").read_text() == render_addn_hosts([E13])
    assert stat.S_IMODE((tmp_path / "d" / "hosts").stat().st_mode) == 0o644
    assert leftovers(tmp_path / "d") == []


@needs_dnsmasq
def test_command_keeps_mode_and_other_bytes(tmp_path: Path, conf: Path) -> None:
    original = b"127.0.0.1\tlocalhost\r\n# caf\xe9\n10.0.0.1 x"
    etc = tmp_path / "etc-hosts"
    etc.write_bytes(original)
    etc.chmod(0o600)
    text = original.decode("utf-8", "surrogateescape") + f"\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n"
    command = apply_command(writes_for(tmp_path, [E13], text), render_test_conf([E13]), str(conf), None)
    assert run_command(command).returncode == 0
    assert etc.read_bytes() == original + f"\n{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n".encode()
    assert stat.S_IMODE(etc.stat().st_mode) == 0o600


@needs_dnsmasq
def test_rejected_configuration_keeps_old_files(tmp_path: Path, conf: Path) -> None:
    assert run_command(apply_command(writes_for(tmp_path, [E13]), "", str(conf), None)).returncode == 0
    # Another configuration file already hands 10.10.5.14 to a different MAC.
    conf.write_text(conf.read_text() + "dhcp-host=52:54:00:99:99:99,10.10.5.14\n")
    command = apply_command(writes_for(tmp_path, [E14]), render_test_conf([E14]), str(conf), None)
    result = run_command(command)
    assert result.returncode == 1
    assert "dnsmasq rejected the new reservations, nothing was changed" in result.stderr
    assert "duplicate dhcp-host IP address 10.10.5.14" in result.stderr
    assert (tmp_path / "d" / "dhcp-hosts").read_text() == render_dhcp_hosts([E13])
    assert leftovers(tmp_path / "d") == []


@needs_dnsmasq
def test_missing_main_conf_fails(tmp_path: Path) -> None:
    command = apply_command(writes_for(tmp_path, [E13]), "", str(tmp_path / "nope.conf"), None)
    result = run_command(command)
    assert result.returncode == 1 and "cannot read" in result.stderr
    assert not (tmp_path / "d" / "dhcp-hosts").exists()


@needs_dnsmasq
def test_pid_of_another_program_is_not_signalled(tmp_path: Path, conf: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pid").write_text(f"{sleeper.pid}\n")
        command = apply_command(writes_for(tmp_path, [E13]), "", str(conf), str(tmp_path / "pid"))
        result = run_command(command)
        assert result.returncode == 1 and "is not dnsmasq; not signalled" in result.stderr
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_dnsmasq
def test_stale_pid_file(tmp_path: Path, conf: Path) -> None:
    (tmp_path / "pid").write_text("999999999\n")
    command = apply_command(writes_for(tmp_path, [E13]), "", str(conf), str(tmp_path / "pid"))
    result = run_command(command)
    assert result.returncode == 0 and "stale" in result.stdout


@needs_dnsmasq
def test_runs_under_sudo_with_stdin(tmp_path: Path, conf: Path) -> None:
    # A stand-in sudo that drops its options: proves the quoting and stdin survive the wrapper.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sudo"
    fake.write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    fake.chmod(0o755)
    command = apply_command(writes_for(tmp_path, [E13]), render_test_conf([E13]), str(conf), None)
    wrapped = make_unix_command(command, _sudo=True)
    assert wrapped.get_raw_value().startswith("sudo -H -n sh -c ")
    wrapped.connector_arguments["_stdin"] = command.connector_arguments["_stdin"]
    result = run_command(wrapped, env_path=str(bin_dir))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "hosts").read_text() == render_addn_hosts([E13])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_dnsmasq(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    if DNSMASQ is None or os.geteuid() != 0:
        pytest.skip("needs dnsmasq and root")
    port = _free_port()
    conf = tmp_path / "run.conf"
    pid_file = tmp_path / "dnsmasq.pid"
    conf.write_text(
        f"no-resolv\nno-hosts\nuser=root\nport={port}\nlisten-address=127.0.0.1\nbind-interfaces\n"
        f"dhcp-hostsfile={tmp_path}/d/dhcp-hosts\naddn-hosts={tmp_path}/d/hosts\npid-file={pid_file}\n"
    )
    subprocess.run([DNSMASQ, f"--conf-file={conf}"], check=True)
    for _ in range(50):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        yield conf, pid_file, port
    finally:
        os.kill(pid, 15)


def test_sighup_makes_a_running_dnsmasq_answer(tmp_path: Path, local_dnsmasq: tuple[Path, Path, int]) -> None:
    import dns.resolver

    conf, pid_file, port = local_dnsmasq
    pid = pid_file.read_text().strip()
    command = apply_command(writes_for(tmp_path, [E13, E130]), render_test_conf([E13, E130]), str(conf),
                            str(pid_file))
    result = run_command(command)
    assert result.returncode == 0, result.stderr
    assert f"dnsmasq (pid {pid}) re-read its reservation files" in result.stdout
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 3
    for name, ip in [("vm13.example.internal", E13.ip), ("vm13", E13.ip), ("vm130", E130.ip)]:
        assert [a.to_text() for a in resolver.resolve(name, "A")] == [ip]
    assert pid_file.read_text().strip() == pid
