"""dhcp_reservations' node-side command against a real dnsmasq daemon started here (root, no sandbox):
after the change it is HUP'ed and answers for the new names."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_operations_dnsmasq import DNSMASQ, E13, E130, add, command_for, conf, run_command

pytestmark = pytest.mark.integration

__all__ = ["conf"]  # the fixture, used by name


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
    (tmp_path / "d").mkdir(exist_ok=True)
    command = command_for(tmp_path, add(E13, E130), conf, pid_file=str(pid_file))
    result = run_command(command)
    assert result.returncode == 0, result.stderr
    assert f"dnsmasq (pid {pid}) re-read its reservation files" in result.stdout
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 3
    for name, ip in [("vm13.example.internal", E13.ip), ("vm13", E13.ip), ("vm130", E130.ip)]:
        assert [a.to_text() for a in resolver.resolve(name, "A")] == [ip]
    assert pid_file.read_text().strip() == pid


