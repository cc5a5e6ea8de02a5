"""Domains defined from a controller-side XML file: which file (by digest) a domain was defined from.

libvirt rewrites what it is given (units to KiB, ``pc`` to ``pc-i440fx-…``, a new UUID, no passwords in
its dump), so a defined domain never looks like its source file. Instead the define records the file's
SHA-256 in the domain's ``<metadata>`` under our own namespace; the domain is up to date while that
digest matches the file. Pure: XML text in, XML text out.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from operations.util.domain_xml import SOURCE_NAMESPACE as NAMESPACE
from operations.util.domain_xml import CloneError, parse_domain

PREFIX = "kvmq"
SOURCE_TAG = f"{{{NAMESPACE}}}source"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def recorded_digest(defined_xml: str) -> str | None:
    """The source digest a defined domain carries in its metadata (None: not defined from a file by us)."""
    try:
        root = parse_domain(defined_xml)
    except CloneError:
        return None
    element = root.find(f"metadata/{SOURCE_TAG}")
    return element.get("digest") if element is not None else None


def uuid_of(xml: str) -> str | None:
    text = parse_domain(xml).findtext("uuid")
    return text.strip() if text and text.strip() else None


def with_source(xml: str, file_digest: str, uuid: str | None = None) -> str:
    """The file's XML with our metadata element carrying ``file_digest``, and ``uuid`` when given.

    A ``<uuid>`` in the file that differs from ``uuid`` (the defined domain's) is refused: libvirt would
    reject the define, and the file names another domain.
    """
    root = parse_domain(xml)
    if uuid is not None:
        element = root.find("uuid")
        if element is None:
            element = ET.Element("uuid")
            name_index = next((i for i, child in enumerate(root) if child.tag == "name"), -1)
            root.insert(name_index + 1, element)
        elif (element.text or "").strip() and (element.text or "").strip().lower() != uuid.lower():
            raise CloneError(
                f"its <uuid> {(element.text or '').strip()} differs from the defined domain's {uuid}; "
                "remove the <uuid> line to redefine the domain in place"
            )
        element.text = uuid
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(SOURCE_TAG):
        metadata.remove(old)
    ET.SubElement(metadata, SOURCE_TAG, {"digest": file_digest})
    ET.register_namespace(PREFIX, NAMESPACE)
    return ET.tostring(root, encoding="unicode")
