"""``make bench``: wall time and SSH commands of build / re-run / delete on the sandbox.

Scenarios (targets from the benchmark issue, 2-core machine):
1. build 12 VMs on 3 hosts, full clones of the 1 GiB-data / 40 GiB base, 1 data disk each (<= 12 s)
2. the same with linked clones (<= 3 s)
3. re-run of (1) with nothing to do (<= 2 s)
4. delete of (1) (<= 5 s)
5. 1, 4 and 16 hosts x 32 VMs, linked clones, defined not started: build, no-op re-run, delete
   (512 VMs built <= 120 s, re-run <= 10 s, <= 3 SSH commands per VM at build, facts O(1) per host)
6. ready: 12 VMs on 3 hosts, linked clones, from an empty cluster until all 12 guests have booted,
   hold their DHCP leases and answer SSH with their manifest hostnames: build, start, wait,
   sethostname, each timed (<= 45 s in all); the readiness table gives the lease and SSH times.

Scenarios 1-5 never start their VMs and use addresses outside the sandbox's DHCP range (they are
checked against all of 10.0.0.0/8 instead); scenario 6 boots real guests on the cluster network.

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

    def run(
        self, spec: list[dict[str, Any]], deploy: str, *extra: str, inventory: str = "manifest"
    ) -> dict[str, Any]:
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(spec))
        env = workflow_env(path, self.inventory_data, self.mgmt)
        args = [
            PYINFRA,
            "-y",
            "--debug",
            f"inventories/{inventory}.py",
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
        if inventory == "guests":
            hosts = [s["name"] for e in spec for s in e["vmspecs"]]
        host_commands = sum(counts[h] for h in hosts)
        return {
            "output": result.stdout + result.stderr,
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
        builds.append(runner.run(full, "build", *WIDE_RANGE))
        reruns.append(runner.run(full, "build", *WIDE_RANGE))
        deletes.append(runner.run(full, "delete"))
        linked_builds.append(runner.run(linked, "build", *WIDE_RANGE))
        runner.run(linked, "delete")
    return [
        median_row("1. build 12 VMs / 3 hosts, full clones + 1 data disk", builds, 12, 12, 3),
        median_row("2. build 12 VMs / 3 hosts, linked clones + 1 data disk", linked_builds, 3, 12, 3),
        median_row("3. re-run of (1), nothing to do", reruns, 2, 12, 3),
        median_row("4. delete of (1)", deletes, 5, 12, 3),
    ]


# Scenarios 1-5 never start their VMs: their reservations are checked against a range they fit in.
WIDE_RANGE = ("--data", "dhcp_range=10.0.0.1,10.255.255.254")
READY_ROW = re.compile(r"\] (\S+)\s+(\d+\.\d+\.\d+\.\d+)\s+(\d+\.\d) s\s+(\d+\.\d) s")


def ready_manifest(hosts: int = 3, vms_per_host: int = 4) -> list[dict[str, Any]]:
    """Guests on the cluster network, inside the sandbox's DHCP range."""
    spec = manifest(hosts, vms_per_host, "linked", 0)
    for entry in spec:
        for vm in entry["vmspecs"]:
            n = int(vm["name"][len("bench") :])
            vm["ipaddress"] = f"10.10.5.{100 + n}"
            vm["maxMemoryGb"] = 1
    return spec


def ready_scenario(runner: Runner) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """From an empty cluster until every guest answers SSH with its manifest hostname."""
    spec = ready_manifest()
    vms = sum(len(e["vmspecs"]) for e in spec)
    stages = {}
    try:
        for deploy, extra, inventory in (
            ("build", (), "manifest"),
            ("start", (), "manifest"),
            ("wait", ("--data", "wait_timeout=300"), "manifest"),
            ("sethostname", (), "guests"),
        ):
            stages[deploy] = runner.run(spec, deploy, *extra, inventory=inventory)
        check = runner.run(spec, "sethostname", inventory="guests")
        if not re.search(r"Grand total\s+\S+\s+-\s+-", check["output"]):
            raise SystemExit("bench: a second sethostname run found guests without their hostname")
    finally:
        runner.run(spec, "delete")
    table = [m.groups() for m in READY_ROW.finditer(stages["wait"]["output"])]
    rows = [median_row(f"6. ready: {stage}", [run], None, vms, 3) for stage, run in stages.items()]
    total = {"seconds": round(sum(run["seconds"] for run in stages.values()), 2), "commands": 0}
    total.update(commands_per_host=0, commands_per_vm=0)
    total["commands"] = sum(run["commands"] for run in stages.values())
    total["commands_per_host"] = round(total["commands"] / 3, 1)
    total["commands_per_vm"] = round(total["commands"] / vms, 2)
    rows.append(
        median_row("6. ready: 12 VMs / 3 hosts, linked, empty -> SSH with hostnames", [total], 45, vms, 3)
    )
    details = {
        "lease_s_max": max(float(t[2]) for t in table),
        "ssh_s_max": max(float(t[3]) for t in table),
        "lease_s": {t[0]: float(t[2]) for t in table},
        "ssh_s": {t[0]: float(t[3]) for t in table},
    }
    return rows, details


def scaling_scenarios(runner: Runner, host_counts: list[int], vms_per_host: int) -> list[dict[str, Any]]:
    rows = []
    for hosts in host_counts:
        spec = manifest(hosts, vms_per_host, "linked", 0)
        vms = hosts * vms_per_host
        build = runner.run(spec, "build", *WIDE_RANGE)
        rerun = runner.run(spec, "build", *WIDE_RANGE)
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
    ready = info.get("ready") or {}
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
    if ready:
        lines += [
            "",
            f"Ready scenario under {info['virt']} (-cpu {info['cpu_model']}; the accelerator probe booted in "
            f"{info['probe_boot_s']} s): last DHCP lease {ready['lease_s_max']} s and last SSH answer "
            f"{ready['ssh_s_max']} s after the wait began (right after start).",
        ]
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
    parser.add_argument("--only-ready", action="store_true", help="run scenario 6 only")
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
            rows, details = ready_scenario(runner)
            if not args.only_ready:
                rows += small_scenarios(runner, args.repeats)
            if not args.skip_scaling and not args.only_ready:
                rows += scaling_scenarios(runner, host_counts, args.vms_per_host)
        status = cluster.status()
        accel = status.get("accel") or {}
        info = {
            "cpus": os.cpu_count(),
            "virt": status.get("virt", "unknown"),
            "cpu_model": accel.get("cpu_model"),
            "probe_boot_s": accel.get("boot_seconds"),
            "ready": details,
            "python": platform.python_version(),
            "pyinfra": version("pyinfra"),
            "date": time.strftime("%Y-%m-%d"),
        }
        write_results(rows, info)
    finally:
        cluster.down()


if __name__ == "__main__":
    main()
