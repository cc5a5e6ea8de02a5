"""``make bench``: wall time, SSH commands, fact reads and controller RSS of the workflows on the sandbox.

    make bench [BASELINE=<git ref>] [BENCH_SCENARIOS=full3,floor,small] [BENCH_RUNS=5]
    python -m sandbox.bench [--baseline REF] [--scenarios ...] [--runs N] [--scale-hosts 16,64]

Scenarios (``--scenarios``, default all but the two ready-* comparisons; each runs ``--runs`` times
per tree, ``scale`` once per size):
  full3   build of 3 full clones on 3 hosts (one per host, the 1 GiB-data / 40 GiB base, no data disk)
  floor   the floor of full3: pyinfra start + connect + one Hypervisor read + the copy itself
          (sandbox/bench_floor.py); the same for every tree, so it runs from HEAD's tree only
  small   12 VMs on 3 hosts, full clones + 1 data disk: build, no-op re-run, delete
  linked  12 VMs on 3 hosts, linked clones + 1 data disk: build (then a delete, not measured)
  scale   N hosts x 32 VMs, linked, defined not started: build, no-op re-run, delete (--scale-hosts)
  ready   12 guests on 3 hosts from an empty cluster to SSH with their manifest FQDNs, per stage: the
          guests are named at boot by cloud-init seeds (``cloudInit``); build, start and wait are one
          pyinfra run (three deploy files; the stages are timed from its log as it comes), then every
          guest is asked ``hostname`` over SSH (the check stage, counted in the total)
  ready-seed          the same with build, start and wait as three pyinfra runs
  ready-sethostname   the plan before seeds: build, start, wait and sethostname as four runs (a second
                      sethostname run, not timed, must change nothing)
  ready-one           ready with one guest on one host: one boot without others sharing the CPUs

With ``--baseline REF`` the ref is checked out in a git worktree (under $TMPDIR/kvmq-bench/, removed at
the end) and every scenario runs for both trees, alternating in one session: HEAD, baseline, baseline,
HEAD, HEAD, baseline, ... on the same sandbox (ABBA: neither tree always runs first). A tree runs with
this venv when its runtime dependencies (pyproject.toml ``[project] dependencies``) are the same as
HEAD's, else with a venv of its own made in its worktree. Per scenario: the median of each tree, and
the median of the pairwise ratios HEAD/baseline (run i of HEAD over run i of the baseline).
Each run starts after a ``sync`` (no run pays for the previous run's write-back), in the environment of
an operator's shell as far as Python's compiled modules go (``PYTHONDONTWRITEBYTECODE`` and
``PYTHONPYCACHEPREFIX`` unset): a tree keeps them if its own ``config.py`` lets pyinfra write them.
A compared scenario first runs once unmeasured (``warms_up``).

Scenarios other than ``ready`` never start their VMs and use addresses outside the sandbox's DHCP
range (they are checked against all of 10.0.0.0/8 instead); ``ready`` boots real guests.

Each run is the real CLI (``pyinfra -y --debug inventories/manifest.py deploys/...``) from the tree's
root. From its debug log: SSH commands per host ("Running command on <host>", fact commands
included) and fact reads per host ("[host] Loaded fact <name>"); "state reads" are reads of the
libvirt facts (``facts.libvirt.*``, the Hypervisor probe). Controller peak RSS is the pyinfra
process's ru_maxrss (os.wait4). Results: ``bench/results.json`` (rows are merged by id, so a subset
run updates its rows only) and ``bench/results.md`` (generated from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.client import workflow_env

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMAND_LINE = re.compile(r"Running command on (\S+?):")
FACT_LINE = re.compile(r"\[([^\]\s]+)\]\s+(?:nested\s+)?Loaded fact (\S+)")
STATE_FACTS = "facts.libvirt."
FLOOR_DEPLOY = "sandbox/bench_floor.py"
DEFAULT_SCENARIOS = ("full3", "floor", "small", "linked", "scale", "ready")
# ready-seed, ready-sethostname: the ready scenario's earlier plans; ready-one: one guest. On request.
ALL_SCENARIOS = (*DEFAULT_SCENARIOS, "ready-seed", "ready-sethostname", "ready-one")
# Scenarios other than ready never start their VMs: their reservations are checked against a range
# they fit in.
WIDE_RANGE = ("--data", "dhcp_range=10.0.0.1,10.255.255.254")
READY_ROW = re.compile(r"\] (\S+)\s+(\d+\.\d+\.\d+\.\d+)\s+(\d+\.\d) s\s+(\d+\.\d) s")


# --- trees -------------------------------------------------------------------------------------


@dataclass
class Tree:
    label: str  # "HEAD" or "baseline"
    ref: str
    commit: str
    root: Path
    pyinfra: str
    worktree: bool = False  # created here: removed at the end

    def has(self, path: str) -> bool:
        return (self.root / path).is_file()


def _git(*args: str, cwd: Path = REPO) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"bench: git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def runtime_dependencies(pyproject: str) -> list[str]:
    """The ``[project] dependencies`` of a pyproject.toml text, sorted (what a pyinfra run imports)."""
    return sorted(tomllib.loads(pyproject).get("project", {}).get("dependencies", []))


def head_tree() -> Tree:
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return Tree("HEAD", "HEAD" + (" (+ uncommitted changes)" if dirty else ""), commit, REPO, PYINFRA)


def baseline_tree(ref: str) -> Tree:
    """ref checked out (detached) in a worktree; a venv of its own only when its dependencies differ."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    root = Path(tempfile.gettempdir()) / "kvmq-bench" / commit[:12]
    if not (root / ".git").exists():
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        _git("worktree", "add", "--detach", str(root), commit)
    elif _git("rev-parse", "HEAD", cwd=root) != commit:
        raise SystemExit(f"bench: {root} is not at {commit}; remove it (git worktree remove {root})")
    pyinfra = PYINFRA
    theirs = runtime_dependencies((root / "pyproject.toml").read_text())
    if theirs != runtime_dependencies((REPO / "pyproject.toml").read_text()):
        venv = root / ".bench-venv"
        if not (venv / ".installed").exists():
            print(f"bench: {ref} has other dependencies ({', '.join(theirs)}): making {venv}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 *theirs],
                check=True, timeout=1800,
            )  # fmt: skip
            (venv / ".installed").touch()
        pyinfra = str(venv / "bin" / "pyinfra")
    return Tree("baseline", ref, commit, root, pyinfra, worktree=True)


def remove_tree(tree: Tree) -> None:
    if tree.worktree:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree.root)], cwd=REPO, timeout=300)


# --- one pyinfra run ---------------------------------------------------------------------------


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


def count_log(output: str, hosts: list[str]) -> dict[str, Any]:
    """SSH commands, fact reads and state (libvirt fact) reads of hosts in a pyinfra --debug log."""
    text = ANSI.sub("", output)
    commands = Counter(COMMAND_LINE.findall(text))
    facts: dict[str, Counter[str]] = {h: Counter() for h in hosts}
    for host, fact in FACT_LINE.findall(text):
        if host in facts:
            facts[host][fact] += 1
    n = max(len(hosts), 1)
    fact_reads = [sum(facts[h].values()) for h in hosts]
    state_reads = [sum(c for f, c in facts[h].items() if f.startswith(STATE_FACTS)) for h in hosts]
    total = sum(commands[h] for h in hosts)
    return {
        "commands": total,
        "commands_per_host": round(total / n, 1),
        "fact_reads_per_host": round(sum(fact_reads) / n, 1),
        "state_reads_per_host_max": max(state_reads, default=0),
        "facts_by_name": dict(sum(facts.values(), Counter())),
    }


class Runner:
    def __init__(self, inventory_data: Path, mgmt: str, workdir: Path) -> None:
        self.inventory_data = inventory_data
        self.mgmt = mgmt
        self.workdir = workdir

    def run(
        self,
        tree: Tree,
        spec: list[dict[str, Any]],
        deploy: str,
        *extra: str,
        inventory: str = "manifest",
        marks: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One pyinfra run of ``deploy`` (several deploy files joined by "+" run as one pyinfra run).

        ``marks``: {label: text}, the seconds after the start when a log line first contained text.
        """
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(spec))
        env = workflow_env(path, self.inventory_data, self.mgmt)
        env["PYTHONPATH"] = str(tree.root)  # the tree's own deploys, operations and facts
        # Python writes compiled modules where an operator's Python would (__pycache__ beside them).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("PYTHONPYCACHEPREFIX", None)
        deploy_files = [d if "/" in d else f"deploys/{d}.py" for d in deploy.split("+")]
        deploy_file = " ".join(deploy_files)
        args = [
            tree.pyinfra, "-y", "--debug", f"inventories/{inventory}.py", *deploy_files,
            "--data", "vcpu_allocation_ratio=64", "--data", "memory_allocation_ratio=64",
            "--data", "overcommit=64",  # the one ratio of releases before the two above
            *extra,
        ]  # fmt: skip
        log = self.workdir / "pyinfra.log"
        seen: dict[str, float] = {}
        with open(log, "w") as out:
            # The previous run's writes (a set-up's base disks, a delete's freed copies) are flushed
            # before the clock starts, so that no run pays for the one before it.
            os.sync()
            started = time.monotonic()
            process = subprocess.Popen(
                args, cwd=tree.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace",
            )  # fmt: skip
            assert process.stdout is not None
            for line in process.stdout:  # read as it comes, so each mark has its time
                out.write(line)
                for label, text in (marks or {}).items():
                    if label not in seen and text in line:
                        seen[label] = round(time.monotonic() - started, 2)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.monotonic() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        output = log.read_text(errors="replace")
        if process.returncode != 0:
            sys.stderr.write(output[-6000:])
            raise SystemExit(f"bench run failed: {tree.label} ({tree.ref}) {deploy_file}")
        vms = sum(len(e["vmspecs"]) for e in spec)
        hosts = [e["host"] for e in spec]
        if inventory == "guests":
            hosts = [s["name"] for e in spec for s in e["vmspecs"]]
        counts = count_log(output, hosts)
        return {
            "output": output,
            "marks": seen,
            "seconds": round(seconds, 2),
            "rss_mib": round(usage.ru_maxrss / 1024, 1),
            "commands_per_vm": round(counts["commands"] / vms, 2) if vms else 0,
            "mgmt_commands": count_log(output, [self.mgmt])["commands"],
            **counts,
        }


# --- scenarios ---------------------------------------------------------------------------------
# A scenario runs once on one tree and returns {row id: run}; the rows' titles and targets are below.


@dataclass(frozen=True)
class RowInfo:
    title: str
    hosts: int
    vms: int
    target_s: float | None = None
    target_ratio: float | None = None


ROWS: dict[str, RowInfo] = {
    "full3": RowInfo("build 3 VMs / 3 hosts, one full clone per host", 3, 3, None, 1.0),
    "floor": RowInfo("floor of full3: start + connect + 1 state read + the copy", 3, 3),
    "build12": RowInfo("build 12 VMs / 3 hosts, full clones + 1 data disk", 3, 12, 12),
    "rerun12": RowInfo("no-op re-run of build12 (12 VMs / 3 hosts)", 3, 12, 1.2, 1.0),
    "delete12": RowInfo("delete of build12", 3, 12, 5),
    "linked12": RowInfo("build 12 VMs / 3 hosts, linked clones + 1 data disk", 3, 12, 3),
}


def scenario_full3(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
    spec = manifest(3, 1, "full", 0)
    build = runner.run(tree, spec, "build", *WIDE_RANGE)
    runner.run(tree, spec, "delete")
    return {"full3": build}


def scenario_floor(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
    return {"floor": runner.run(tree, manifest(3, 0, "full", 0), FLOOR_DEPLOY)}


def scenario_small(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
    spec = manifest(3, 4, "full", 1)
    build = runner.run(tree, spec, "build", *WIDE_RANGE)
    rerun = runner.run(tree, spec, "build", *WIDE_RANGE)
    delete = runner.run(tree, spec, "delete")
    return {"build12": build, "rerun12": rerun, "delete12": delete}


def scenario_linked(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
    spec = manifest(3, 4, "linked", 1)
    build = runner.run(tree, spec, "build", *WIDE_RANGE)
    runner.run(tree, spec, "delete")
    return {"linked12": build}


def scale_scenario(hosts: int, vms_per_host: int) -> Callable[[Runner, Tree], dict[str, dict[str, Any]]]:
    vms = hosts * vms_per_host
    big = vms >= 2048
    ROWS[f"scale{hosts}-build"] = RowInfo(
        f"build {vms} VMs / {hosts} hosts, linked, defined not started", hosts, vms, 60 if big else None
    )
    ROWS[f"scale{hosts}-rerun"] = RowInfo(
        f"no-op re-run {vms} VMs / {hosts} hosts", hosts, vms, 10 if big else None
    )
    ROWS[f"scale{hosts}-delete"] = RowInfo(
        f"delete {vms} VMs / {hosts} hosts", hosts, vms, 60 if big else None
    )

    def run(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
        spec = manifest(hosts, vms_per_host, "linked", 0)
        try:
            build = runner.run(tree, spec, "build", *WIDE_RANGE)
            rerun = runner.run(tree, spec, "build", *WIDE_RANGE)
        finally:
            delete = runner.run(tree, spec, "delete")
        return {f"scale{hosts}-build": build, f"scale{hosts}-rerun": rerun, f"scale{hosts}-delete": delete}

    return run


def ready_manifest(hosts: int = 3, vms_per_host: int = 4, seeds: bool = False) -> list[dict[str, Any]]:
    """Guests on the cluster network, inside the sandbox's DHCP range; ``seeds``: named at boot by a
    cloud-init seed (``cloudInit``), which the sandbox guest reads before it starts sshd."""
    spec = manifest(hosts, vms_per_host, "linked", 0)
    for entry in spec:
        for vm in entry["vmspecs"]:
            n = int(vm["name"][len("bench") :])
            vm["ipaddress"] = f"10.10.5.{100 + n}"
            vm["maxMemoryGb"] = 1
            if seeds:
                vm["cloudInit"] = True
    return spec


READY_DETAILS: dict[str, Any] = {}
WAIT = ("--data", "wait_timeout=300")
# Where a stage begins in a run of several deploy files: the first "Starting operation" of its step.
READY_MARKS = {"start": "Starting operation {'Start VMs", "wait": "Starting operation {'Readiness"}
# The ready variants: how the guests get their names, and whether build, start and wait are one run.
# The scenarios that run for both trees, each once unmeasured first (``warms_up``).
COMPARED = ("full3", "small", "linked")
READY_VARIANTS = {
    # build, start, wait and sethostname, four pyinfra runs (the plan before seeds)
    "ready-sethostname": {"seeds": False, "combined": False},
    # named at boot by their seeds; build, start and wait are three runs
    "ready-seed": {"seeds": True, "combined": False},
    # named at boot by their seeds; build, start and wait in one pyinfra run (three deploy files)
    "ready": {"seeds": True, "combined": True},
    # one guest on one host, as ready: what one boot costs without 11 others sharing the CPUs
    "ready-one": {"seeds": True, "combined": True, "hosts": 1, "vms_per_host": 1},
}
READY_STAGE_NAMES = ("build", "start", "wait", "sethostname", "check")


def hostnames_by_ssh(inventory_data: Path, spec: list[dict[str, Any]]) -> tuple[float, dict[str, str]]:
    """Seconds for every guest to answer ``hostname`` over SSH (side by side), and what each said."""
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.client import guest_data, ssh

    inventory = json.loads(inventory_data.read_text())
    vms = [vm for entry in spec for vm in entry["vmspecs"]]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        said = pool.map(lambda vm: ssh(guest_data(inventory, vm["ipaddress"]), "hostname", timeout=60), vms)
        names = {vm["name"]: out.strip() for vm, out in zip(vms, said, strict=True)}
    return round(time.monotonic() - started, 2), names


def stage_row(seconds: float, rss_mib: float, commands: int = 0, vms: int = 12) -> dict[str, Any]:
    """A stage timed without a pyinfra run of its own (part of a run, or the SSH check)."""
    return {
        "seconds": round(seconds, 2), "rss_mib": rss_mib, "commands": commands, "commands_per_host": 0,
        "commands_per_vm": round(commands / vms, 2), "fact_reads_per_host": 0, "state_reads_per_host_max": 0,
    }  # fmt: skip


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by every process of this machine, by its qemu processes), so far.

    Machine-wide from /proc/stat (user + nice + system + irq + softirq + steal); qemu's from each live
    qemu-system process's utime + stime (the guests run in the sandbox's mount and network namespaces,
    not in a pid namespace of their own, so they are visible here)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])
    qemu = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if comm.startswith("qemu-system"):
            qemu += int(rest[11]) + int(rest[12])
    return busy / tick, qemu / tick


def ready_scenario(variant: str) -> Callable[[Runner, Tree], dict[str, dict[str, Any]]]:
    seeds, combined = READY_VARIANTS[variant]["seeds"], READY_VARIANTS[variant]["combined"]
    hosts, per_host = READY_VARIANTS[variant].get("hosts", 3), READY_VARIANTS[variant].get("vms_per_host", 4)

    def run(runner: Runner, tree: Tree) -> dict[str, dict[str, Any]]:
        """From an empty cluster until every guest answers SSH with its manifest hostname."""
        spec = ready_manifest(hosts, per_host, seeds=seeds)
        vms = sum(len(e["vmspecs"]) for e in spec)
        stages: dict[str, dict[str, Any]] = {}
        cpu_before, wall_before = cpu_seconds()[0], time.monotonic()
        try:
            if combined:
                whole = runner.run(tree, spec, "build+start+wait", *WAIT, marks=READY_MARKS)
                marks = whole["marks"]
                if set(marks) != set(READY_MARKS):
                    raise SystemExit(f"bench: {variant}: no start or wait step seen in the log ({marks})")
                bounds = {"build": (0.0, marks["start"]), "start": (marks["start"], marks["wait"]),
                          "wait": (marks["wait"], whole["seconds"])}  # fmt: skip
                for stage, (begin, end) in bounds.items():
                    # one run: its commands and reads are the whole run's, shown on the wait row
                    stages[stage] = stage_row(end - begin, whole["rss_mib"])
                stages["wait"].update({k: v for k, v in whole.items() if k not in ("seconds", "marks")})
                wait_output = whole["output"]
            else:
                stages["build"] = runner.run(tree, spec, "build")
                stages["start"] = runner.run(tree, spec, "start")
                stages["wait"] = runner.run(tree, spec, "wait", *WAIT)
                wait_output = stages["wait"]["output"]
            # When every guest answers: the CPU time the machine and the guests (their qemus) used
            cpu_now, qemu_now = cpu_seconds()
            cpu = {
                "wall_s": round(time.monotonic() - wall_before, 1),
                "machine_cpu_s": round(cpu_now - cpu_before, 1),
                "qemu_cpu_s": round(qemu_now, 1),
                "cpus": os.cpu_count(),
            }
            if seeds:
                seconds, names = hostnames_by_ssh(runner.inventory_data, spec)
                wrong = {n: said for n, said in names.items() if said != f"{n}.bench.internal"}
                if wrong:
                    raise SystemExit(f"bench: {variant}: guests without their manifest FQDN: {wrong}")
                stages["check"] = stage_row(seconds, 0.0, commands=vms, vms=vms)
            else:
                stages["sethostname"] = runner.run(tree, spec, "sethostname", inventory="guests")
                check = runner.run(tree, spec, "sethostname", inventory="guests")
                if not re.search(r"Grand total\s+\S+\s+-\s+-", check["output"]):
                    raise SystemExit("bench: a second sethostname run found guests without their hostname")
        finally:
            runner.run(tree, spec, "delete")
        table = [m.groups() for m in READY_ROW.finditer(wait_output)]
        label = f"{variant}, {tree.label}"
        details = READY_DETAILS.setdefault(label, {"lease_s_max_runs": [], "ssh_s_max_runs": []})
        details["lease_s_max_runs"].append(max(float(t[2]) for t in table))
        details["ssh_s_max_runs"].append(max(float(t[3]) for t in table))
        details["lease_s_max"] = round(statistics.median(details["lease_s_max_runs"]), 1)
        details["ssh_s_max"] = round(statistics.median(details["ssh_s_max_runs"]), 1)
        for key, value in cpu.items():
            details.setdefault(f"{key}_runs", []).append(value)
            details[key] = round(statistics.median(details[f"{key}_runs"]), 1)
        details["lease_s"] = {t[0]: float(t[2]) for t in table}  # the last run's, per VM
        details["ssh_s"] = {t[0]: float(t[3]) for t in table}
        total = {
            "seconds": round(sum(run["seconds"] for run in stages.values()), 2),
            "rss_mib": max(run["rss_mib"] for run in stages.values()),
            "commands": sum(run["commands"] for run in stages.values()),
            "fact_reads_per_host": round(sum(run["fact_reads_per_host"] for run in stages.values()), 1),
            "state_reads_per_host_max": sum(run["state_reads_per_host_max"] for run in stages.values()),
        }
        total["commands_per_host"] = round(total["commands"] / hosts, 1)
        total["commands_per_vm"] = round(total["commands"] / vms, 2)
        return {**{f"{variant}.{stage}": run for stage, run in stages.items()}, variant: total}

    return run


_READY_TITLES = {
    "ready-sethostname": "12 VMs / 3 hosts, linked, empty -> SSH, then sethostname (4 runs)",
    "ready-seed": "12 VMs / 3 hosts, linked, named by seeds, build / start / wait (3 runs) + check",
    "ready": "12 VMs / 3 hosts, linked, named by seeds, build+start+wait (1 run) + check",
    "ready-one": "1 VM / 1 host, as ready",
}
for _variant, _title in _READY_TITLES.items():
    _hosts = READY_VARIANTS[_variant].get("hosts", 3)
    _vms = _hosts * READY_VARIANTS[_variant].get("vms_per_host", 4)
    for _stage in READY_STAGE_NAMES:
        ROWS[f"{_variant}.{_stage}"] = RowInfo(f"{_variant}: {_stage}", _hosts, _vms)
    ROWS[_variant] = RowInfo(f"{_variant}: {_title}", _hosts, _vms, 30 if _vms == 12 else None)


def applies(name: str, tree: Tree) -> bool:
    """Whether a scenario runs on a tree: the floor is the same for all (HEAD only); ready needs wait."""
    if name == "floor":
        return tree.label == "HEAD"
    if name in READY_VARIANTS:
        return tree.has("deploys/wait.py")
    return True


def warms_up(name: str, trees: list[Tree]) -> bool:
    """Whether a compared scenario first runs once unmeasured. The first full copies of a session take
    up to twice as long as the later ones for either tree (12 clones: 12.5 s then 8.4 s for the
    baseline alone, 16.6 s then 9.8 s for HEAD alone), and that first run would always be HEAD's."""
    return len(trees) > 1 and name in COMPARED


def run_order(trees: list[Tree], i: int) -> list[Tree]:
    """The trees' order in round ``i``: HEAD, baseline, then baseline, HEAD (ABBA). A fixed order would
    give one tree every first run after a scenario's set-up, and the page cache and the disk's
    write-back still busy with the previous run would count against that tree alone."""
    return list(trees) if i % 2 == 0 else list(reversed(trees))


# --- results -----------------------------------------------------------------------------------

MEASURES = ("commands_per_host", "commands_per_vm", "fact_reads_per_host", "state_reads_per_host_max")


def summarise(row_id: str, by_tree: dict[str, list[dict[str, Any]]], baseline: Tree | None) -> dict[str, Any]:
    info = ROWS[row_id]
    head = by_tree.get("HEAD", [])
    base = by_tree.get("baseline", [])
    row: dict[str, Any] = {"id": row_id, "scenario": info.title, "hosts": info.hosts, "vms": info.vms}
    for key, runs in (("head", head), ("baseline", base)):
        if not runs:
            continue
        last = runs[-1]
        row[key] = {
            "median_s": round(statistics.median(r["seconds"] for r in runs), 2),
            "all_s": [r["seconds"] for r in runs],
            "rss_mib_max": max(r["rss_mib"] for r in runs),
            "ssh_commands": last["commands"],
            **{m: last.get(m) for m in MEASURES},
            "facts_by_name": last.get("facts_by_name", {}),
        }
    if head and base:
        ratios = [h["seconds"] / b["seconds"] for h, b in zip(head, base, strict=False) if b["seconds"]]
        row["ratio"] = round(statistics.median(ratios), 3)
        row["ratios"] = [round(r, 3) for r in ratios]
        row["baseline_ref"] = f"{baseline.ref} ({baseline.commit[:7]})" if baseline else None
    row["target_s"] = info.target_s
    row["target_ratio"] = info.target_ratio
    return row


def judge(rows: dict[str, dict[str, Any]]) -> None:
    """Targets: seconds and ratio where set; full3 within 1.5 s of the floor."""
    floor = rows.get("floor", {}).get("head", {}).get("median_s")
    if "full3" in rows and floor is not None:
        rows["full3"]["target_s"] = round(floor + 1.5, 2)
    for row in rows.values():
        checks = []
        if row.get("target_s") is not None and "head" in row:
            checks.append(row["head"]["median_s"] <= row["target_s"])
        if row.get("target_ratio") is not None and "ratio" in row:
            checks.append(row["ratio"] <= row["target_ratio"])
        row["met"] = all(checks) if checks else None


def load_rows() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((REPO / "bench" / "results.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {r["id"]: r for r in data.get("results", []) if "id" in r}


def _fmt(value: Any) -> str:
    return "" if value is None else str(value)


def render(rows: dict[str, dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['virt']}, Python {info['python']}, "
        f"pyinfra {info['pyinfra']}. HEAD {info.get('head', '')}; baseline {info.get('baseline') or 'none'}.",
        "",
        "Times are medians of alternating runs (HEAD, baseline, baseline, HEAD, ...) in one session;",
        "the ratio is the median of the pairwise ratios HEAD/baseline. Per host: SSH commands, fact reads,",
        "and the most libvirt state reads on any one host. RSS: the pyinfra process's peak (largest run).",
        "",
        "| scenario | HEAD s | baseline s | ratio | HEAD runs (s) | baseline runs (s) | target | met "
        "| SSH cmds/host H / B | fact reads/host H / B | state reads/host H / B | RSS MiB H / B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [k for k in ROWS if k in rows] + [k for k in rows if k not in ROWS]
    for key in order:
        r = rows[key]
        h, b = r.get("head", {}), r.get("baseline", {})
        target = " ".join(
            t for t in (f"<= {r['target_s']} s" if r.get("target_s") is not None else "",
                        f"ratio <= {r['target_ratio']}" if r.get("target_ratio") is not None else "") if t
        )  # fmt: skip
        met = "" if r.get("met") is None else ("yes" if r["met"] else "**no**")

        def pair(field: str, h: dict[str, Any] = h, b: dict[str, Any] = b) -> str:
            return f"{_fmt(h.get(field))} / {_fmt(b.get(field))}" if b else _fmt(h.get(field))

        lines.append(
            f"| {r['scenario']} | {_fmt(h.get('median_s'))} | {_fmt(b.get('median_s'))} "
            f"| {_fmt(r.get('ratio'))} "
            f"| {', '.join(map(str, h.get('all_s', [])))} | {', '.join(map(str, b.get('all_s', [])))} "
            f"| {target} | {met} | {pair('commands_per_host')} | {pair('fact_reads_per_host')} "
            f"| {pair('state_reads_per_host_max')} | {pair('rss_mib_max')} |"
        )
    for label, ready in (info.get("ready") or {}).items():
        lines += [
            "",
            f"Ready scenario ({label}) under {info['virt']} (-cpu {info.get('cpu_model')}): last DHCP lease "
            f"{ready['lease_s_max']} s and last SSH answer {ready['ssh_s_max']} s after the wait began"
            + (
                f" (medians; runs: {ready['lease_s_max_runs']} and {ready['ssh_s_max_runs']})."
                if "ssh_s_max_runs" in ready
                else "."
            )
            + (
                f" From the first run's start until every guest answered: {ready['wall_s']} s wall, the"
                f" machine's {ready['cpus']} CPUs busy for {ready['machine_cpu_s']} CPU-s, of which the"
                f" guests' qemus {ready['qemu_cpu_s']} CPU-s (medians)."
                if "qemu_cpu_s" in ready
                else ""
            ),
        ]
    for note in info.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_results(new_rows: dict[str, dict[str, Any]], info: dict[str, Any]) -> str:
    out = REPO / "bench"
    out.mkdir(exist_ok=True)
    rows = load_rows()
    for stale in [k for k in rows if k.startswith("ready-") and k not in ROWS]:
        del rows[stale]  # the ready scenario's stage rows before they were named <variant>.<stage>
    rows.update(new_rows)
    judge(rows)
    try:
        previous = json.loads((out / "results.json").read_text()).get("machine", {})
    except (FileNotFoundError, ValueError):
        previous = {}
    earlier = previous.get("ready") or {}
    if not info.get("ready") and all(isinstance(v, dict) for v in earlier.values()):
        info["ready"] = earlier  # {tree label: details} from an earlier run of the ready scenario
    info["notes"] = previous.get("notes", [])
    ordered = [rows[k] for k in ROWS if k in rows] + [rows[k] for k in rows if k not in ROWS]
    (out / "results.json").write_text(json.dumps({"machine": info, "results": ordered}, indent=2) + "\n")
    text = render(rows, info)
    (out / "results.md").write_text(text)
    return text


# --- main --------------------------------------------------------------------------------------


def progress(row_id: str, tree: Tree, which: str, run: dict[str, Any]) -> None:
    print(
        f"bench: {row_id:<14} {tree.label:<8} run {which}: {run['seconds']:>7} s, "
        f"{run['commands_per_host']} cmds/host, {run['fact_reads_per_host']} fact reads/host, "
        f"state reads/host <= {run['state_reads_per_host_max']}, RSS {run.get('rss_mib')} MiB",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    parser.add_argument("--baseline", default=env("BASELINE") or None, help="git ref to compare against")
    parser.add_argument(
        "--scenarios",
        default=env("BENCH_SCENARIOS") or ",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}",
    )
    parser.add_argument("--runs", type=int, default=int(env("BENCH_RUNS") or 3), help="runs per tree")
    parser.add_argument("--scale-hosts", default=env("BENCH_SCALE_HOSTS") or "1,4,16")
    parser.add_argument("--vms-per-host", type=int, default=int(env("BENCH_VMS_PER_HOST") or 32))
    args = parser.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenario_list if s not in ALL_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        args.host_counts = [int(h) for h in args.scale_hosts.split(",")]
    except ValueError:
        parser.error(f"--scale-hosts {args.scale_hosts!r}: comma-separated host counts expected")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from importlib.metadata import version

    from sandbox import cluster

    trees = [head_tree()]
    if args.baseline:
        trees.append(baseline_tree(args.baseline))
    plan: list[tuple[str, Callable[[Runner, Tree], dict[str, dict[str, Any]]], int]] = []
    scenario_funcs = {
        "full3": scenario_full3, "floor": scenario_floor, "small": scenario_small, "linked": scenario_linked,
    }  # fmt: skip
    for name in args.scenario_list:
        if name in scenario_funcs:
            plan.append((name, scenario_funcs[name], args.runs))
        elif name == "scale":
            plan += [("scale", scale_scenario(h, args.vms_per_host), 1) for h in args.host_counts]
        elif name in READY_VARIANTS:
            plan.append((name, ready_scenario(name), args.runs))
    most = max([3] + (args.host_counts if "scale" in args.scenario_list else []))
    collected: dict[str, dict[str, list[dict[str, Any]]]] = {}
    cluster.down()  # a fresh cluster of the size the scenarios need
    try:
        started = time.monotonic()
        data = cluster.up(hosts=most)
        print(f"bench: sandbox with {most} hypervisors up in {time.monotonic() - started:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            runner = Runner(cluster.state_dir() / "inventory.json", data["mgmt"]["name"], Path(workdir))
            runner.run(trees[0], manifest(most, 0, "full", 0), "pools")  # set-up, not measured
            for name, func, runs in plan:
                if warms_up(name, trees):
                    print(f"bench: {name}: one warm-up run ({trees[-1].label}), not measured", flush=True)
                    func(runner, trees[-1])
                for i in range(runs):
                    for tree in run_order(trees, i):
                        if not applies(name, tree):
                            continue
                        for row_id, run in func(runner, tree).items():
                            collected.setdefault(row_id, {}).setdefault(tree.label, []).append(run)
                            progress(row_id, tree, f"{i + 1}/{runs}", run)
        status = cluster.status()
    finally:
        cluster.down()
        for tree in trees:
            remove_tree(tree)
    baseline = trees[1] if len(trees) > 1 else None
    rows = {row_id: summarise(row_id, by_tree, baseline) for row_id, by_tree in collected.items()}
    accel = status.get("accel") or {}
    info = {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "virt": status.get("virt", "unknown"),
        "cpu_model": accel.get("cpu_model"),
        "probe_boot_s": accel.get("boot_seconds"),
        "ready": READY_DETAILS,
        "python": platform.python_version(),
        "pyinfra": version("pyinfra"),
        "date": time.strftime("%Y-%m-%d"),
        "head": f"{trees[0].commit[:7]}",
        "baseline": f"{baseline.ref} ({baseline.commit[:7]})" if baseline else None,
    }
    print(write_results(rows, info))


if __name__ == "__main__":
    main()
