"""cloud-init seeds: host data checks, the seed's files, the plans (rendered commands), clone UUIDs,
delete ownership of the seed. Pure functions, no host."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from facts.libvirt import PROBE, Hypervisor
from inventories.manifest_model import ManifestError, mac_for, parse
from operations.util.cloud_init_seed import (
    SeedError,
    seed_files,
    seed_plan,
    stray_seed_note,
    validate_users,
)
from operations.util.delete_plan import delete_plan
from operations.util.domain_xml import clone_xml, plan_disks, stable_uuid
from operations.util.storage_ownership import owned_volumes
from tests.unit.command_text import rendered
from tests.unit.fact_builders import BASE_XML, built_domain_data, host_data, typed
from tests.unit.vmspec_builders import kvmhost01_with_cloud_init as spec

URI = "qemu:///system"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk4n0p3Yb1hQ2c0Zt3rS2k5mYhQ2c0Zt3rS2k5mYhQ2 ops@laptop"
UUID = "1c6e8f5a-3b1d-4c2e-9f7a-0d5b8e2c4a61"
SEED = "/data01/primary/kvmhost01-seed.iso"
USERS = [{"name": "ops", "ssh_authorized_keys": [KEY], "sudo": True}]


def domain(state: str = "shut off", seed: bool = False, controller: bool = False) -> dict[str, Any]:
    d = built_domain_data(state, uuid=UUID)
    if seed:
        cdrom = {"target": "sda", "device": "cdrom", "path": SEED, "bus": "scsi"}
        d["config"]["disks"].append(cdrom)
        d["disks"].append(copy.deepcopy(cdrom))
    if controller:
        d["xml"] = (
            "<domain><devices><controller type='scsi' index='0' model='virtio-scsi'/></devices></domain>"
        )
    return d


def with_seed_file(snap: dict[str, Any], content: bytes | None) -> dict[str, Any]:
    if content is not None:
        snap["files"] = {
            SEED: {
                "kind": "file", "backing": None, "uid": 0, "mode": 0o600,
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        }  # fmt: skip
    return snap


def image_of(plan: Any) -> bytes:
    return gzip.decompress(base64.b64decode(plan.stdin))


def read_back(image: bytes) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    out = {}
    for name in ("meta-data", "user-data", "network-config"):
        buffer = io.BytesIO()
        iso.get_file_from_iso_fp(buffer, joliet_path=f"/{name}")
        out[name] = buffer.getvalue()
    assert iso.pvd.volume_identifier.rstrip() == b"cidata"
    return out


# --- host data -------------------------------------------------------------------------------------


def test_users_are_normalised() -> None:
    assert validate_users(USERS) == [
        {"name": "ops", "ssh_authorized_keys": [KEY], "sudo": "ALL=(ALL) NOPASSWD:ALL"}
    ]
    assert validate_users([{"name": "ci"}]) == [{"name": "ci", "ssh_authorized_keys": [], "sudo": False}]
    assert validate_users(None) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "ops"}, "cloud_init_users: expected a list"),
        (["ops"], r"cloud_init_users\[0\]: expected a mapping"),
        ([{"name": "ops\n"}], r"cloud_init_users\[0\]\.name: 'ops\\n' is not a user name"),
        ([{"name": "Root"}], r"\.name: 'Root' is not a user name"),
        (
            [{"name": "ops", "ssh_authorized_keys": [KEY + "\n"]}],
            r"ssh_authorized_keys\[0\]: .* is not one OpenSSH",
        ),
        ([{"name": "ops", "ssh_authorized_keys": [KEY + "\nssh-rsa AAAA x"]}], r"ssh_authorized_keys\[0\]"),
        ([{"name": "ops", "ssh_authorized_keys": KEY}], r"ssh_authorized_keys: expected a list"),
        ([{"name": "ops", "sudo": "ALL\nroot ALL=(ALL) ALL"}], r"\[0\]\.sudo: .* is not true, false or one"),
        ([{"name": "ops", "groups": "wheel"}], r"unknown key\(s\) 'groups'"),
        ([{"name": "ops"}, {"name": "ops"}], r"\[1\]\.name: 'ops' is listed twice"),
    ],
)
def test_bad_users_name_the_key_and_value(value: Any, message: str) -> None:
    with pytest.raises(SeedError, match=message):
        validate_users(value)


def test_manifest_cloud_init_flag() -> None:
    vm = {
        "name": "vm01", "hostname": "vm01.example.internal", "ipaddress": "10.10.5.11", "vcpus": 1,
        "memoryGb": 1, "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0,
    }  # fmt: skip
    hosts = parse(
        [
            {
                "host": "sm-01",
                "vmspecs": [
                    vm,
                    {
                        **vm,
                        "name": "vm02",
                        "ipaddress": "10.10.5.12",
                        "hostname": "vm02.example.internal",
                        "cloudInit": True,
                    },
                ],
            }
        ]
    )
    assert [s.cloud_init for s in hosts[0].vmspecs] == [False, True]
    with pytest.raises(ManifestError, match=r"vmspecs\[0\]\.cloudInit: 'yes' is not of type boolean"):
        parse([{"host": "sm-01", "vmspecs": [{**vm, "cloudInit": "yes"}]}])


# --- content ---------------------------------------------------------------------------------------


def test_seed_files_content() -> None:
    files = seed_files(spec(), UUID, validate_users(USERS))
    assert files["meta-data"] == f"instance-id: {UUID}\nlocal-hostname: kvmhost01.chnet.internal\n".encode()
    assert files["user-data"].decode() == (
        "#cloud-config\n"
        'fqdn: "kvmhost01.chnet.internal"\n'
        "users:\n"
        '  - name: "ops"\n'
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"\n'
        "    ssh_authorized_keys:\n"
        f'      - "{KEY}"\n'
    )
    assert files["network-config"].decode() == (
        "version: 2\nethernets:\n  nic0:\n    match:\n"
        f'      macaddress: "{mac_for("kvmhost01")}"\n    dhcp4: true\n'
    )


# --- plans -----------------------------------------------------------------------------------------

WRITE = '( umask 077; out=0; in=; t=; cleanup() { if [ -n "$in" ]; then for f in /data01/primary/kvmhost01-seed.iso ;'
FILL = "sh -c 'base64 -d | gzip -dc > \"$1\"' sh ./kvmhost01-seed.iso"
CONTROLLER = (
    "printf '%s\\n' '<controller type=\"scsi\" model=\"virtio-scsi\"/>' | "
    "virsh -q -c qemu:///system attach-device kvmhost01 /dev/stdin --config >/dev/null"
)
ATTACH = (
    "virsh -q -c qemu:///system attach-disk kvmhost01 /data01/primary/kvmhost01-seed.iso {target} --type cdrom "
    "--targetbus scsi --subdriver raw --mode readonly --config >/dev/null"
)


def test_new_domain_at_dry_run_uses_the_uuid_the_clone_gets() -> None:
    plan = seed_plan(spec(), typed(host_data()), URI, validate_users(USERS), executing=False)
    text = rendered(plan.command)
    assert text.startswith(WRITE)
    assert FILL in text
    assert text.endswith(" && " + CONTROLLER + " && " + ATTACH.format(target="sda"))
    files = read_back(image_of(plan))
    assert files["meta-data"].startswith(f"instance-id: {stable_uuid('kvmhost01')}\n".encode())
    assert plan.actions == [
        f"write {SEED} (instance-id {stable_uuid('kvmhost01')}, hostname kvmhost01.chnet.internal, 1 user(s))",
        "add a virtio-scsi controller",
        "attach /data01/primary/kvmhost01-seed.iso as cdrom sda",
    ]


def test_dry_run_target_and_controller_follow_the_base() -> None:
    snap = host_data()
    base = snap["domains"]["centos7"]
    base["disks"].append({"target": "sda", "device": "cdrom", "path": "/secondary/other.iso"})
    base["xml"] = (
        "<domain><devices><controller type='scsi' index='0' model='virtio-scsi'/></devices></domain>"
    )
    text = rendered(seed_plan(spec(), typed(snap), URI, [], executing=False).command)
    assert "attach-device" not in text and text.endswith(" && " + ATTACH.format(target="sdb"))


def test_missing_domain_at_execute_is_only_a_note() -> None:
    plan = seed_plan(spec(), typed(host_data()), URI, [], executing=True)
    assert plan.command is None and not plan.changes
    assert plan.notes == ["not defined on this host: no seed (run deploys/build.py)"]


def test_existing_domain_gets_its_own_uuid_and_a_free_scsi_target() -> None:
    d = domain(controller=True)
    d["config"]["disks"].append({"target": "sda", "device": "disk", "path": "/data01/primary/x.img"})
    plan = seed_plan(spec(), typed(host_data({"kvmhost01": d})), URI, [])
    text = rendered(plan.command)
    assert "attach-device" not in text  # it has a SCSI controller already
    assert text.endswith(" && " + ATTACH.format(target="sdb"))
    assert read_back(image_of(plan))["meta-data"].startswith(f"instance-id: {UUID}\n".encode())
    assert read_back(image_of(plan))["user-data"] == b'#cloud-config\nfqdn: "kvmhost01.chnet.internal"\n'


def test_up_to_date_and_attached_seed_is_a_no_op() -> None:
    current = image_of(seed_plan(spec(), typed(host_data({"kvmhost01": domain()})), URI, []))
    snap = with_seed_file(host_data({"kvmhost01": domain(seed=True)}), current)
    plan = seed_plan(spec(), typed(snap), URI, [])
    assert plan.command is None and plan.stdin is None and not plan.changes


def test_changed_content_rewrites_the_file_only() -> None:
    old = image_of(seed_plan(spec(), typed(host_data({"kvmhost01": domain()})), URI, []))
    snap = with_seed_file(host_data({"kvmhost01": domain("running", seed=True)}), old)
    plan = seed_plan(spec(), typed(snap), URI, validate_users(USERS))
    text = rendered(plan.command)
    assert text.startswith(
        '{ for f in /data01/primary/kvmhost01-seed.iso ; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then'
    )
    assert 'rm -f -- "$f"; done; } && ' + WRITE in text
    assert "attach" not in text
    assert b"ops" in read_back(image_of(plan))["user-data"]
    assert plan.actions[0].startswith(f"rewrite {SEED}")
    assert plan.notes == ["running: the guest reads the new seed at its next boot"]


def _pool_at(directory: Path, seed_content: bytes | None) -> dict[str, Any]:
    snap = host_data({"kvmhost01": domain(seed=True)})
    snap["pools"]["default"]["path"] = str(directory)
    for disk in snap["domains"]["kvmhost01"]["config"]["disks"]:
        if disk["path"] == SEED:
            disk["path"] = str(directory / "kvmhost01-seed.iso")
    if seed_content is not None:
        path = str(directory / "kvmhost01-seed.iso")
        snap["files"] = {
            path: {
                "kind": "file", "backing": None, "uid": 0, "mode": 0o600,
                "sha256": hashlib.sha256(seed_content).hexdigest(),
            }
        }  # fmt: skip
    return snap


def _run(plan: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", plan.command.get_raw_value()],
        input=plan.stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_write_and_rewrite_commands_run_in_a_real_shell(tmp_path: Path) -> None:
    """The rendered commands (no virsh step: the seed is attached already) write the image, 0600."""
    seed = tmp_path / "kvmhost01-seed.iso"
    first = seed_plan(spec(), typed(_pool_at(tmp_path, None)), URI, [])
    result = _run(first)
    assert result.returncode == 0, result.stderr
    assert seed.read_bytes() == image_of(first) and stat.S_IMODE(seed.stat().st_mode) == 0o600
    second = seed_plan(spec(), typed(_pool_at(tmp_path, seed.read_bytes())), URI, validate_users(USERS))
    assert second.actions[0].startswith("rewrite")
    result = _run(second)
    assert result.returncode == 0, result.stderr
    assert seed.read_bytes() == image_of(second) and stat.S_IMODE(seed.stat().st_mode) == 0o600
    # A link planted at the seed's path is neither followed nor replaced.
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    seed.unlink()
    seed.symlink_to(target)
    third = seed_plan(spec(), typed(_pool_at(tmp_path, b"old")), URI, [])
    result = _run(third)
    assert result.returncode != 0 and "is not a plain file any more; refusing to replace it" in result.stderr
    assert seed.is_symlink() and target.read_bytes() == b"keep"


HOST_PYTHON = "/usr/bin/python3"


def _probed_files(pool: Path) -> dict[str, Any]:
    """The ``files`` the real libvirt probe reports for a directory pool at ``pool`` (test driver)."""
    if subprocess.run([HOST_PYTHON, "-c", "import libvirt"], capture_output=True).returncode:
        pytest.skip("needs the host's python3 with the libvirt bindings")
    node = pool.parent / "node.xml"
    node.write_text(
        f"<node><pool type='dir'><name>default</name><target><path>{pool}</path></target></pool></node>"
    )
    result = subprocess.run(
        [HOST_PYTHON, "-c", PROBE, f"test://{node}", "20"], capture_output=True, text=True, timeout=40
    )
    assert result.returncode == 0, result.stderr
    files: dict[str, Any] = Hypervisor().process(result.stdout.splitlines()).to_dict()["files"]
    return files


@pytest.mark.parametrize("owner, mode", [(65534, 0o666), (0, 0o644), (65534, 0o600)])
def test_a_seed_chowned_or_opened_up_after_the_build_is_replaced(
    tmp_path: Path, owner: int, mode: int
) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    seed = pool / "kvmhost01-seed.iso"
    first = seed_plan(spec(), typed(_pool_at(pool, None)), URI, [])
    assert _run(first).returncode == 0
    os.chown(seed, owner, owner)
    seed.chmod(mode)  # same content: only the owner or mode differs
    snap = _pool_at(pool, None)
    snap["files"] = _probed_files(pool)
    second = seed_plan(spec(), typed(snap), URI, [])
    assert second.command is not None, "a seed someone else owns or can write was kept"
    assert second.actions[0].startswith(
        f"replace {seed}, owned by uid {owner} with mode {mode:04o}, not root 0600, with a new seed"
    )
    result = _run(second)
    assert result.returncode == 0, result.stderr
    info = seed.lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600) and stat.S_ISREG(info.st_mode)
    assert seed.read_bytes() == image_of(second)
    # Now root's and 0600 with the same content: kept.
    snap["files"] = _probed_files(pool)
    assert seed_plan(spec(), typed(snap), URI, []).command is None


@pytest.mark.parametrize("kind", ["link", "dir", "other"])
def test_a_seed_path_that_is_not_a_plain_file_is_refused(kind: str) -> None:
    snap = host_data({"kvmhost01": domain()})
    snap["files"] = {SEED: {"kind": kind, "backing": None}}
    plan = seed_plan(spec(), typed(snap), URI, [])
    assert plan.command is None
    assert plan.error == f"{SEED} is a {kind}, not a plain file; refusing to replace it"


def test_missing_pool_is_an_error() -> None:
    plan = seed_plan(spec(pool="nope"), typed(host_data({"kvmhost01": domain()})), URI, [])
    assert plan.error == "storage pool nope is not defined on this host (see deploys/pools.py)"


def test_seed_left_attached_when_cloud_init_is_turned_off_is_reported() -> None:
    snap = host_data({"kvmhost01": domain(seed=True)})
    assert stray_seed_note(spec(cloud_init=False), typed(snap)) == (
        f"{SEED} is still attached although cloudInit is off: left as is"
    )
    assert stray_seed_note(spec(cloud_init=False), typed(host_data({"kvmhost01": domain()}))) is None


# --- clone UUID and delete -------------------------------------------------------------------------


def test_clone_with_cloud_init_gets_the_stable_uuid() -> None:
    vm = spec()
    xml = clone_xml(vm, BASE_XML, plan_disks(vm, BASE_XML, "/data01/primary"))
    assert re.search(rf"<uuid>{stable_uuid('kvmhost01')}</uuid>", xml)
    assert stable_uuid("kvmhost01") != stable_uuid("kvmhost02")
    plain = spec(cloud_init=False)
    assert "<uuid>" not in clone_xml(plain, BASE_XML, plan_disks(plain, BASE_XML, "/data01/primary"))


def test_delete_removes_the_seed_it_owns() -> None:
    snap = host_data({"kvmhost01": domain(seed=True)})
    owned, kept = owned_volumes("kvmhost01", typed(snap).domains["kvmhost01"], typed(snap))
    assert ("default", "kvmhost01-seed.iso") in owned
    assert not any("seed" in k for k in kept)
    plan = delete_plan("kvmhost01", typed(snap), URI)
    assert plan is not None and f"delete {SEED}" in plan.actions


def test_delete_finishes_a_leftover_seed_and_keeps_one_another_domain_uses() -> None:
    snap = host_data()
    snap["files"] = {SEED: {"kind": "file", "backing": None}}
    plan = delete_plan("kvmhost01", typed(snap), URI)
    assert plan is not None and plan.actions == ["domain already undefined", f"delete {SEED}"]
    other = built_domain_data()
    other["config"]["disks"].append({"target": "sda", "device": "cdrom", "path": SEED})
    other["disks"].append({"target": "sda", "device": "cdrom", "path": SEED})
    snap = host_data({"kvmhost01": domain(seed=True), "other": other})
    owned, kept = owned_volumes("kvmhost01", typed(snap).domains["kvmhost01"], typed(snap))
    assert ("default", "kvmhost01-seed.iso") not in owned
    assert f"{SEED} (disk of domain other)" in kept


# --- host data through the deploy ------------------------------------------------------------------


def test_seed_users_from_host_data_or_json_and_errors_name_the_key() -> None:
    from deploys._seeds import seed_users
    from deploys._settings import SettingError
    from tests.unit.test_build_settings import with_data

    assert with_data({"cloud_init_users": USERS}, seed_users)[0]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert with_data({"cloud_init_users": '[{"name": "ci"}]'}, seed_users)[0]["name"] == "ci"
    assert with_data({}, seed_users) == []
    with pytest.raises(SettingError, match=r"^cloud_init_users='\[\{': not JSON"):
        with_data({"cloud_init_users": "[{"}, seed_users)
    with pytest.raises(SettingError, match=r"^cloud_init_users\[0\]\.name: 'Bad' is not a user name"):
        with_data({"cloud_init_users": [{"name": "Bad"}]}, seed_users)


def test_the_fact_passes_each_seeds_digest_on() -> None:
    from facts.util.libvirt_parse import files_from

    found = files_from(
        {"files": {SEED: {"kind": "file", "backing": None, "sha256": "ab" * 32}, "/x.img": {"kind": "file"}}}
    )
    files = {path: entry.to_dict() for path, entry in found.items()}
    assert files[SEED] == {"kind": "file", "backing": None, "sha256": "ab" * 32}
    assert files["/x.img"] == {"kind": "file", "backing": None}
