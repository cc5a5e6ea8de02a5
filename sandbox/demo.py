"""``make demo``: the whole VM lifecycle on a 2-host sandbox with the example manifest, on booted guests.

pools -> build -> re-run (no change) -> start -> wait (readiness table) -> sethostname -> each guest's
own hostname, IP and MemTotal over SSH -> live memory resize (and MemTotal again) -> status -> stop ->
delete, each with the real pyinfra CLI; guests are reached through the cluster network namespace
(an SSH ProxyCommand). The sandbox is torn down at the end (unless ``--keep``). Exits non-zero if any
step fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
# Run in each guest (busybox userland): its own view of its name, address and memory.
GUEST_REPORT = (
    "echo \"hostname=$(hostname) ip=$(ip -4 -o address show dev eth0 | awk '{print $4}') "
    "$(grep MemTotal /proc/meminfo | tr -s ' ')\""
)


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
        inv, guests = "inventories/manifest.py", "inventories/guests.py"
        step("Storage pools", [PYINFRA, "-y", inv, "deploys/pools.py"], env)
        step("Preview the build (--dry)", [PYINFRA, "--dry", inv, "deploys/build.py"], env)
        step("Build VMs + DHCP/DNS", [PYINFRA, "-y", inv, "deploys/build.py"], env)
        step("Build again (no changes)", [PYINFRA, "-y", inv, "deploys/build.py"], env)
        step("Start VMs", [PYINFRA, "-y", inv, "deploys/start.py"], env)
        step("Wait: DHCP lease and SSH answer per VM", [PYINFRA, "-y", inv, "deploys/wait.py"], env)
        step("Set each guest's hostname (over SSH)", [PYINFRA, "-y", guests, "deploys/sethostname.py"], env)
        step("Each guest answers for itself", [PYINFRA, guests, "exec", "--", GUEST_REPORT], env)
        with tempfile.TemporaryDirectory() as tmp:
            grown = json.loads(Path(args.manifest).read_text())
            for entry in grown:
                for spec in entry["vmspecs"]:
                    spec["memoryGb"] = spec["maxMemoryGb"]
            grown_file = Path(tmp) / "manifest.json"
            grown_file.write_text(json.dumps(grown))
            grown_env = {**env, "KVM_MANIFEST": str(grown_file)}
            step("Resize live: memory up to max memory", [PYINFRA, "-y", inv, "deploys/resize.py"], grown_env)
            time.sleep(3)  # the balloon deflates in the guest
            step(
                "MemTotal inside each guest after the resize",
                [PYINFRA, guests, "exec", "--", GUEST_REPORT],
                env,
            )
            step("Status: manifest vs actual", [PYINFRA, "-y", inv, "deploys/status.py"], grown_env)
        step("Stop VMs (graceful: ACPI power button)", [PYINFRA, "-y", inv, "deploys/stop.py"], env)
        step("Delete VMs, volumes, reservations", [PYINFRA, "-y", inv, "deploys/delete.py"], env)
        print("\ndemo finished: every step succeeded")
    finally:
        if not args.keep:
            cluster.down()


if __name__ == "__main__":
    main()
