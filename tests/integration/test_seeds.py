"""cloud-init NoCloud seeds on the sandbox: one guest with ``cloudInit: true``, booted once.

build writes ``<vm>-seed.iso`` (0600) to the pool and attaches it as a virtio-scsi cdrom; the file read
back holds the domain's UUID, the users from host data and the MAC; a second build changes nothing;
``--dry`` with other users changes nothing; the guest comes up with its manifest FQDN from the seed's
local-hostname (its kernel mounts the ISO; DHCP alone would give the short name), with no sethostname;
new users rewrite the seed; delete removes it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from sandbox import client

pytestmark = [pytest.mark.integration, pytest.mark.guests]

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
VM = "sd-vm01"
FQDN = f"{VM}.sandbox.internal"
SEED = f"/data01/primary/{VM}-seed.iso"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk4n0p3Yb1hQ2c0Zt3rS2k5mYhQ2c0Zt3rS2k5mYhQ2 ops@laptop"
USERS = json.dumps([{"name": "ops", "ssh_authorized_keys": [KEY], "sudo": True}])
OTHER_USERS = json.dumps([{"name": "ci", "ssh_authorized_keys": [KEY]}])
MANIFEST = [
    {
        "host": "sm-01",
        "vmspecs": [
            {
                "name": VM,
                "hostname": FQDN,
                "ipaddress": "10.10.5.51",
                "vcpus": 1,
                "memoryGb": 1,
                "maxMemoryGb": 1,
                "numDisks": 0,
                "diskSize": 0,
                "cloudInit": True,
            }  # fmt: skip
        ],
    },
    {"host": "sm-02", "vmspecs": []},
]


class Seeds:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir
        self.build_output = ""

    def host(self, command: str, check: bool = True) -> str:
        return client.ssh(client.node_data(self.inventory, "sm-01"), command, check=check)

    def guest(self, command: str) -> str:
        return client.ssh(client.guest_data(self.inventory, "10.10.5.51"), command)

    def pyinfra(self, deploy: str, *data: str, dry: bool = False, flags: tuple[str, ...] = ()) -> str:
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(MANIFEST))
        (self.workdir / "inventory.json").write_text(json.dumps(self.inventory))
        env = client.workflow_env(path, self.workdir / "inventory.json", self.inventory["mgmt"]["name"])
        extra = [x for d in data for x in ("--data", d)]
        result = subprocess.run(
            [PYINFRA, *(["--dry"] if dry else ["-y"]), *flags, "inventories/manifest.py", f"deploys/{deploy}.py",
             *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result.stdout + result.stderr

    def seed(self) -> dict[str, bytes]:
        iso = pycdlib.PyCdlib()
        iso.open_fp(io.BytesIO(base64.b64decode(self.host(f"base64 -w0 {SEED}"))))
        files = {"label": iso.pvd.volume_identifier.rstrip()}
        for name in ("meta-data", "user-data", "network-config"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            files[name] = out.getvalue()
        return files

    def sha(self) -> str:
        return self.host(f"sha256sum {SEED}").split()[0]


@pytest.fixture(scope="module")
def seeds(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeds]:
    s = Seeds(sandbox_cluster, tmp_path_factory.mktemp("seeds"))
    before = s.host("virsh -q pool-list --all --name").split()
    s.pyinfra("pools")
    s.build_output = s.pyinfra("build", f"cloud_init_users={USERS}", flags=("-v", "--debug"))
    yield s
    s.host(f"virsh -q destroy {VM}; virsh -q undefine {VM}; rm -f /data01/primary/{VM}-*", check=False)
    for pool in ("default", "secondary"):
        if pool not in before:
            s.host(f"virsh -q pool-destroy {pool}; virsh -q pool-undefine {pool}", check=False)


def _changed(output: str) -> str:
    """The 'Success' column of pyinfra's grand total: hosts with a change ('-' when none)."""
    return next(line for line in output.splitlines() if "Grand total" in line).split()[3]


def test_build_writes_and_attaches_the_seed(seeds: Seeds) -> None:
    assert seeds.host(f"stat -c '%a %F' {SEED}").strip() == "600 regular file"
    blk = seeds.host(f"virsh -q domblklist {VM} --details --inactive")
    assert any(line.split()[:4] == ["file", "cdrom", "sda", SEED] for line in blk.splitlines()), blk
    xml = seeds.host(f"virsh dumpxml --inactive {VM}")
    assert "model='virtio-scsi'" in xml and "<readonly/>" in xml
    files = seeds.seed()
    uuid = seeds.host(f"virsh domuuid {VM}").strip()
    assert files["label"] == b"cidata"
    assert files["meta-data"] == f"instance-id: {uuid}\nlocal-hostname: {FQDN}\n".encode()
    assert (
        f'"{KEY}"'.encode() in files["user-data"] and b'sudo: "ALL=(ALL) NOPASSWD:ALL"' in files["user-data"]
    )
    assert b'macaddress: "52:54:00:' in files["network-config"] and b"dhcp4: true" in files["network-config"]


def test_the_seed_step_reads_the_state_again_after_the_clone_and_says_why(seeds: Seeds) -> None:
    # The seed is attached to the domain the clone has just defined: that needs the state after it.
    reads = re.findall(r"\[sm-01\]\s+Loaded fact facts\.libvirt\.Hypervisor\b", seeds.build_output)
    assert len(reads) == 2, seeds.build_output[-4000:]
    assert "sm-01: libvirt state read again: since the last read 1 operation(s) ran commands on it" in (
        seeds.build_output
    )


def test_second_build_and_dry_run_change_nothing(seeds: Seeds) -> None:
    sha = seeds.sha()
    again = seeds.pyinfra("seeds", f"cloud_init_users={USERS}")
    assert "[sm-01]   No changes" in again and _changed(again) == "-", again[-2000:]
    dry = seeds.pyinfra("seeds", f"cloud_init_users={OTHER_USERS}", dry=True)
    assert f"rewrite {SEED}" in dry, dry[-2000:]
    assert seeds.sha() == sha
    assert "ci" not in seeds.seed()["user-data"].decode()


def test_guest_comes_up_with_its_fqdn_from_the_seed(seeds: Seeds) -> None:
    seeds.pyinfra("start")
    seeds.pyinfra("wait", "wait_timeout=180")
    # DHCP offers the short name; only the seed's local-hostname carries the FQDN.
    assert seeds.guest("hostname; cat /run/kvmq/seed-hostname").split() == [FQDN, FQDN]
    assert seeds.guest("test -e /etc/hostname && echo yes || echo no").strip() == "no"


def test_new_users_rewrite_the_seed(seeds: Seeds) -> None:
    sha = seeds.sha()
    out = seeds.pyinfra("seeds", f"cloud_init_users={OTHER_USERS}")
    assert f"rewrite {SEED}" in out and "attach" not in out, out[-2000:]
    assert seeds.sha() != sha
    assert b'name: "ci"' in seeds.seed()["user-data"]
    assert seeds.host(f"stat -c '%a' {SEED}").strip() == "600"
    blk = seeds.host(f"virsh -q domblklist {VM} --inactive")
    assert blk.count(SEED) == 1


def test_delete_removes_the_seed(seeds: Seeds) -> None:
    started = time.monotonic()
    seeds.pyinfra("delete")
    assert time.monotonic() - started < 120
    assert seeds.host(f"ls /data01/primary/{VM}-* 2>/dev/null || true").strip() == ""
