"""Every pyinfra command README.md and docs/*.md show, dry-run (``--dry``) against the sandbox.

The commands come from tests/unit/test_docs_commands.py (which checks that they name existing files,
facts and settings). Each runs with the cluster inventory and the example manifest against the 2-host
sandbox, with ``--dry`` added: nothing changes. Every command must finish with exit status 0 and no
traceback (the ISO, XML and bridge commands included: under ``--dry`` they only plan). Of values shown
as alternatives (``create|revert|delete``) the first is run. Guest-inventory commands need booted guests
and are run by ``make demo``; the README's bad.json example is run by the unit test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox import client
from tests.unit.test_docs_commands import REPO, Shown, pyinfra_commands

pytestmark = pytest.mark.integration

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
MANIFEST = REPO / "manifest.example.json"

def _arguments(command: Shown) -> tuple[str, ...]:
    """The command's arguments without -y/--dry; of alternatives shown as `a|b|c`, the first."""
    arguments = [a for a in command.argv[1:] if a not in ("-y", "--yes", "--dry")]
    return tuple(re.sub(r"\\?\|.*$", "", a) if "=" in a and not a.startswith("{") else a for a in arguments)


def _dry_runs() -> list[Shown]:
    seen: set[tuple[str, ...]] = set()
    runs = []
    for command in pyinfra_commands():
        argv = _arguments(command)
        if "inventories/guests.py" in argv or "debug-inventory" in argv or "bad.json" in command.text:
            continue
        if argv not in seen:
            seen.add(argv)
            runs.append(command)
    return runs


@pytest.fixture(scope="module")
def environment(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    workdir = tmp_path_factory.mktemp("docs-commands")
    (workdir / "inventory.json").write_text(json.dumps(sandbox_cluster))
    return client.workflow_env(MANIFEST, workdir / "inventory.json", sandbox_cluster["mgmt"]["name"])


@pytest.mark.parametrize("command", _dry_runs(), ids=str)
def test_shown_command_dry_runs_on_the_sandbox(command: Shown, environment: dict[str, str]) -> None:
    argv = list(_arguments(command))
    result = subprocess.run(
        [PYINFRA, "-y", "--dry", *argv], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-4000:]
    assert result.returncode == 0, f"{command}\n{output[-4000:]}"
