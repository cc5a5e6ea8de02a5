"""``make demo``: the whole VM lifecycle on a 2-host sandbox with the example manifest.

pools -> build -> re-run (no change) -> start -> state -> stop -> delete, each with the real pyinfra
CLI; the sandbox is torn down at the end (unless ``--keep``). Exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def step(title: str, args: list[str], env: dict[str, str]) -> None:
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(args, cwd=REPO, env=env)
    print(f"--- {title}: exit {result.returncode} in {time.monotonic() - started:.1f}s", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed: {title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=str(REPO / "manifest.example.json"))
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up at the end")
    args = parser.parse_args()

    from sandbox import cluster
    from sandbox.client import workflow_env

    data = cluster.up(hosts=args.hosts)
    try:
        env = workflow_env(Path(args.manifest), cluster.state_dir() / "inventory.json", data["mgmt"]["name"])
        inv = "inventories/manifest.py"
        step("Storage pools", [PYINFRA, "-y", inv, "deploys/pools.py"], env)
        step("Preview the build (--dry)", [PYINFRA, "--dry", inv, "deploys/build.py"], env)
        step("Build VMs + DHCP/DNS", [PYINFRA, "-y", inv, "deploys/build.py"], env)
        step("Build again (no changes)", [PYINFRA, "-y", inv, "deploys/build.py"], env)
        step("Start VMs", [PYINFRA, "-y", inv, "deploys/start.py"], env)
        step("Domains fact", [PYINFRA, "--limit", "kvm_hosts", inv, "fact", "facts.libvirt.Domains"], env)
        step("Status: manifest vs actual", [PYINFRA, "-y", inv, "deploys/status.py"], env)
        step(
            "Stop VMs (graceful, 3 s timeout)",
            [PYINFRA, "-y", inv, "deploys/stop.py", "--data", "stop_timeout=3"],
            env,
        )
        step("Delete VMs, volumes, reservations", [PYINFRA, "-y", inv, "deploys/delete.py"], env)
        print("\ndemo finished: every step succeeded")
    finally:
        if not args.keep:
            cluster.down()


if __name__ == "__main__":
    main()
