"""The ISO 9660 writer, read back with pycdlib (a test-only dependency)."""

from __future__ import annotations

import io

import pycdlib
import pytest

from operations.util.iso9660 import SECTOR, IsoError, build_iso, level1_name

FILES = {
    "meta-data": b"instance-id: 0b1c\nlocal-hostname: vm01.example.internal\n",
    "user-data": b"#cloud-config\nusers: []\n",
    "network-config": b"version: 2\n" + b"x" * 5000,  # spans three sectors
}


def _open(data: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    return iso


def _read(iso: pycdlib.PyCdlib, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def test_label_names_and_content_read_back() -> None:
    iso = _open(build_iso("cidata", FILES))
    assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
    assert iso.has_joliet()
    assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == "cidata"
    names = [c.file_identifier().decode("utf-16-be") for c in iso.list_children(joliet_path="/")]
    assert sorted(n for n in names if n not in ("\x00", "\x00\x00") and n.strip(".\x00")) == sorted(FILES)
    for name, content in FILES.items():
        assert _read(iso, joliet_path=f"/{name}") == content
        assert _read(iso, iso_path=f"/{level1_name(name)}") == content
    primary = sorted(c.file_identifier() for c in iso.list_children(iso_path="/"))
    assert primary == [b".", b"..", b"META_DAT.;1", b"NETWORK_.;1", b"USER_DAT.;1"]


def test_output_is_deterministic_and_sector_aligned() -> None:
    first = build_iso("cidata", FILES)
    assert first == build_iso("cidata", dict(reversed(FILES.items())))
    assert len(first) % SECTOR == 0
    assert first != build_iso("cidata", {**FILES, "user-data": b"#cloud-config\n"})


def test_empty_file_reads_back_empty() -> None:
    iso = _open(build_iso("cidata", {"meta-data": b""}))
    assert _read(iso, joliet_path="/meta-data") == b""


@pytest.mark.parametrize(
    ("volume", "files", "message"),
    [
        ("ci data", {"a": b""}, "volume id 'ci data'"),
        ("x" * 17, {"a": b""}, "volume id"),
        ("cidata", {}, "1-40 files"),
        ("cidata", {"a/b": b""}, "file name 'a/b'"),
        ("cidata", {"a;1": b""}, "file name 'a;1'"),
        ("cidata", {"meta-data": b"", "meta_data": b""}, "collide"),
    ],
)
def test_bad_input_names_the_value(volume: str, files: dict[str, bytes], message: str) -> None:
    with pytest.raises(IsoError, match=message.replace("(", r"\(")):
        build_iso(volume, files)
