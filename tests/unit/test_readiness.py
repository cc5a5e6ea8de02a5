"""deploys/_readiness.py (the wait deploy): the probe script run for real (local lease file, local TCP servers), and its report."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from deploys._readiness import (
    PROBE,
    not_ready,
    parse,
    probe_command,
    probe_config,
    table_lines,
    timeout_value,
)
from tests.unit.vmspec_builders import vmspec

SPECS = [
    vmspec(name, ipaddress, mac=mac, vcpus=1, memory_gib=1, max_memory_gib=1, disk_size_gib=1)
    for name, mac, ipaddress in (
        ("vm-a", "52:54:00:AA:00:01", "127.0.0.1"),
        ("vm-b", "52:54:00:aa:00:02", "127.0.0.2"),
        ("vm-c", "52:54:00:aa:00:03", "10.10.5.3"),
    )
]


def _server(address: str, banner: bytes) -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(banner)

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def _run(config: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config)], capture_output=True, text=True, timeout=30
    )


def test_probe_sees_leases_and_ssh_banners_and_stops_at_its_deadline(tmp_path: Path) -> None:
    ssh, port = _server("127.0.0.1", b"SSH-2.0-test\r\n")
    # vm-b has its lease, but what answers on its port is not an SSH server.
    other, _ = _server("127.0.0.2", b"HTTP/1.0 200\r\n")
    other.close()
    leases = tmp_path / "leases"
    leases.write_text(
        "1700000000 52:54:00:aa:00:01 127.0.0.1 vm-a 01:52:54:00:aa:00:01\n"
        "1700000000 52:54:00:aa:00:02 127.0.0.2 vm-b *\n"
        # vm-c's MAC holds a different address than the manifest's: not its lease.
        "1700000000 52:54:00:aa:00:03 10.10.5.99 vm-c *\n"
    )
    pid_file = tmp_path / "dnsmasq.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    result = _run(probe_config(SPECS, 2, str(leases), str(pid_file), port))
    ssh.close()
    assert result.returncode == 0, result.stderr
    readiness = parse(result.stdout.splitlines())
    assert set(readiness.lease) == {"vm-a", "vm-b"} and set(readiness.ssh) == {"vm-a"}
    assert readiness.note == ""
    assert 2 <= readiness.elapsed < 6
    assert not_ready(SPECS, readiness) == [
        "vm-b (SSH at 127.0.0.2 does not answer)",
        "vm-c (no lease for 52:54:00:aa:00:03 -> 10.10.5.3)",
    ]
    lines = table_lines(SPECS, readiness)
    assert lines[0].split() == ["VM", "IP", "lease", "after", "SSH", "after"]
    assert lines[1].startswith("vm-a") and lines[1].count(" s") == 2
    assert lines[3].split()[-2:] == ["-", "-"]


def test_probe_returns_as_soon_as_every_vm_is_ready(tmp_path: Path) -> None:
    ssh, port = _server("127.0.0.1", b"SSH-2.0-test\r\n")
    leases = tmp_path / "leases"
    leases.write_text("1700000000 52:54:00:aa:00:01 127.0.0.1 vm-a *\n")
    result = _run(probe_config(SPECS[:1], 60, str(leases), str(tmp_path / "missing.pid"), port))
    ssh.close()
    readiness = parse(result.stdout.splitlines())
    assert readiness.elapsed < 5 and not_ready(SPECS[:1], readiness) == []
    assert "missing.pid" in readiness.note  # without dnsmasq's pid it probes from its own namespace


def test_probe_command_quotes_everything_and_is_bounded() -> None:
    config = probe_config(
        [replace(SPECS[0], name="x'; rm -rf /")], 30, "/var/lib/misc/dnsmasq.leases", "/p", 22
    )
    command = probe_command(config).get_raw_value()
    assert command.startswith("timeout 45 python3 -c '")
    assert "'\"'\"'; rm -rf /" in command


def test_bad_output_and_bad_timeouts_are_reported() -> None:
    from pyinfra.api.exceptions import FactProcessError

    with pytest.raises(FactProcessError, match="unexpected readiness probe output"):
        parse(["not json"])
    assert timeout_value("300") == 300
    for bad in ("soon", "0", "-5", "1e9"):
        with pytest.raises(ValueError, match="wait_timeout="):
            timeout_value(bad)


def test_probe_is_a_file_valid_for_old_management_nodes() -> None:
    # The probe is deploys/scripts/readiness_probe.py, read at import; RHEL 8's python3 is 3.6.
    assert PROBE == (Path(__file__).parents[2] / "deploys" / "scripts" / "readiness_probe.py").read_text()
    ast.parse(PROBE, feature_version=(3, 6))
