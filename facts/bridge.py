"""What the bridge deploy needs to know about a host, in one command: the committed stamp, the switch
state, the kernel's links and IPv4 addresses, and which network tools exist."""

from __future__ import annotations

import json
import re
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand
from pyinfra.api.exceptions import FactProcessError

from inventories.defaults import BRIDGE_STAMP as STAMP
from inventories.defaults import BRIDGE_STATE_DIR as STATE_DIR

SECTIONS = ("@@stamp", "@@state", "@@links", "@@addrs", "@@tools")
_LINK = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$")
_ADDR = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\S+)")


class BridgeState(FactBase[dict]):
    """``{"stamp": dict | None, "switch_state": str | None, "links": {dev: {"up", "master"}},
    "addrs": {dev: [cidr]}, "tools": [names], "systemd": bool}``."""

    default = dict

    def command(self, state_dir: str = STATE_DIR, stamp: str = STAMP) -> StringCommand:
        return StringCommand(
            "echo @@stamp; cat",
            QuoteString(stamp),
            "2>/dev/null; echo; echo @@state; cat",
            QuoteString(f"{state_dir}/state"),
            "2>/dev/null; echo @@links; ip -o link show 2>/dev/null;",
            "echo @@addrs; ip -o -4 addr show scope global 2>/dev/null;",
            "echo @@tools; for t in netplan nmcli systemd-run; do command -v $t; done;",
            "[ -d /run/systemd/system ] && echo systemd; true",
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        sections: dict[str, list[str]] = {}
        current = None
        for line in output:
            if line in SECTIONS:
                current = line
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
        if set(sections) != set(SECTIONS):
            raise FactProcessError(f"bridge state: missing sections in {output!r}")
        stamp_text = "\n".join(sections["@@stamp"]).strip()
        try:
            stamp = json.loads(stamp_text) if stamp_text else None
        except json.JSONDecodeError:
            stamp = {"unreadable": stamp_text[:200]}
        state_lines = [line.strip() for line in sections["@@state"] if line.strip()]
        links: dict[str, dict[str, Any]] = {}
        for line in sections["@@links"]:
            match = _LINK.match(line)
            if match:
                rest = match.group(3).split()
                master = rest[rest.index("master") + 1] if "master" in rest[:-1] else None
                links[match.group(1)] = {"up": "UP" in match.group(2).split(","), "master": master}
        addrs: dict[str, list[str]] = {}
        for line in sections["@@addrs"]:
            match = _ADDR.match(line)
            if match:
                addrs.setdefault(match.group(1), []).append(match.group(2))
        tools = [line.rsplit("/", 1)[-1] for line in sections["@@tools"] if line.startswith("/")]
        return {
            "stamp": stamp,
            "switch_state": state_lines[0] if state_lines else None,
            "links": links,
            "addrs": addrs,
            "tools": tools,
            "systemd": "systemd" in sections["@@tools"],
        }
