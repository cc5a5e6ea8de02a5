"""The sandbox guest booted with qemu directly (no libvirt): lease, SSH, hostname on its own disk, power
button, shared client id, accelerator choice. A private network namespace with a bridge and a throwaway
dnsmasq; nothing leaves it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import guest_image as gi

pytestmark = pytest.mark.integration

NETNS = f"kvmq-gi-{os.getpid()}"
BRIDGE_IP = "10.77.0.1"
GUEST_MAC = "52:54:00:77:00:10"
GUEST_IP = "10.77.0.10"
OTHER_IP = "10.77.0.11"
DOMAIN = "gi.test"
READY_TIMEOUT = 90.0


def _sh(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def _netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


@pytest.fixture(scope="module")
def image():
    return gi.build()


@pytest.fixture(scope="module")
def cluster_net(tmp_path_factory):
    """A bridge with one tap and a throwaway dnsmasq, all inside a namespace of our own."""
    work = tmp_path_factory.mktemp("net")
    _sh("ip", "netns", "delete", NETNS, check=False)
    _sh("ip", "netns", "add", NETNS)
    dnsmasq = None
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "br0", "type", "bridge"],
            ["ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "tuntap", "add", "tap0", "mode", "tap"],
            ["ip", "link", "set", "tap0", "master", "br0", "up"],
        ):
            _sh(*_netns(*cmd))
        leases = work / "dnsmasq.leases"
        dnsmasq = subprocess.Popen(
            _netns(
                "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--interface=br0",
                "--bind-interfaces", "--except-interface=lo", "--no-resolv", "--no-hosts",
                f"--dhcp-range={BRIDGE_IP.rsplit('.', 1)[0]}.100,{BRIDGE_IP.rsplit('.', 1)[0]}.200,255.255.255.0,1h",
                f"--dhcp-host={GUEST_MAC},{GUEST_IP},gi-one", f"--domain={DOMAIN}",
                f"--host-record=gi-two.{DOMAIN},gi-two,{OTHER_IP}",
                f"--dhcp-leasefile={leases}", "--dhcp-authoritative", "--log-dhcp",
                f"--log-facility={work / 'dnsmasq.log'}", "--pid-file=",
            ),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield {"leases": leases, "log": work / "dnsmasq.log"}
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        _sh("ip", "netns", "delete", NETNS, check=False)


@pytest.fixture(scope="module")
def client_key(tmp_path_factory):
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    return key


class Guest:
    """One qemu run of the guest on tap0 inside the namespace, under TCG (works everywhere)."""

    def __init__(self, image, disk: Path, work: Path, *, cmdline: str | None = None, snapshot: bool = False):
        self.serial = work / f"serial-{time.monotonic_ns()}.log"
        self.monitor = work / "monitor.sock"
        self.monitor.unlink(missing_ok=True)
        argv = gi.qemu_argv(
            image, disk, "qemu", "qemu64", self.serial,
            cmdline=cmdline, nic=("tap0", GUEST_MAC), snapshot=snapshot, monitor=self.monitor,
        )  # fmt: skip
        self.serial.write_text("")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(_netns(*argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def console(self) -> str:
        return self.serial.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = READY_TIMEOUT) -> tuple[float, str]:
        while time.monotonic() - self.started < timeout:
            for line in self.console().splitlines():
                if line.startswith(marker):
                    return time.monotonic() - self.started, line
            assert self.proc.poll() is None, f"qemu exited before {marker}:\n{self.console()}"
            time.sleep(0.1)
        raise AssertionError(f"no {marker} within {timeout:.0f} s; console:\n{self.console()}")

    def power_button(self) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.sendall(b"system_powerdown\n")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _ssh(key: Path, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return _sh(
        *_netns(
            "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            f"root@{GUEST_IP}", command,
        ),
        timeout=timeout, check=False,
    )  # fmt: skip


def _wait_ssh(key: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = _ssh(key, "true")
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"SSH does not answer: {result.stderr}"
        time.sleep(0.2)


@pytest.mark.integration
def test_guest_takes_its_lease_answers_ssh_keeps_its_hostname_and_powers_off(
    image, cluster_net, client_key, tmp_path
):
    disk = tmp_path / "vda.img"
    host_key = gi.make_rootfs(
        disk, image, (client_key.with_suffix(".pub")).read_text(), data_mib=8, size_gib=1
    )
    assert host_key.startswith("ssh-ed25519 ")

    guest = Guest(image, disk, tmp_path)
    try:
        ready_s, ready = guest.wait_for(gi.READY_MARKER)
        assert ready == f"{gi.READY_MARKER} ip={GUEST_IP} hostname=gi-one", guest.console()
        _wait_ssh(client_key)
        ssh_s = time.monotonic() - guest.started
        print(f"\nboot->ready {ready_s:.1f} s, ssh {ssh_s:.1f} s")
        leases = cluster_net["leases"].read_text()
        assert [line.split()[1:] for line in leases.splitlines()] == [
            [GUEST_MAC, GUEST_IP, "gi-one", f"01:{GUEST_MAC}"]
        ]
        out = _ssh(client_key, "hostname; ip -4 -o addr show eth0; cat /etc/resolv.conf; ip route; "
                   f"nslookup gi-two.{DOMAIN}; nslookup gi-two; ls /dev/input; cat /proc/swaps; "
                   "ls /etc/hostname; df -k /; lsmod")  # fmt: skip
        lines = out.stdout
        assert lines.splitlines()[0] == "gi-one", out
        assert f"inet {GUEST_IP}/24" in lines and f"search {DOMAIN}" in lines
        assert f"nameserver {BRIDGE_IP}" in lines and f"default via {BRIDGE_IP} dev eth0" in lines
        assert lines.count(f"Address: {OTHER_IP}") >= 2, lines
        assert "event" in lines and "virtio_balloon" in lines
        assert "/etc/hostname: No such file" in out.stderr or "No such file" in lines + out.stderr
        # sethostname writes /etc/hostname in place; it must survive a power cycle on the VM's own disk.
        assert (
            _ssh(
                client_key, "printf 'gi-renamed.gi.test\\n' > /etc/hostname && hostname gi-renamed.gi.test"
            ).returncode
            == 0
        )
        # sftp works (one Subsystem line).
        sftp = _sh(*_netns("sftp", "-i", str(client_key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-b", "-", f"root@{GUEST_IP}"),
                   check=False)  # fmt: skip
        assert sftp.returncode == 0, sftp.stderr

        pressed = time.monotonic()
        guest.power_button()
        guest.proc.wait(timeout=30)
        off_s = time.monotonic() - pressed
        assert "KVMQ-POWEROFF" in guest.console()
        print(f"power button -> qemu exit {off_s:.1f} s")
    finally:
        guest.stop()

    on_disk = _sh("debugfs", "-R", "cat /etc/hostname", str(disk)).stdout
    assert on_disk == "gi-renamed.gi.test\n"
    assert "needs_recovery" not in _sh("dumpe2fs", "-h", str(disk)).stdout  # clean unmount

    guest = Guest(image, disk, tmp_path)
    try:
        _, ready = guest.wait_for(gi.READY_MARKER)
        assert ready == f"{gi.READY_MARKER} ip={GUEST_IP} hostname=gi-renamed.gi.test", guest.console()
        _wait_ssh(client_key)
        assert _ssh(client_key, "hostname").stdout.strip() == "gi-renamed.gi.test"
    finally:
        guest.stop()


@pytest.mark.integration
def test_guest_sends_the_shared_client_id_when_asked(image, cluster_net, client_key, tmp_path):
    disk = tmp_path / "vda.img"
    gi.make_rootfs(disk, image, (client_key.with_suffix(".pub")).read_text(), data_mib=0, size_gib=1)
    guest = Guest(image, disk, tmp_path, cmdline=image.cmdline_with("shared"), snapshot=True)
    try:
        guest.wait_for(gi.READY_MARKER)
    finally:
        guest.stop()
    shared = ":".join(gi.SHARED_CLIENT_ID[i : i + 2] for i in range(0, len(gi.SHARED_CLIENT_ID), 2))
    leases = [line.split()[1:] for line in cluster_net["leases"].read_text().splitlines()]
    assert leases == [[GUEST_MAC, GUEST_IP, "gi-one", shared]]


@pytest.mark.integration
def test_choose_accelerator_boots_the_guest(image, tmp_path):
    accel = gi.choose_accelerator(image, tmp_path, cache=False)
    print(f"\naccelerator {accel}")
    assert accel.domain_type in ("kvm", "qemu")
    assert 0 < accel.boot_seconds < 120
    assert "<cpu " in accel.cpu_xml
    assert not (tmp_path / "accel-root.img").exists()
