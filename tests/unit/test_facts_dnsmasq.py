"""DnsmasqReservations and HostsFileText: one command each, exact bytes, FactProcessError on garbage."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest
from pyinfra.api.exceptions import FactProcessError

from facts.dnsmasq import ABSENT_MARK, FILE_MARK, DnsmasqReservations, HostsFileText, split_files

FIXTURES = Path(__file__).parent / "fixtures" / "dnsmasq"


def section(data: bytes | None) -> list[str]:
    if data is None:
        return [ABSENT_MARK]
    encoded = base64.encodebytes(data).decode().splitlines()  # wrapped at 76 like base64(1)
    return [FILE_MARK, *encoded]


def run_locally(command: str) -> list[str]:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_reservations_command_quotes_paths() -> None:
    command = DnsmasqReservations().command(hostsfile="/etc/a b/dhcp-hosts", addn_hosts="/x/$(reboot)")
    assert command.get_raw_value() == (
        'l=\'/etc/a b/dhcp-hosts.lock\' ; if [ -f "$l" ] && [ -r "$l" ] && [ ! -L "$l" ]; then '
        'exec 9< "$l" && flock -s -w 120 9 || { echo "kvm-qemu: cannot take the shared lock $l" >&2; '
        "exit 1; }; fi; "
        "for f in '/etc/a b/dhcp-hosts' '/x/$(reboot)' ; do if [ -e \"$f\" ]; then echo '-- file' "
        "&& base64 < \"$f\" || exit 1; else echo '-- absent' ; fi; done"
    )


def test_reservations_are_read_under_the_writers_lock(tmp_path: Path) -> None:
    # A writer holds the lock between its two renames: the reader waits instead of seeing half a change.
    dhcp = tmp_path / "dhcp-hosts"
    lock = tmp_path / "dhcp-hosts.lock"
    lock.touch()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "1.5"])
    try:
        time.sleep(0.3)
        started = time.monotonic()
        run_locally(
            DnsmasqReservations().command(hostsfile=str(dhcp), addn_hosts=str(tmp_path / "h")).get_raw_value()
        )
        assert time.monotonic() - started > 0.8
    finally:
        holder.kill()
        holder.wait()


def test_reservations_from_fixture_files() -> None:
    output = section((FIXTURES / "dhcp-hosts").read_bytes()) + section((FIXTURES / "hosts").read_bytes())
    fact = DnsmasqReservations().process(output)
    assert list(fact) == ["52:54:00:00:00:13", "52:54:00:00:01:30", "52:54:00:aa:bb:cc"]
    assert fact["52:54:00:aa:bb:cc"] == {
        "mac": "52:54:00:aa:bb:cc",
        "ip": "10.10.5.2",
        "hostname": "infra.example.internal",
        "short": "infra",
        "owner": "",
    }
    assert fact["52:54:00:00:00:13"]["ip"] == "10.10.5.13"
    assert fact["52:54:00:00:01:30"]["ip"] == "10.10.5.130"


def test_reservations_missing_and_empty_files() -> None:
    assert DnsmasqReservations().process(section(None) + section(None)) == {}
    assert DnsmasqReservations().process(section(b"") + section(None)) == {}


def test_reservations_real_command_round_trip(tmp_path: Path) -> None:
    dhcp = tmp_path / "dhcp-hosts"
    dhcp.write_bytes((FIXTURES / "dhcp-hosts").read_bytes())
    command = DnsmasqReservations().command(hostsfile=str(dhcp), addn_hosts=str(tmp_path / "missing"))
    output = run_locally(command.get_raw_value())
    assert split_files(output, 2) == [dhcp.read_bytes(), None]
    with pytest.raises(FactProcessError, match="has no line in hosts"):
        DnsmasqReservations().process(output)
    fact = DnsmasqReservations()
    fact.command(hostsfile=str(dhcp), addn_hosts="/etc/x/hosts")
    with pytest.raises(FactProcessError, match=f"{dhcp} line 2: 10.10.5.13 has no line in /etc/x/hosts"):
        fact.process(output)


def test_reservations_unreadable_path_fails_the_command(tmp_path: Path) -> None:
    command = DnsmasqReservations().command(hostsfile=str(tmp_path), addn_hosts=str(tmp_path / "x"))
    result = subprocess.run(["sh", "-c", command.get_raw_value()], capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (section(b"52:54:00:00:00:13,10.10.5.13\n") + section(None), "found 2 field"),
        (section(b"\xff\xfe garbage\n") + section(None), "codec can't decode"),
        (section(None), "expected 2 file section"),
        (["something else", *section(None), *section(None)], "unexpected output line"),
        ([FILE_MARK, "not base64!", *section(None)], "cannot decode"),
    ],
)
def test_reservations_garbage_raises_fact_process_error(output: list[str], message: str) -> None:
    with pytest.raises(FactProcessError, match=message):
        DnsmasqReservations().process(output)


def test_hosts_file_text_keeps_exact_bytes(tmp_path: Path) -> None:
    original = (FIXTURES / "etc-hosts").read_bytes()
    path = tmp_path / "hosts"
    path.write_bytes(original)
    output = run_locally(HostsFileText().command(path=str(path)).get_raw_value())
    text = HostsFileText().process(output)
    assert text is not None and text.encode("utf-8", "surrogateescape") == original
    missing = run_locally(HostsFileText().command(path=str(tmp_path / "nope")).get_raw_value())
    assert HostsFileText().process(missing) is None
