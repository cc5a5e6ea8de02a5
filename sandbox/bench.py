"""``make bench``: wall time and SSH commands of build / re-run / delete on the sandbox.

Scenarios (targets from the benchmark issue, 2-core machine):
1. build 12 VMs on 3 hosts, full clones of the 1 GiB-data / 40 GiB base, 1 data disk each (<= 12 s)
2. the same with linked clones (<= 3 s)
3. re-run of (1) with nothing to do (<= 2 s)
4. delete of (1) (<= 5 s)
5. 1, 4 and 16 hosts x 32 VMs, linked clones, defined not started: build, no-op re-run, delete
   (512 VMs built <= 120 s, re-run <= 10 s, <= 3 SSH commands per VM at build, facts O(1) per host)

Each run is the real CLI (``pyinfra -y inventories/manifest.py deploys/...``). SSH commands are counted
from pyinfra's ``--debug`` log ("Running command on <host>"), which includes fact commands.
Results: ``bench/results.md`` and ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sandbox.client import workflow_env

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
COMMAND_LINE = re.compile(r"Running command on (\S+?):")


def manifest(hosts: int, vms_per_host: int, clone: str, data_disks: int) -> list[dict[str, Any]]:
    entries = []
    for h in range(1, hosts + 1):
        vmspecs = []
        for v in range(1, vms_per_host + 1):
            n = (h - 1) * vms_per_host + v
            vmspecs.append(
                {
                    "name": f"bench{n:04d}",
                    "hostname": f"bench{n:04d}.bench.internal",
                    "ipaddress": f"10.{20 + n // 62500}.{(n // 250) % 250}.{n % 250 + 1}",
                    "vcpus": 1,
                    "memoryGb": 1,
                    "maxMemoryGb": 2,
                    "numDisks": data_disks,
                    "diskSize": 10 if data_disks else 0,
                    "clone": clone,
                }
            )
        entries.append({"host": f"sm-{h:02d}", "vmspecs": vmspecs})
    return entries


class Runner:
    def __init__(self, inventory_data: Path, mgmt: str, workdir: Path) -> None:
        self.inventory_data = inventory_data
        self.mgmt = mgmt
        self.workdir = workdir

    def run(self, spec: list[dict[str, Any]], deploy: str, *extra: str) -> dict[str, Any]:
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(spec))
        env = workflow_env(path, self.inventory_data, self.mgmt)
        args = [
            PYINFRA,
            "-y",
            "--debug",
            "inventories/manifest.py",
            f"deploys/{deploy}.py",
            "--data",
            "vcpu_allocation_ratio=64",
            "--data",
            "memory_allocation_ratio=64",
            *extra,
        ]
        started = time.monotonic()
        result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
            raise SystemExit(f"bench run failed: {deploy}")
        counts = Counter(COMMAND_LINE.findall(result.stdout + result.stderr))
        vms = sum(len(e["vmspecs"]) for e in spec)
        hosts = [e["host"] for e in spec]
        host_commands = sum(counts[h] for h in hosts)
        return {
            "seconds": round(seconds, 2),
            "commands": host_commands,
            "commands_per_host": round(host_commands / len(hosts), 1),
            "commands_per_vm": round(host_commands / vms, 2) if vms else 0,
            "mgmt_commands": counts[self.mgmt],
        }


def median_row(
    name: str, runs: list[dict[str, Any]], target: float | None, vms: int, hosts: int
) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "scenario": name,
        "hosts": hosts,
        "vms": vms,
        "runs": len(runs),
        "median_s": round(seconds, 2),
        "all_s": [r["seconds"] for r in runs],
        "target_s": target,
        "met": None if target is None else seconds <= target,
        "ssh_commands": runs[-1]["commands"],
        "per_host": runs[-1]["commands_per_host"],
        "per_vm": runs[-1]["commands_per_vm"],
    }


def small_scenarios(runner: Runner, repeats: int) -> list[dict[str, Any]]:
    full = manifest(3, 4, "full", 1)
    linked = manifest(3, 4, "linked", 1)
    builds, reruns, deletes, linked_builds = [], [], [], []
    for _ in range(repeats):
        builds.append(runner.run(full, "build"))
        reruns.append(runner.run(full, "build"))
        deletes.append(runner.run(full, "delete"))
        linked_builds.append(runner.run(linked, "build"))
        runner.run(linked, "delete")
    return [
        median_row("1. build 12 VMs / 3 hosts, full clones + 1 data disk", builds, 12, 12, 3),
        median_row("2. build 12 VMs / 3 hosts, linked clones + 1 data disk", linked_builds, 3, 12, 3),
        median_row("3. re-run of (1), nothing to do", reruns, 2, 12, 3),
        median_row("4. delete of (1)", deletes, 5, 12, 3),
    ]


def scaling_scenarios(runner: Runner, host_counts: list[int], vms_per_host: int) -> list[dict[str, Any]]:
    rows = []
    for hosts in host_counts:
        spec = manifest(hosts, vms_per_host, "linked", 0)
        vms = hosts * vms_per_host
        build = runner.run(spec, "build")
        rerun = runner.run(spec, "build")
        delete = runner.run(spec, "delete")
        big = hosts == max(host_counts)
        rows.append(
            median_row(
                f"5. build {vms} VMs / {hosts} hosts, linked", [build], 120 if big else None, vms, hosts
            )
        )
        rows.append(
            median_row(f"5. re-run {vms} VMs / {hosts} hosts", [rerun], 10 if big else None, vms, hosts)
        )
        rows.append(median_row(f"5. delete {vms} VMs / {hosts} hosts", [delete], None, vms, hosts))
    return rows


def write_results(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    out = REPO / "bench"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    lines = [
        f"Machine: {info['cpus']} CPUs, {info['virt']}, {info['python']}, pyinfra {info['pyinfra']}, "
        f"{info['date']}.",
        "",
        "| scenario | median s | runs (s) | target s | met | SSH cmds | per host | per VM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['scenario']} | {r['median_s']} | {', '.join(map(str, r['all_s']))} | "
            f"{r['target_s'] or ''} | {met} | {r['ssh_commands']} | {r['per_host']} | {r['per_vm']} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale-hosts", default="1,4,16")
    parser.add_argument("--vms-per-host", type=int, default=32)
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()

    from importlib.metadata import version

    from sandbox import cluster

    host_counts = [int(h) for h in args.scale_hosts.split(",")]
    most = 3 if args.skip_scaling else max(3, *host_counts)
    cluster.down()  # a fresh cluster of the size the scenarios need
    data = cluster.up(hosts=most)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            runner = Runner(cluster.state_dir() / "inventory.json", data["mgmt"]["name"], Path(workdir))
            runner.run(manifest(most, 0, "full", 0), "pools")  # set-up, not measured
            rows = small_scenarios(runner, args.repeats)
            if not args.skip_scaling:
                rows += scaling_scenarios(runner, host_counts, args.vms_per_host)
        status = cluster.status()
        info = {
            "cpus": os.cpu_count(),
            "virt": status.get("virt", "unknown"),
            "python": platform.python_version(),
            "pyinfra": version("pyinfra"),
            "date": time.strftime("%Y-%m-%d"),
        }
        write_results(rows, info)
    finally:
        cluster.down()


if __name__ == "__main__":
    main()
