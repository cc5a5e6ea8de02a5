"""A minimal ISO 9660 image writer with Joliet names: one root directory of small files.

Pure: bytes in, bytes out, no I/O. Enough for a cloud-init NoCloud seed (volume ``cidata`` holding
``meta-data``, ``user-data``, ``network-config``). The primary tree carries ISO 9660 level 1 names
(``META_DAT.;1``); the Joliet tree carries the real names, which Linux and cloud-init read. The
output depends only on the volume id and the files: every date is one fixed value, so identical
content gives an identical image (and digest).

Layout (2048-byte sectors): 0-15 system area, 16 primary volume descriptor, 17 Joliet
supplementary descriptor, 18 terminator, 19-22 the four path tables (primary L/M, Joliet L/M),
23 primary root directory, 24 Joliet root directory, then each file's data from a sector boundary.
"""

from __future__ import annotations

import re
import struct

SECTOR = 2048
# 2000-01-01 00:00:00 UTC: any fixed date keeps the image reproducible.
_DIR_DATE = bytes([100, 1, 1, 0, 0, 0, 0])
_VOL_DATE = b"2000010100000000\x00"
_NO_DATE = b"0000000000000000\x00"
_JOLIET_ESCAPE = b"%/E"  # UCS-2 level 3
_D_CHARS = re.compile(r"[A-Z0-9_]*")
_MAX_FILES = 40  # every directory fits one sector; a seed has three


class IsoError(ValueError):
    """The files cannot be written as asked (the message says which value)."""


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _pad(data: bytes, size: int, fill: bytes = b" ") -> bytes:
    if len(data) > size:
        raise IsoError(f"{data!r} is longer than {size} bytes")
    return data + fill * ((size - len(data)) // len(fill))


def _ucs2(text: str, size: int) -> bytes:
    # UCS-2 spaces; an odd-sized field (the 37-byte file ids) ends with one zero byte.
    return _pad(_pad(text.encode("utf-16-be"), size - size % 2, b"\x00 "), size, b"\x00")


def _record(identifier: bytes, extent: int, length: int, directory: bool) -> bytes:
    size = 33 + len(identifier) + (1 - len(identifier) % 2)
    body = (
        bytes([size, 0])
        + _both32(extent)
        + _both32(length)
        + _DIR_DATE
        + bytes([2 if directory else 0, 0, 0])
        + _both16(1)
        + bytes([len(identifier)])
        + identifier
    )
    return _pad(body, size, b"\x00")


def _path_table(extent: int, big_endian: bool) -> bytes:
    order = ">" if big_endian else "<"
    return bytes([1, 0]) + struct.pack(order + "I", extent) + struct.pack(order + "H", 1) + b"\x00\x00"


def level1_name(name: str) -> str:
    """The ISO 9660 level 1 identifier of ``name``: upper case d-characters, 8.3, version 1."""
    stem, _, ext = name.partition(".")
    stem = re.sub(r"[^A-Z0-9_]", "_", stem.upper())[:8] or "_"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext.upper())[:3]
    return f"{stem}.{ext};1"


def _descriptor(
    kind: int, volume_id: str, space: int, root: bytes, tables: tuple[int, int], joliet: bool
) -> bytes:
    text = (lambda s, n: _ucs2(s, n)) if joliet else (lambda s, n: _pad(s.encode("ascii"), n))
    data = (
        bytes([kind])
        + b"CD001\x01\x00"
        + text("", 32)  # system identifier
        + text(volume_id, 32)
        + bytes(8)
        + _both32(space)
        + _pad(_JOLIET_ESCAPE if joliet else b"", 32, b"\x00")
        + _both16(1)  # volume set size
        + _both16(1)  # volume sequence number
        + _both16(SECTOR)
        + _both32(10)  # path table size: the root alone
        + struct.pack("<I", tables[0])
        + bytes(4)
        + struct.pack(">I", tables[1])
        + bytes(4)
        + root
        + text("", 128)  # volume set
        + text("", 128)  # publisher
        + text("", 128)  # data preparer
        + text("", 128)  # application
        + text("", 37)  # copyright file
        + text("", 37)  # abstract file
        + text("", 37)  # bibliographic file
        + _VOL_DATE
        + _VOL_DATE
        + _NO_DATE
        + _NO_DATE
        + b"\x01\x00"
    )
    return _pad(data, SECTOR, b"\x00")


def build_iso(volume_id: str, files: dict[str, bytes]) -> bytes:
    """An ISO 9660 + Joliet image whose root directory holds ``files`` (name -> content).

    ``volume_id``: up to 16 characters of letters, digits and ``_`` (case kept, as cloud-init looks
    for the label ``cidata``). Names: up to 64 characters, no ``/``, ``;`` or control characters, and
    distinct once reduced to their level 1 form.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]{1,16}", volume_id):
        raise IsoError(f"volume id {volume_id!r}: 1-16 letters, digits or '_'")
    if not files or len(files) > _MAX_FILES:
        raise IsoError(f"an image holds 1-{_MAX_FILES} files, not {len(files)}")
    names = sorted(files)
    for name in names:
        if not re.fullmatch(r"[^\x00-\x1f\x7f/;\\*:?\"<>|]{1,64}", name) or name in (".", ".."):
            raise IsoError(f"file name {name!r} cannot be stored")
    primary = {level1_name(n): n for n in names}
    if len(primary) != len(names):
        raise IsoError(f"file names {names} collide in their ISO 9660 form")

    first_data = 25
    extents: dict[str, int] = {}
    sector = first_data
    for name in names:
        extents[name] = sector
        sector += max(1, -(-len(files[name]) // SECTOR))
    space = sector

    def directory(own: int, entries: list[tuple[bytes, str]]) -> bytes:
        data = _record(b"\x00", own, SECTOR, True) + _record(b"\x01", own, SECTOR, True)
        for identifier, name in entries:
            data += _record(identifier, extents[name], len(files[name]), False)
        return _pad(data, SECTOR, b"\x00")

    primary_dir = directory(23, [(k.encode("ascii"), v) for k, v in sorted(primary.items())])
    joliet_dir = directory(24, sorted((n.encode("utf-16-be"), n) for n in names))

    image = bytearray(16 * SECTOR)
    image += _descriptor(1, volume_id, space, _record(b"\x00", 23, SECTOR, True), (19, 20), False)
    image += _descriptor(2, volume_id, space, _record(b"\x00", 24, SECTOR, True), (21, 22), True)
    image += _pad(b"\xffCD001\x01", SECTOR, b"\x00")
    for extent, big in ((23, False), (23, True), (24, False), (24, True)):
        image += _pad(_path_table(extent, big), SECTOR, b"\x00")
    image += primary_dir + joliet_dir
    for name in names:
        data = files[name]
        image += data + bytes(-len(data) % SECTOR if data else SECTOR)
    assert len(image) == space * SECTOR
    return bytes(image)
