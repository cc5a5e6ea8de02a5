"""The bridge dead-man switch for real, inside network namespaces this test creates.

Two namespaces joined by a veth pair: ``kvmq-br-h*`` is the hypervisor (eth0 10.10.5.2/24, an sshd),
``kvmq-br-c*`` the controller (10.10.5.1/24). The generated switch script (iproute2 backend: the same
script skeleton as netplan/NetworkManager/ifcfg, with runtime ``ip`` commands as the apply step) is
driven through stage, arm, apply; verification opens a new SSH connection from the controller
namespace with ``operations.bridge.verify_and_commit``. A good change is committed and its timer
disarmed; a change that cuts the host off fails verification and the timer restores the old address.
No sandbox, no traffic outside the namespaces; the namespaces are always deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from operations.util.bridge_spec import BridgeSpec
from operations.util.bridge_switch import switch_script

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HOST_IP = "10.10.5.2"
CTL_IP = "10.10.5.1"
SPEC = BridgeSpec(
    bridge="br0", ports=("eth0",), address=f"{HOST_IP}/24", rollback_seconds=8, verify_seconds=4
)


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Lab:
    host_ns: str
    ctl_ns: str
    state_dir: Path
    stamp: Path
    key: Path
    known_hosts: Path

    def sh(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.host_ns, *args, check=check, timeout=timeout)

    def step(self, step: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("sh", str(self.state_dir / "switch.sh"), step, check=check, timeout=60)

    def state(self) -> str:
        path = self.state_dir / "state"
        return path.read_text().strip() if path.exists() else "none"

    def addrs(self, dev: str) -> list[str]:
        out = self.sh("ip", "-o", "-4", "addr", "show", "dev", dev, "scope", "global", check=False).stdout
        return [line.split()[3] for line in out.splitlines()]

    def master(self, dev: str) -> str | None:
        words = self.sh("ip", "-o", "link", "show", "dev", dev).stdout.split()
        return words[words.index("master") + 1] if "master" in words else None

    def link_exists(self, dev: str) -> bool:
        return self.sh("ip", "link", "show", "dev", dev, check=False).returncode == 0

    def verify(self, seconds: int) -> bool:
        """operations.bridge.verify_and_commit (a new SSH connection), run from the controller namespace."""
        code = textwrap.dedent(
            f"""
            from gevent import monkey; monkey.patch_all()
            import sys
            from pyinfra.api import Config, Inventory, State
            from operations.bridge import verify_and_commit
            inventory = Inventory(([("hv", {{"ssh_hostname": {HOST_IP!r}, "ssh_user": "root",
                "ssh_key": {str(self.key)!r}, "ssh_known_hosts_file": {str(self.known_hosts)!r},
                "ssh_strict_host_key_checking": "no"}})], {{}}))
            state = State(inventory=inventory, config=Config(CONNECT_TIMEOUT=2))
            host = inventory.get_host("hv")
            ok = verify_and_commit(state, host, {str(self.state_dir)!r}, {seconds}, {{}})
            sys.exit(0 if ok else 3)
            """
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.ctl_ns, sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        assert result.returncode in (0, 3), result.stderr
        return result.returncode == 0

    def reachable(self) -> bool:
        return self.verify_tcp()

    def verify_tcp(self) -> bool:
        code = f"import socket; socket.create_connection(({HOST_IP!r}, 22), timeout=1).close()"
        result = run("ip", "netns", "exec", self.ctl_ns, sys.executable, "-c", code, check=False)
        return result.returncode == 0

    def write_script(self, spec: BridgeSpec) -> None:
        text = switch_script(
            spec, "iproute2", str(self.state_dir), str(self.stamp), apply_wait=20, timer="process"
        )
        (self.state_dir / "switch.sh").write_text(text)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("sshd"):
        pytest.skip("needs root, iproute2 and sshd to create network namespaces")
    suffix = f"{os.getpid() % 100000}"
    host_ns, ctl_ns = f"kvmq-br-h{suffix}", f"kvmq-br-c{suffix}"
    sshd: subprocess.Popen[bytes] | None = None
    try:
        run("ip", "netns", "add", host_ns)
        run("ip", "netns", "add", ctl_ns)
        run("ip", "-n", host_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "c0", "netns", ctl_ns)
        for ns, dev, ip in ((host_ns, "eth0", HOST_IP), (ctl_ns, "c0", CTL_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", "dev", dev, "up")
            run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        keys = tmp_path / "keys"
        keys.mkdir(mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host"))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client"))
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        config = keys / "sshd_config"
        config.write_text(
            f"Port 22\nListenAddress 0.0.0.0\nHostKey {keys / 'host'}\nPidFile {keys / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", host_ns, shutil.which("sshd") or "sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        state_dir = tmp_path / "switch"
        state_dir.mkdir(mode=0o755)
        lab = Lab(host_ns, ctl_ns, state_dir, tmp_path / "bridge.json", keys / "client", keys / "known_hosts")
        deadline = time.monotonic() + 10
        while not lab.verify_tcp():
            assert time.monotonic() < deadline, "sshd in the host namespace did not come up"
            time.sleep(0.2)
        yield lab
    finally:
        if sshd is not None:
            sshd.terminate()
            try:
                sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sshd.kill()
        # Anything the switch left running in the namespace (a timer) dies with it.
        for ns in (host_ns, ctl_ns):
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-KILL", pid], check=False)
            run("ip", "netns", "del", ns, check=False)


def process_alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def timer_alive(lab: Lab) -> bool:
    pid_file = lab.state_dir / "timer.pid"
    return pid_file.exists() and process_alive(int(pid_file.read_text().strip()))


def test_good_change_is_verified_committed_and_disarmed(lab: Lab) -> None:
    lab.write_script(SPEC)
    lab.step("stage")
    assert lab.state() == "staged"
    lab.step("arm")
    assert lab.state() == "armed" and timer_alive(lab)
    pid = int((lab.state_dir / "timer.pid").read_text())
    lab.step("apply")
    assert lab.state() == "applied"
    assert lab.master("eth0") == "br0"
    assert lab.addrs("br0") == [f"{HOST_IP}/24"] and lab.addrs("eth0") == []

    assert lab.verify(SPEC.verify_seconds)  # and commits over the same new connection
    assert lab.state() == "committed"
    assert not process_alive(pid), "the rollback timer is still running after commit"
    assert lab.stamp.exists()

    # Past the rollback deadline nothing was reverted.
    time.sleep(SPEC.rollback_seconds + 1)
    assert lab.state() == "committed"
    assert lab.master("eth0") == "br0" and lab.addrs("br0") == [f"{HOST_IP}/24"]
    assert lab.reachable()


def test_change_that_cuts_the_host_off_rolls_back_by_itself(lab: Lab) -> None:
    bad = replace(SPEC, address="10.10.9.2/24")  # the controller cannot reach the host any more
    lab.write_script(bad)
    lab.step("stage")
    lab.step("arm")
    armed_at = time.monotonic()
    lab.step("apply")
    assert lab.state() == "applied"
    assert not lab.reachable()

    assert not lab.verify(bad.verify_seconds)
    # The controller stops here: commit never runs. The host restores itself within the timeout.
    deadline = armed_at + bad.rollback_seconds + 10
    while lab.state() != "rolledback":
        assert time.monotonic() < deadline, (lab.state_dir / "log").read_text()
        time.sleep(0.5)
    assert not lab.link_exists("br0")
    assert lab.master("eth0") is None
    assert lab.addrs("eth0") == [f"{HOST_IP}/24"]
    assert lab.reachable()
    assert not lab.stamp.exists()
    # A late commit is refused: the change is gone.
    result = lab.step("commit", check=False)
    assert result.returncode != 0 and "rolled back" in result.stderr


def test_rollback_restores_an_existing_bridge_and_default_route(lab: Lab) -> None:
    """Second change on a host that already has br0 (re-run with a new address): the old one returns."""
    lab.write_script(SPEC)
    for step in ("stage", "arm", "apply"):
        lab.step(step)
    assert lab.verify(SPEC.verify_seconds)
    lab.sh("ip", "route", "add", "default", "via", CTL_IP, "dev", "br0")
    bad = replace(SPEC, address="10.10.9.2/24", gateway="10.10.9.1")
    lab.write_script(bad)
    lab.step("stage")
    lab.step("arm")
    lab.step("apply")
    assert lab.addrs("br0") == ["10.10.9.2/24"]
    assert not lab.verify(bad.verify_seconds)
    deadline = time.monotonic() + bad.rollback_seconds + 10
    while lab.state() != "rolledback":
        assert time.monotonic() < deadline, (lab.state_dir / "log").read_text()
        time.sleep(0.5)
    assert lab.link_exists("br0") and lab.master("eth0") == "br0"
    assert lab.addrs("br0") == [f"{HOST_IP}/24"]
    assert f"default via {CTL_IP} dev br0" in lab.sh("ip", "-4", "route", "show", "default").stdout
    assert lab.reachable()


def test_failing_apply_rolls_back_at_once(lab: Lab) -> None:
    """The tool itself fails (here: the port does not exist): restored immediately, no waiting."""
    bad = replace(SPEC, ports=("eth0", "nope0"))
    lab.write_script(bad)
    lab.step("stage")
    lab.step("arm")
    result = lab.step("apply", check=False)
    assert result.returncode != 0 and "old configuration was restored" in result.stderr
    assert lab.state() == "failed"
    assert not lab.link_exists("br0") and lab.addrs("eth0") == [f"{HOST_IP}/24"]
    assert not timer_alive(lab)
    assert lab.reachable()


def pyinfra(lab: Lab, tmp: Path, *args: str, data: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The pyinfra CLI in the controller namespace against the host namespace's sshd."""
    inventory = tmp / "inventory.py"
    inventory.write_text(
        f"kvm_hosts = [('hv', {{'ssh_hostname': {HOST_IP!r}, 'ssh_user': 'root', 'ssh_key': {str(lab.key)!r}, "
        f"'ssh_known_hosts_file': {str(lab.known_hosts)!r}, 'ssh_strict_host_key_checking': 'no'}})]\n"
    )
    deploy = tmp / "deploy_bridge.py"
    # deploys/bridge.py with the runtime backend and this test's state paths.
    deploy.write_text(
        "from deploys.network import bridge_network\n"
        f"bridge_network(backend='iproute2', state_dir={str(lab.state_dir)!r}, stamp={str(lab.stamp)!r}, "
        "timer='process')\n"
    )
    data_args = [arg for key, value in data.items() for arg in ("--data", f"{key}={value}")]
    return subprocess.run(
        ["ip", "netns", "exec", lab.ctl_ns, str(Path(sys.executable).parent / "pyinfra"), *args, *data_args]
        + [str(inventory), str(deploy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYINFRA_PROGRESS": "off"},
    )


def planned_change(result: subprocess.CompletedProcess[str]) -> bool:
    """From ``--dry --json``: does the bridge operation change host hv?"""
    plan = json.loads(result.stdout)["plan"]
    [op] = [op for op in plan if any("Bridge br0" in name for name in op["names"])]
    return "hv" in op["hosts_with_change"]


def test_deploy_end_to_end_with_pyinfra(lab: Lab, tmp_path: Path) -> None:
    """deploys.network through the pyinfra CLI: --dry changes nothing, the change is verified and
    committed, a re-run has nothing to do, and a change that cuts the host off fails and is rolled back
    to the committed bridge by the host itself."""
    good = {
        "kvm_bridge_ports": "eth0",
        "kvm_bridge_address": f"{HOST_IP}/24",
        "kvm_bridge_rollback_seconds": "30",
        "kvm_bridge_verify_seconds": "5",
    }
    dry = pyinfra(lab, tmp_path, "--dry", "--json", data=good)
    assert dry.returncode == 0, dry.stderr
    assert planned_change(dry)
    assert not lab.link_exists("br0") and not (lab.state_dir / "switch.sh").exists()

    first = pyinfra(lab, tmp_path, "-y", data=good)
    assert first.returncode == 0, first.stdout + first.stderr
    assert lab.state() == "committed"
    assert lab.master("eth0") == "br0" and lab.addrs("br0") == [f"{HOST_IP}/24"]
    assert json.loads(lab.stamp.read_text())["backend"] == "iproute2"
    assert not timer_alive(lab)

    again = pyinfra(lab, tmp_path, "--dry", "--json", data=good)
    assert again.returncode == 0, again.stderr
    assert not planned_change(again)
    log_size = (lab.state_dir / "log").stat().st_size
    rerun = pyinfra(lab, tmp_path, "-y", data=good)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (lab.state_dir / "log").stat().st_size == log_size, "a converged re-run touched the switch"

    bad = {**good, "kvm_bridge_address": "10.10.9.2/24"}
    started = time.monotonic()
    failed = pyinfra(lab, tmp_path, "-y", data=bad)
    assert failed.returncode != 0
    assert "the host's timer restores the old network configuration" in failed.stdout + failed.stderr
    while lab.state() != "rolledback":
        assert time.monotonic() - started < 30 + 40, (lab.state_dir / "log").read_text()
        time.sleep(0.5)
    assert lab.master("eth0") == "br0" and lab.addrs("br0") == [f"{HOST_IP}/24"]
    assert json.loads(lab.stamp.read_text())["address"] == f"{HOST_IP}/24"
    assert lab.reachable()
    after = pyinfra(lab, tmp_path, "--dry", "--json", data=good)
    assert after.returncode == 0 and not planned_change(after), after.stderr


@pytest.mark.parametrize("backend", ["ifcfg", "netplan"])
def test_failed_tool_restores_the_files_byte_for_byte(lab: Lab, tmp_path: Path, backend: str) -> None:
    """The file backends' snapshot for real, in a scratch tree: the tool is missing here, so the apply
    fails and the switch puts every file back as it was (content and mode) and removes the new ones."""
    root = tmp_path / "root"
    scripts = root / "etc/sysconfig/network-scripts"
    netplan = root / "etc/netplan"
    scripts.mkdir(parents=True)
    netplan.mkdir(parents=True)
    old_port = scripts / "ifcfg-eth0"
    old_port.write_text(
        "DEVICE=eth0\nBOOTPROTO=none\nIPADDR=10.10.5.2\nPREFIX=24\nHWADDR=52:54:00:12:34:56\n"
    )
    old_port.chmod(0o600)
    other = netplan / "50-cloud-init.yaml"
    other.write_text("network:\n  ethernets:\n    eth0: {dhcp4: true}\n")
    before = {path: (path.read_bytes(), path.stat().st_mode) for path in (old_port, other)}

    if Path("/run/systemd/system").exists() or shutil.which("netplan") or shutil.which("nmcli"):
        pytest.skip("the backend's real tool would act on this machine")
    script = switch_script(
        SPEC, backend, str(lab.state_dir), str(lab.stamp), apply_wait=20, root=str(root), timer="process"
    )
    (lab.state_dir / "switch.sh").write_text(script)
    lab.step("stage")
    lab.step("arm")
    result = lab.step("apply", check=False)
    assert result.returncode != 0 and "old configuration was restored" in result.stderr
    assert lab.state() == "failed"
    assert {path: (path.read_bytes(), path.stat().st_mode) for path in (old_port, other)} == before
    assert sorted(p.name for p in scripts.iterdir()) == ["ifcfg-eth0"]
    assert sorted(p.name for p in netplan.iterdir()) == ["50-cloud-init.yaml"]
    assert not lab.stamp.exists() and not timer_alive(lab)
    assert lab.addrs("eth0") == [f"{HOST_IP}/24"] and lab.reachable()
    # The new files really were in place when the tool failed.
    log = (lab.state_dir / "log").read_text()
    assert log.index("installed the new files") < log.index("apply failed; rolling back now")
