"""Reaching the sandbox from the controller: SSH to a node, and the environment for a pyinfra run."""

from __future__ import annotations

import os
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


def ssh(data: dict[str, Any], command: str, check: bool = True, timeout: int = 120) -> str:
    """Run ``command`` on a node with the system ssh client; stdout, or AssertionError when ``check``."""
    config = ["-F", data["ssh_config_file"]] if data.get("ssh_config_file") else []
    result = subprocess.run(
        ["ssh", *config, "-i", data["ssh_key"], "-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", str(data.get("ssh_port", 22)),
         f"{data.get('ssh_user', 'root')}@{data['ssh_hostname']}", command],
        capture_output=True, text=True, timeout=timeout,
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
