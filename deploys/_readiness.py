"""Readiness after start (``wait`` in deploys/vms.py): the probe the management node runs, and its report.

One bounded command on the management node waits for every VM at once: it reads dnsmasq's lease
file until the VM's manifest MAC holds its manifest IP, then connects to the VM's SSH port (at its
``sshHost``, the address pyinfra uses) until the server's banner answers. It runs in the network
namespace of the management node's dnsmasq, which is the namespace it already runs in on a real
management node and the cluster namespace in the sandbox. It prints one JSON object; everything
else here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand
from pyinfra.api.exceptions import FactProcessError

from facts.util.script_files import read_script
from inventories.manifest_model import VmSpec

# Run by python3 on the management node (deploys/scripts/readiness_probe.py, read once at import):
# argv[1] is the JSON configuration (see probe_config).
PROBE = read_script("readiness_probe.py", package="deploys")


@dataclass(frozen=True)
class Readiness:
    """What the probe saw: seconds after its start when each VM's lease and SSH answer appeared."""

    lease: Mapping[str, float]
    ssh: Mapping[str, float]
    elapsed: float
    note: str = ""

    def ready(self, name: str) -> bool:
        return name in self.lease and name in self.ssh


def probe_config(vmspecs: Iterable[VmSpec], timeout: float, leasefile: str, pid_file: str, port: int) -> dict:
    """The probe's JSON argument for the manifest's VMs."""
    return {
        "timeout": timeout,
        "leasefile": leasefile,
        "pid_file": pid_file,
        "port": port,
        "vms": [
            {
                "name": spec.name,
                "mac": spec.mac.lower(),
                "ip": spec.ipaddress,
                "ssh": spec.ssh_host or spec.ipaddress,
            }
            for spec in vmspecs
        ],
    }


def probe_command(config: Mapping[str, Any]) -> StringCommand:
    """One command, bounded twice: by the probe's own deadline and by `timeout` a little later."""
    limit = int(config["timeout"]) + 15
    return StringCommand(
        "timeout", str(limit), "python3", "-c", QuoteString(PROBE), QuoteString(json.dumps(config))
    )


def parse(output: Iterable[str]) -> Readiness:
    try:
        data = json.loads("\n".join(output))
        return Readiness(
            lease={str(k): float(v) for k, v in data["lease"].items()},
            ssh={str(k): float(v) for k, v in data["ssh"].items()},
            elapsed=float(data["elapsed"]),
            note=str(data.get("note", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FactProcessError(f"unexpected readiness probe output: {exc}") from None


def table_lines(vmspecs: Iterable[VmSpec], result: Readiness) -> list[str]:
    """VM, IP, lease after N s, SSH after N s; '-' for what never came."""
    rows = [("VM", "IP", "lease after", "SSH after")]
    for spec in vmspecs:
        name = spec.name
        lease = f"{result.lease[name]:.1f} s" if name in result.lease else "-"
        ssh = f"{result.ssh[name]:.1f} s" if name in result.ssh else "-"
        rows.append((name, spec.ipaddress, lease, ssh))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def not_ready(vmspecs: Iterable[VmSpec], result: Readiness) -> list[str]:
    """Names of the VMs without a lease or without an SSH answer, each with what is missing."""
    missing = []
    for spec in vmspecs:
        name = spec.name
        if name not in result.lease:
            missing.append(f"{name} (no lease for {spec.mac} -> {spec.ipaddress})")
        elif name not in result.ssh:
            missing.append(f"{name} (SSH at {spec.ssh_host or spec.ipaddress} does not answer)")
    return missing


def timeout_value(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"wait_timeout={value!r}: expected a number of seconds") from None
    if not 0 < seconds <= 86400:
        raise ValueError(f"wait_timeout={value!r}: expected more than 0 and at most 86400 seconds")
    return seconds


class ReadinessProbe(FactBase):
    """Waits (bounded) on the management node until every VM holds its lease and answers SSH."""

    default = dict

    def command(self, config_json: str) -> StringCommand:
        return probe_command(json.loads(config_json))

    def process(self, output: list[str]) -> Readiness:
        return parse(output)
