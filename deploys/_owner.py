"""The owner tag of this manifest's DHCP reservations on a shared management node.

Several manifests may share one management node; each writes its reservations with its owner
tag (a ``# kvmq-owner <owner>`` comment on the addn-hosts line, ``inventories/dnsmasq_format.py``),
and build, delete, prune and the drift report act only on their own entries. The tag is the data key
``dhcp_owner`` when set, else derived from the manifest's path (``KVM_MANIFEST``, default
./manifest.json): its file name and a short hash of its absolute path, e.g. ``cluster-3fa2b1c9``. So
it is stable across runs from one checkout with the manifest format unchanged; run the same manifest
from another path (another checkout, another controller) with ``--data dhcp_owner=<tag>`` (or the
same key in the management node's data), else its entries count as another manifest's."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from deploys._settings import SettingError, setting
from inventories.dnsmasq_format import EntryError, check_owner
from inventories.loader import manifest_path


def derived_owner(path: Path) -> str:
    """``<file name>-<8 hex digits of the SHA-256 of the absolute path>``, within the owner tag rules."""
    absolute = path.expanduser().resolve()
    stem = re.sub(r"[^a-z0-9]+", "-", absolute.stem.lower()).strip("-")[:24].strip("-") or "manifest"
    return f"{stem}-{hashlib.sha256(str(absolute).encode()).hexdigest()[:8]}"


def reservation_owner(member: Any = None) -> str:
    """``dhcp_owner`` (of the current host, or of inventory host ``member``: the management node), else
    the tag derived from the manifest path; a bad value stops the run, naming it."""
    value = setting("dhcp_owner", member=member)
    if value in (None, ""):
        return derived_owner(manifest_path())
    try:
        return check_owner(value)
    except EntryError as exc:
        raise SettingError(f"dhcp_owner={value!r}: {exc}".replace(f"owner tag {value!r}: ", "")) from None
