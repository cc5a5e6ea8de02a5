"""Reaching the sandbox from the controller: SSH to a node, and the environment for a pyinfra run."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any


def node_data(inventory: dict[str, Any], name: str) -> dict[str, Any]:
    """SSH data of a hypervisor, the management node or a guest stand-in, by name."""
    if name == inventory["mgmt"]["name"] or name == "mgmt":
        return inventory["mgmt"]["data"]
    return inventory["hosts"].get(name) or inventory["guests"][name]


def guest_data(inventory: dict[str, Any], address: str) -> dict[str, Any]:
    """SSH data of a booted guest at address on the cluster network (through the ProxyCommand)."""
    return {**inventory["guest_defaults"], "ssh_hostname": address}


def ssh(
    data: dict[str, Any], command: str, check: bool = True, timeout: int = 120, stdin: str | None = None
) -> str:
    """Run ``command`` on a node with the system ssh client; stdout, or AssertionError when ``check``."""
    config = ["-F", data["ssh_config_file"]] if data.get("ssh_config_file") else []
    result = subprocess.run(
        ["ssh", *config, "-i", data["ssh_key"], "-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", str(data.get("ssh_port", 22)),
         f"{data.get('ssh_user', 'root')}@{data['ssh_hostname']}", command],
        capture_output=True, text=True, timeout=timeout,
        **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}),
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{command!r} on {data['ssh_hostname']} failed: {result.stderr.strip()}")
    return result.stdout


def workflow_env(manifest: Path, inventory_file: Path, mgmt: str) -> dict[str, str]:
    """Environment for ``pyinfra inventories/manifest.py ...`` against the sandbox."""
    return {
        **os.environ,
        "KVM_MANIFEST": str(manifest),
        "KVM_INVENTORY_DATA": str(inventory_file),
        "KVM_MGMT_HOST": mgmt,
        "PYINFRA_PROGRESS": "off",
    }


# What a file holds, independent of how the file system happens to report its extents: SEEK_DATA
# may count unwritten (zero) ranges as data while their pages are cached, and not afterwards. So
# every aligned block touched by a data extent is read, and only non-zero blocks are hashed (with
# their offset). Reading the data extents only keeps this fast on a 40 GiB sparse image.
_CONTENT_SUM = """python3 - "$0" <<'PY'
import hashlib, os, sys
BLOCK = 1 << 16
ZERO = bytes(BLOCK)
h = hashlib.sha256()
fd = os.open(sys.argv[1], os.O_RDONLY)
end, pos, done = os.fstat(fd).st_size, 0, -1
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    for block in range(max(start // BLOCK * BLOCK, done + BLOCK), stop, BLOCK):
        data = os.pread(fd, BLOCK, block)
        if data.rstrip(b"\\0"):
            h.update(block.to_bytes(8, "big") + data)
        done = block
    pos = stop
print(h.hexdigest(), end)
PY"""


def content_checksum_command(path: str) -> str:
    """A shell command printing a checksum of path's content and its size (see _CONTENT_SUM)."""
    return f"sh -c {shlex.quote(_CONTENT_SUM)} {shlex.quote(path)}"
