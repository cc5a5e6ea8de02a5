"""Write a starter manifest to edit (the original ``kvm-mgr.sh config F``); never overwrites a file.

    .venv/bin/python -m inventories.starter manifest.json      (or: make starter MANIFEST=manifest.json)

JSON has no comments, so each vmspec's ``description`` (a manifest field, stored in the domain) carries
the explanation, and the same notes are printed once on the terminal. The file validates as written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

STARTER: list[dict[str, Any]] = [
    {
        "host": "kvm-01",
        "vmspecs": [
            {
                "name": "web01",
                "hostname": "web01.cluster.internal",
                "ipaddress": "10.10.5.11",
                "vcpus": 2,
                "memoryGb": 2,
                "maxMemoryGb": 4,
                "numDisks": 1,
                "diskSize": 10,
                "description": "name: libvirt domain; hostname: FQDN served by the management node; "
                "ipaddress: static DHCP lease; memoryGb <= maxMemoryGb (GiB); "
                "numDisks data disks vdb.. of diskSize GiB each",
            },
            {
                "name": "db01",
                "hostname": "db01.cluster.internal",
                "ipaddress": "10.10.5.12",
                "vcpus": 4,
                "memoryGb": 4,
                "maxMemoryGb": 8,
                "numDisks": 0,
                "diskSize": 0,
                "srcvm": "centos7",
                "clone": "linked",
                "description": "optional keys: srcvm (base VM to clone, default centos7), pool (default), "
                "clone full|linked, macaddress (default derived from name), autostart, sshHost, cloudInit",
            },
        ],
    },
    {
        "host": "kvm-02",
        "vmspecs": [
            {
                "name": "app01",
                "hostname": "app01.cluster.internal",
                "ipaddress": "10.10.5.21",
                "vcpus": 1,
                "memoryGb": 1,
                "maxMemoryGb": 2,
                "numDisks": 0,
                "diskSize": 0,
                "description": "host: the hypervisor pyinfra reaches over SSH; one entry per hypervisor",
            }
        ],
    },
]

NOTES = """\
Starter manifest written to {path}. Next:
  1. rename hosts and VMs, set addresses in your cluster network (descriptions explain each field);
  2. check it:    make check-manifest MANIFEST={path}
  3. preview:     KVM_MANIFEST={path} pyinfra inventories/manifest.py deploys/build.py --dry
"""


class StarterExists(Exception):
    """The target path exists (as a file, directory or link); nothing was written."""


def write_starter(path: str) -> None:
    """Create ``path`` with the starter manifest, exclusively: an existing path (a dangling link
    included) is refused, never truncated or followed."""
    text = json.dumps(STARTER, indent=2) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise StarterExists(f"{path} already exists; nothing was written (choose another name)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        # An option is never taken for a file name: ``--help`` prints this and writes nothing.
        print("usage: python -m inventories.starter FILE", file=sys.stderr)
        return 0 if args in (["-h"], ["--help"]) else 2
    try:
        write_starter(args[0])
    except (StarterExists, OSError) as exc:
        print(f"kvm-qemu: {exc}", file=sys.stderr)
        return 1
    print(NOTES.format(path=args[0]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
