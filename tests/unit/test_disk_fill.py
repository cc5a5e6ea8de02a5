"""New disk files are filled where nobody else can reach them, then linked into the pool.

A pool directory may be writable by others (group kvm on an older setup, 1777 on an NFS share): a file
checked there and then reopened by path (``cp``, ``qemu-img create``, ``truncate``, ``>``) can be
swapped for a link in between, and root then writes through it. Fakes first on PATH do exactly that
swap right before the real tool runs, and the victim must stay untouched. The commands run for real
with ``sh`` (virsh: libvirt's test driver, or a stand-in).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from facts.util.host_state import HostState
from operations.util.clone_plan import clone_plan
from operations.util.cloud_init_seed import seed_plan
from operations.util.converge_plan import converge_plan
from tests.unit.fact_builders import BASE_XML, built_domain_data, host_data, typed
from tests.unit.vmspec_builders import kvmhost01 as spec
from tests.unit.vmspec_builders import kvmhost01_with_cloud_init as seed_spec

TEST_URI = "test:///default"


def swapper(bin_dir: Path, tool: str, final: Path, victim: Path, only_a_file: bool = False) -> None:
    """A ``tool`` that, like a racing member of group kvm, turns ``final`` into a link to ``victim``
    (whatever is there, or nothing; ``only_a_file``: only a regular file) and then runs the real one."""
    bin_dir.mkdir(exist_ok=True)
    real = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
    fake = bin_dir / tool
    swap = f"rm -f '{final}'; ln -s '{victim}' '{final}'"
    if only_a_file:
        swap = f"if [ -f '{final}' ] && [ ! -L '{final}' ]; then {swap}; fi"
    fake.write_text(f"#!/bin/sh\n{swap}\nexec '{real}' \"$@\"\n")
    fake.chmod(0o755)


def run(command: Any, bin_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["sh", "-c", command.get_raw_value()],
        input=stdin or "",
        text=True,
        capture_output=True,
        timeout=60,
        env=env,
    )


def pool_and_victim(tmp_path: Path) -> tuple[Path, Path]:
    pool = tmp_path / "pool"
    pool.mkdir()
    pool.chmod(0o775)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    return pool, victim


def clone_host(tmp_path: Path, pool: Path) -> HostState:
    base = tmp_path / "base.img"
    base.write_bytes(b"b" * 4096)
    snap = host_data()
    snap["pools"]["default"]["path"] = str(pool)
    snap["domains"]["centos7"]["xml"] = BASE_XML.replace("/secondary/centos7-vda.img", str(base))
    return typed(snap)


def test_a_full_copy_never_writes_through_a_link_swapped_in_before_the_copy(tmp_path: Path) -> None:
    pool, victim = pool_and_victim(tmp_path)
    final = pool / "kvmhost01-vda.img"
    swapper(tmp_path / "bin", "cp", final, victim)
    plan = clone_plan(spec(num_disks=0), clone_host(tmp_path, pool), TEST_URI)
    result = run(plan.command, tmp_path / "bin", plan.stdin)
    assert victim.read_bytes() == b"precious", "root wrote through the swapped link"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert result.returncode != 0
    assert f"kvm-qemu: {final} appeared meanwhile; refusing to replace it" in result.stderr, result.stderr
    assert final.is_symlink()  # not ours: left alone
    assert [p.name for p in pool.iterdir()] == ["kvmhost01-vda.img"]  # no staging left behind


def test_a_data_disk_is_not_truncated_through_a_swapped_link(tmp_path: Path) -> None:
    pool, victim = pool_and_victim(tmp_path)
    final = pool / "kvmhost01-vdc.img"
    swapper(tmp_path / "bin", "truncate", final, victim)
    snap = host_data({"kvmhost01": built_domain_data()})
    snap["pools"]["default"]["path"] = str(pool)
    plan = converge_plan(spec(num_disks=2, disk_size_gib=1), typed(snap), TEST_URI)
    result = run(plan.command, tmp_path / "bin")
    assert victim.read_bytes() == b"precious" and victim.stat().st_size == 8
    assert result.returncode != 0


def test_a_linked_clone_overlay_is_not_created_through_a_swapped_link(tmp_path: Path) -> None:
    pool, victim = pool_and_victim(tmp_path)
    final = pool / "kvmhost01-vda.qcow2"
    swapper(tmp_path / "bin", "qemu-img", final, victim)
    plan = clone_plan(spec(num_disks=0, clone="linked"), clone_host(tmp_path, pool), TEST_URI)
    result = run(plan.command, tmp_path / "bin", plan.stdin)
    assert victim.read_bytes() == b"precious"
    assert result.returncode != 0


def test_a_seed_is_not_written_through_a_swapped_link(tmp_path: Path) -> None:
    pool, victim = pool_and_victim(tmp_path)
    final = pool / "kvmhost01-seed.iso"
    # A fake ``timeout`` (every step runs under it) swaps the file once it is there, as in the report.
    swapper(tmp_path / "bin", "timeout", final, victim, only_a_file=True)
    snap = host_data({"kvmhost01": built_domain_data()})
    snap["pools"]["default"]["path"] = str(pool)
    plan = seed_plan(seed_spec(), typed(snap), TEST_URI, [])
    result = run(plan.command, tmp_path / "bin", plan.stdin)
    assert victim.read_bytes() == b"precious"
    assert result.returncode != 0


def test_without_a_race_the_files_land_in_the_pool_0600_and_nothing_else_is_left(tmp_path: Path) -> None:
    pool, _ = pool_and_victim(tmp_path)
    plan = clone_plan(spec(num_disks=1, disk_size_gib=1), clone_host(tmp_path, pool), TEST_URI)
    result = run(plan.command, tmp_path / "empty-bin", plan.stdin)
    assert result.returncode == 0, result.stderr
    entries = {p.name: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_nlink) for p in pool.iterdir()}
    assert entries == {"kvmhost01-vda.img": (0o600, 1), "kvmhost01-vdb.img": (0o600, 1)}
    assert (pool / "kvmhost01-vda.img").read_bytes() == b"b" * 4096


def test_a_full_copy_creates_its_file_itself(tmp_path: Path) -> None:
    # cp into a file made beforehand opens it with O_TRUNC, and ext4 then flushes every byte of the
    # copy at close (auto_da_alloc): the copy of a base took twice as long. cp must make the file.
    pool, _victim = pool_and_victim(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["sh", "-c", "command -v cp"], capture_output=True, text=True).stdout.strip()
    seen = tmp_path / "seen"
    fake = bin_dir / "cp"
    fake.write_text(
        '#!/bin/sh\nfor last; do :; done\nif [ -e "$last" ]; then echo existed; else echo new; fi'
        f" > '{seen}'\nexec '{real}' \"$@\"\n"
    )
    fake.chmod(0o755)
    plan = clone_plan(spec(num_disks=0), clone_host(tmp_path, pool), TEST_URI)
    result = run(plan.command, bin_dir, plan.stdin)
    assert result.returncode == 0, result.stderr
    assert seen.read_text() == "new\n"
    final = pool / "kvmhost01-vda.img"
    assert final.is_file() and stat.S_IMODE(final.stat().st_mode) == 0o600
