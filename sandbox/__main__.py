"""Command line: python -m sandbox up|status|down|guests ..."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import cluster
from .proc import SandboxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug output")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the cluster (no-op if already up with the same size)")
    up.add_argument("--hosts", type=int, default=2, help="number of hypervisors sm-01..sm-NN (default 2)")
    up.add_argument("--base-vm", default="centos7", help="name of the base VM defined on every host")
    up.add_argument("--base-data-mib", type=int, default=1024, help="random data in the base root disk (MiB)")
    up.add_argument("--base-size-gib", type=int, default=40, help="virtual size of the base disk (GiB)")

    status = commands.add_parser("status", help="show nodes, pids, libvirt version, KVM or TCG")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("down", help="stop everything and remove the state dir")

    guests = commands.add_parser("guests", help="guest stand-ins reachable over SSH")
    guest_commands = guests.add_subparsers(dest="guests_command", required=True)
    guests_up = guest_commands.add_parser("up", help="start stand-ins NAME=ADDR (ADDR in 127.0.3.0/24)")
    guests_up.add_argument("guests", nargs="+", metavar="NAME=ADDR")
    guest_commands.add_parser("down", help="stop all guest stand-ins")
    return parser


def _print_inventory_summary(inventory: dict) -> None:
    for name, data in inventory["hosts"].items():
        print(f"  {name:<8} {data['ssh_hostname']}")
    print(f"  {inventory['mgmt']['name']:<8} {inventory['mgmt']['data']['ssh_hostname']}")
    for name, data in inventory["guests"].items():
        print(f"  {name:<8} {data['ssh_hostname']} (guest)")


def _cmd_up(args: argparse.Namespace) -> None:
    started = time.monotonic()
    inventory, already = cluster.bring_up(args.hosts, args.base_vm, args.base_data_mib, args.base_size_gib)
    layout = cluster.Layout.current()
    if already:
        print("sandbox already up")
    else:
        print(f"sandbox up in {time.monotonic() - started:.1f}s")
    _print_inventory_summary(inventory)
    print(f"inventory: {layout.inventory}")
    print(f"environment: source {layout.env}")


def _format_pids(info: dict) -> str:
    return " ".join(
        f"{name}={pid}" + ("" if info["alive"].get(name) else "(dead)") for name, pid in info["pids"].items()
    )


def _cmd_status(args: argparse.Namespace) -> None:
    report = cluster.status()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if "hosts" not in report:
        print(f"sandbox not up (state dir {report['state_dir']})")
        return
    health = "up" if report["up"] else "DEGRADED (run down, then up)"
    accel = report.get("accel") or {}
    how = f" (-cpu {accel['cpu_model']}, booted in {accel['boot_seconds']} s)" if accel else ""
    print(
        f"sandbox {health}; {report['accelerator']}{how}; base VM {report['base_vm']}; "
        f"state {report['state_dir']}"
    )
    for name, info in report["hosts"].items():
        libvirt = info.get("libvirt", {})
        version = f"libvirt {libvirt.get('libvirt', '?')}, {libvirt.get('hypervisor', '?')}"
        print(f"  {name:<8} {info['address']:<11} {version}  {_format_pids(info)}")
    for group in ("mgmt", "guests"):
        for name, info in report[group].items():
            print(f"  {name:<8} {info['address']:<11} {_format_pids(info)}")
    print(f"inventory: {report['inventory']}")


def _cmd_down(_: argparse.Namespace) -> None:
    print("sandbox down" if cluster.down() else "sandbox not up")


def _parse_guests(pairs: list[str]) -> dict[str, str]:
    guests = {}
    for pair in pairs:
        name, sep, address = pair.partition("=")
        if not sep or not name or not address:
            raise SandboxError(f"expected NAME=ADDR, got {pair!r}")
        guests[name] = address
    return guests


def _cmd_guests(args: argparse.Namespace) -> None:
    if args.guests_command == "up":
        for name, data in cluster.guests_up(_parse_guests(args.guests)).items():
            print(f"  {name:<12} {data['ssh_hostname']}")
    else:
        cluster.guests_down()
        print("guests down")


COMMANDS = {"up": _cmd_up, "status": _cmd_status, "down": _cmd_down, "guests": _cmd_guests}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="sandbox: %(message)s",
        stream=sys.stderr,
    )
    try:
        COMMANDS[args.command](args)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: not an error of the sandbox; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
