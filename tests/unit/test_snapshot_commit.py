"""A snapshot delete commits only into the file recorded below the overlay (real qemu-img files).

The overlay's header may have been repointed (``qemu-img rebase -u``) since the snapshot was taken;
``qemu-img commit`` writes into whatever the header names, so the delete command reads the header
right before the commit and refuses a mismatch. ``virsh`` is a stand-in on PATH (the command stops
before it when the check fails).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from facts.util.libvirt_parse import snapshots_from
from operations.util.snapshot_plan import delete_plan
from tests.unit.fact_builders import typed, typed_domain

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None, reason="needs qemu-img and qemu-io"
)

URI = "qemu:///system"
MIB = 1024 * 1024


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=60)


def lab(tmp_path: Path) -> tuple[Path, Path, Path, Path, dict[str, Any]]:
    """``pool/vm1-vda.img`` (raw, recorded below) <- ``pool/vm1-vda@s1.qcow2`` holding a write, and an
    unrelated ``pool/other.img``; plus a fake ``virsh`` in ``bin``."""
    pool, bin_dir = tmp_path / "pool", tmp_path / "bin"
    pool.mkdir()
    bin_dir.mkdir()
    below, overlay, other = pool / "vm1-vda.img", pool / "vm1-vda@s1.qcow2", pool / "other.img"
    below.write_bytes(b"\x01" * MIB)
    other.write_bytes(b"\x02" * MIB)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(below), str(overlay))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", str(overlay))
    (bin_dir / "virsh").write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n")
    (bin_dir / "virsh").chmod(0o755)
    snapshot_xml = (
        "<domainsnapshot><name>s1</name><state>disk-snapshot</state><creationTime>1764100000</creationTime>"
        f"<disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        f"<source file='{overlay}'/></disk></disks><domain type='kvm'><name>vm1</name><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{below}'/>"
        "<target dev='vda'/></disk></devices></domain></domainsnapshot>"
    )
    domain = {
        "state": "shut off",
        "persistent": True,
        "disks": [{"target": "vda", "device": "disk", "path": str(overlay), "format": "qcow2"}],
        "xml": "<domain><name>vm1</name><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{overlay}'/><target dev='vda'/></disk>"
        "</devices></domain>",
        "snapshots": snapshots_from({"name": "vm1", "snapshots": [{"xml": snapshot_xml, "current": True}]}),
    }
    return below, overlay, other, bin_dir, domain


def run_delete(domain: dict[str, Any], bin_dir: Path) -> subprocess.CompletedProcess[str]:
    plan = delete_plan("vm1", "s1", typed_domain(domain, "vm1"), typed({"domains": {"vm1": domain}}), URI, timeout=30)
    assert plan is not None and plan.error is None and plan.command is not None
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["sh", "-c", plan.command.get_raw_value()],
        input=plan.stdin or "",
        text=True,
        capture_output=True,
        timeout=120,
        env=env,
    )


def test_a_repointed_overlay_is_not_committed_into_the_file_its_header_names(tmp_path: Path) -> None:
    below, overlay, other, bin_dir, domain = lab(tmp_path)
    qemu("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(other), str(overlay))
    before_other, before_below = digest(other), digest(below)
    result = run_delete(domain, bin_dir)
    assert result.returncode != 0
    assert digest(other) == before_other  # the file the header names was not written
    assert digest(below) == before_below
    assert overlay.exists()  # nothing removed
    assert (
        f"kvm-qemu: {overlay} is now on {other}, not on the snapshot's recorded file {below}; "
        "refusing to commit it" in result.stderr
    ), result.stderr


def test_the_overlay_is_committed_into_the_recorded_file(tmp_path: Path) -> None:
    below, overlay, other, bin_dir, domain = lab(tmp_path)
    before_other = digest(other)
    result = run_delete(domain, bin_dir)
    assert result.returncode == 0, result.stderr
    assert below.read_bytes()[: 64 * 1024] == b"\xab" * 64 * 1024  # the write reached the recorded file
    assert digest(other) == before_other
    assert not overlay.exists()
