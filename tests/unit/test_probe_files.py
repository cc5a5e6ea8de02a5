"""The libvirt probe's view of pool entries, run for real (host python3, libvirt's test driver with a
directory pool in a temporary directory): planted links and FIFOs are never opened, and each entry's
owner, mode and type come from ``lstat``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from facts.libvirt import PROBE, Hypervisor

HOST_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    not Path(HOST_PYTHON).exists()
    or subprocess.run([HOST_PYTHON, "-c", "import libvirt"], capture_output=True).returncode != 0,
    reason="needs the host's python3 with the libvirt bindings",
)


def node(tmp_path: Path, pool: Path) -> str:
    xml = tmp_path / "node.xml"
    xml.write_text(
        f"<node><pool type='dir'><name>p</name><target><path>{pool}</path></target></pool></node>"
    )
    return f"test://{xml}"


def probe(uri: str, limit: int = 20) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [HOST_PYTHON, "-c", PROBE, uri, str(limit)], capture_output=True, text=True, timeout=limit + 10
    )
    return result, time.monotonic() - started


def files_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    files: dict[str, Any] = Hypervisor().process(result.stdout.splitlines()).to_dict()["files"]
    return files


def qcow2(path: Path, backing: str) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", backing, str(path), "1M"],
        check=True,
        timeout=30,
    )


def test_links_and_fifos_in_a_pool_are_never_opened(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.mkfifo(pool / "planted.fifo")
    (pool / "to-fifo.img").symlink_to(fifo)
    qcow2(pool / "real.qcow2", "/base/real.raw")
    (pool / "to-real.qcow2").symlink_to(pool / "real.qcow2")
    # A blocking open for writing returns as soon as anything opens the FIFO for reading. (A process,
    # not a thread: the test session may have gevent's monkey patching, where it would block all.)
    writer = subprocess.Popen(
        [HOST_PYTHON, "-c", "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY))", str(fifo)]
    )
    try:
        time.sleep(0.2)
        result, seconds = probe(node(tmp_path, pool))
        files = files_of(result)
        time.sleep(0.3)
        assert writer.poll() is None, "the probe opened the FIFO behind the planted link"
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer if it still waits
        try:
            writer.wait(5)
        finally:
            os.close(fd)
            if writer.poll() is None:
                writer.kill()
    assert seconds < 10
    assert files[str(pool / "to-fifo.img")]["kind"] == "link"
    assert files[str(pool / "to-fifo.img")]["backing"] is None
    assert files[str(pool / "planted.fifo")]["kind"] == "other"
    # Only what lstat calls a regular file has its header read; a link's target is not.
    assert files[str(pool / "real.qcow2")]["backing"] == "/base/real.raw"
    assert files[str(pool / "to-real.qcow2")] == {**files[str(pool / "to-real.qcow2")], "backing": None}


def test_a_fifo_planted_as_a_seed_does_not_hold_the_probe(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    os.mkfifo(pool / "vm1-seed.iso")
    (pool / "vm2-seed.iso").symlink_to(pool / "vm1-seed.iso")
    result, seconds = probe(node(tmp_path, pool), limit=15)
    files = files_of(result)
    assert seconds < 10
    assert files[str(pool / "vm1-seed.iso")]["kind"] == "other"
    assert files[str(pool / "vm2-seed.iso")]["kind"] == "link"
    assert "sha256" not in files[str(pool / "vm1-seed.iso")]


def test_owner_mode_and_type_are_reported_from_lstat(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    good, planted = pool / "vm1-seed.iso", pool / "vm2-seed.iso"
    good.write_bytes(b"seed")
    good.chmod(0o600)
    planted.write_bytes(b"seed")
    os.chown(planted, 65534, 65534)
    planted.chmod(0o666)
    (pool / "vm3-seed.iso").symlink_to(good)
    files = files_of(probe(node(tmp_path, pool))[0])
    assert files[str(good)]["uid"] == os.getuid() and files[str(good)]["mode"] == 0o600
    assert files[str(planted)]["uid"] == 65534 and files[str(planted)]["mode"] == 0o666
    assert files[str(planted)]["kind"] == "file" and files[str(planted)]["sha256"]
    assert files[str(pool / "vm3-seed.iso")]["kind"] == "link"
    assert "sha256" not in files[str(pool / "vm3-seed.iso")]
