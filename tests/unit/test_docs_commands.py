"""Every command README.md and docs/*.md show names things that exist, and every relative link resolves.

Commands are the lines of fenced code blocks (and inline code spans) that start with ``pyinfra``,
``make`` or ``python -m`` (optionally after ``$ ``, ``.venv/bin/`` or ``VAR=value``), plus one command per
row of the README's workflow table. For each:

- ``pyinfra``: every option is one of pyinfra's own CLI options; the inventory and deploy files exist
  (or the ``fact`` names a FactBase class); every ``--data key=value`` key is a setting of the defaults
  table (``DEFAULTS``);
- ``make``: the target is a rule of the Makefile and every ``VAR=value`` a variable it uses;
- ``python -m``: the module can be run; for the sandbox's command lines, each subcommand and option is
  one its ``--help`` lists.

The same commands are dry-run against the sandbox in tests/integration/test_docs_commands_sandbox.py.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FactBase

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]

# Data keys deploys read that the defaults table does not hold yet: issue 21 item 1 moves every key,
# the bridge keys included, into it. Each must still be read by a deploy (checked below), so a key
# dropped from the code does not stay documented.
NOT_YET_IN_DEFAULTS = frozenset(
    {
        "xml",
        "drain",
        "installer_host",
        "kvm_bond",
        "kvm_bridge",
        "kvm_bridge_ports",
        "kvm_bridge_address",
        "kvm_bridge_gateway",
        "kvm_bridge_dns",
        "kvm_bridge_dns_search",
        "kvm_bridge_stp",
        "kvm_bridge_backend",
        "kvm_bridge_rollback_seconds",
        "kvm_bridge_verify_seconds",
    }
)
# Generated from the settings table by its own tool; not every tree has it yet.
GENERATED = frozenset({REPO / "docs" / "settings.md"})
# Modules run with ``python -m`` whose command line is argparse: subcommands and options are checked
# against their --help.
ARGPARSE_MODULES = frozenset({"sandbox", "sandbox.bench", "sandbox.demo"})

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
PROMPT = re.compile(r"^\$\s+")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
PROGRAMS = {"pyinfra", ".venv/bin/pyinfra", "make", "python", "python3", ".venv/bin/python"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Shown:
    document: Path
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        return words

    def __str__(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}: {self.text}"


def _is_command(text: str) -> bool:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return False
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    if len(words) < 2 or words[0] not in PROGRAMS:
        return False
    if words[0].endswith(("python", "python3")):
        return words[1] == "-m"
    return True


def _fenced_commands(document: Path, text: str) -> list[Shown]:
    found = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", 0
        for offset, raw in enumerate(block.group(1).splitlines()):
            line = PROMPT.sub("", raw.strip()) if not pending else raw.strip()
            if not pending:
                start = first_line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            whole, pending = pending + line, ""
            if _is_command(whole):
                found.append(Shown(document, start, whole))
    return found


def _inline_commands(document: Path, text: str) -> list[Shown]:
    outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for span in INLINE.finditer(outside):
        body = " ".join(span.group(1).split())
        if not _is_command(body):
            continue
        words = shlex.split(body)
        # Inline prose also names bare programs ("the real CLI (`pyinfra -y`)"): only complete
        # pyinfra commands, naming an inventory and what to run, are checked.
        if "pyinfra" in words[0] and not (
            any(w.startswith("inventories/") for w in words)
            and any(w.startswith("deploys/") or w in ("fact", "exec", "debug-inventory") for w in words)
        ):
            continue
        found.append(Shown(document, outside.count("\n", 0, span.start()) + 1, body))
    return found


def _workflow_rows() -> list[tuple[int, str]]:
    """The first cell of every row of the README's workflow table: (line, command tail)."""
    text = README.read_text()
    section = text.split("\n## Workflows\n", 1)[1].split("\n## ", 1)[0]
    offset = text[: text.index("\n## Workflows\n")].count("\n") + 2
    rows = []
    for number, line in enumerate(section.splitlines()):
        cell = re.match(r"^\| `([^`]+)` \|", line)
        if cell:
            rows.append((offset + number, cell.group(1).replace("\\|", "|")))
    return rows


def _workflow_commands() -> list[Shown]:
    commands = []
    for line, tail in _workflow_rows():
        inventory = "" if tail.startswith("inventories/") else "inventories/manifest.py "
        commands.append(Shown(README, line, f"pyinfra {inventory}{tail}"))
    return commands


def shown_commands() -> list[Shown]:
    commands: list[Shown] = []
    for document in DOCUMENTS:
        text = document.read_text()
        commands += _fenced_commands(document, text) + _inline_commands(document, text)
    return commands + _workflow_commands()


def pyinfra_commands() -> list[Shown]:
    return [c for c in shown_commands() if c.argv[0].endswith("pyinfra")]


# ---------------------------------------------------------------------------------------------------
# What the commands may name


def _settings_defaults() -> dict[str, Any]:
    """The defaults table, by the name DEFAULTS, wherever the settings module keeps it."""
    for module_name in ("deploys.settings", "deploys._settings"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        table = getattr(module, "DEFAULTS", None)
        if isinstance(table, dict):
            return table
    raise AssertionError("no settings module with a DEFAULTS table (deploys/settings.py or deploys/_settings.py)")


@functools.cache
def _pyinfra_options() -> dict[str, bool]:
    """pyinfra's CLI options -> whether each takes a value."""
    from pyinfra_cli.main import cli

    options = {}
    for parameter in cli.params:
        takes_value = not (getattr(parameter, "is_flag", False) or getattr(parameter, "count", False))
        for name in [*parameter.opts, *parameter.secondary_opts]:
            if name.startswith("-"):
                options[name] = takes_value
    return options


@functools.cache
def _make_rules() -> tuple[frozenset[str], frozenset[str]]:
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:]?=", text, re.M))
    return frozenset(targets), frozenset(variables)


@functools.cache
def _help(module: str, subcommand: str | None) -> str:
    argv = [sys.executable, "-m", module, *([subcommand] if subcommand else []), "--help"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(argv[1:])}: {result.stderr.strip()[-500:]}"
    return result.stdout


def _runnable(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and '__name__ == "__main__"' in Path(spec.origin).read_text()


def _read_by_deploys(key: str) -> bool:
    return any(f'"{key}"' in path.read_text() for path in (REPO / "deploys").glob("*.py"))


def check_pyinfra(command: Shown) -> list[str]:
    """Problems with one pyinfra command line; empty when it names only things that exist."""
    problems: list[str] = []
    options = _pyinfra_options()
    words = command.argv[1:]
    positionals, data = [], []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            positionals += words[index:]
            break
        if word.startswith("-") and positionals[-1:] != ["exec"]:
            name, _, inline_value = word.partition("=")
            if name not in options:
                problems.append(f"{word}: not an option of pyinfra")
            elif options[name] and not inline_value:
                index += 1
                if name == "--data" and index < len(words):
                    data.append(words[index])
        else:
            positionals.append(word)
        index += 1
    if len(positionals) < 2:
        return [*problems, "needs an inventory and a deploy file (or fact/exec/debug-inventory)"]
    inventory, action, *rest = positionals
    if not (REPO / inventory).is_file() or not inventory.startswith("inventories/"):
        problems.append(f"{inventory}: no such inventory in inventories/")
    if action == "fact":
        for fact in rest:
            module_name, _, class_name = fact.rpartition(".")
            fact_class = getattr(importlib.import_module(module_name), class_name, None)
            if not (isinstance(fact_class, type) and issubclass(fact_class, FactBase)):
                problems.append(f"{fact}: no such fact")
    elif action not in ("exec", "debug-inventory"):
        if not (action.startswith("deploys/") and (REPO / action).is_file()):
            problems.append(f"{action}: no such deploy file in deploys/")
        if rest:
            problems.append(f"{' '.join(rest)}: extra arguments after the deploy file")
    known = set(_settings_defaults()) | NOT_YET_IN_DEFAULTS
    for item in data:
        key, equals, _ = item.partition("=")
        if not equals:
            problems.append(f"--data {item}: not key=value")
        elif key not in known:
            problems.append(f"--data {key}: not a setting of the defaults table")
        elif key not in _settings_defaults() and not _read_by_deploys(key):
            problems.append(f"--data {key}: no deploy reads it")
    return problems


def check_make(command: Shown) -> list[str]:
    targets, variables = _make_rules()
    problems = []
    for word in command.argv[1:]:
        if ENV_ASSIGNMENT.match(word):
            if word.split("=", 1)[0] not in variables:
                problems.append(f"{word}: the Makefile has no variable {word.split('=', 1)[0]}")
        elif word.startswith("-"):
            problems.append(f"{word}: options to make are not shown in the docs")
        elif word not in targets:
            problems.append(f"make {word}: no such target in the Makefile")
    return problems


def check_python_module(command: Shown) -> list[str]:
    module, *arguments = command.argv[2:]
    if not _runnable(module):
        return [f"python -m {module}: no such runnable module"]
    if module not in ARGPARSE_MODULES:
        return []
    subcommand = arguments[0] if arguments and not arguments[0].startswith("-") else None
    problems = []
    if subcommand and not re.search(rf"[{{,]{re.escape(subcommand)}[,}}]", _help(module, None)):
        problems.append(f"python -m {module}: no subcommand {subcommand}")
        return problems
    usage = _help(module, subcommand)
    for word in arguments:
        if word.startswith("--") and not re.search(rf"{re.escape(word)}\b", usage):
            problems.append(f"python -m {module} {subcommand or ''}: no option {word}")
    return problems


def check(command: Shown) -> list[str]:
    program = command.argv[0]
    if program.endswith("pyinfra"):
        return check_pyinfra(command)
    if program == "make":
        return check_make(command)
    return check_python_module(command)


# ---------------------------------------------------------------------------------------------------
# Tests


def test_commands_are_found_in_readme_and_docs() -> None:
    commands = shown_commands()
    readme = [str(c) for c in commands if c.document == README]
    assert any("make demo" in c for c in readme) and any("make test" in c for c in readme), readme
    assert len(pyinfra_commands()) >= 30, len(pyinfra_commands())
    assert {c.document for c in commands} >= {README, REPO / "docs" / "host-setup.md"}


@pytest.mark.parametrize("command", shown_commands(), ids=str)
def test_shown_command_names_what_exists(command: Shown) -> None:
    assert check(command) == [], str(command)


def test_checks_reject_what_does_not_exist() -> None:
    """The checker itself: each kind of mistake in a shown command is caught."""
    wrong = {
        "pyinfra inventories/manifest.py deploys/buidl.py": "no such deploy file",
        "pyinfra inventories/nowhere.py deploys/build.py": "no such inventory",
        "pyinfra inventories/manifest.py deploys/stop.py --data forse=true": "not a setting",
        "pyinfra inventories/manifest.py deploys/stop.py --dryrun": "not an option of pyinfra",
        "pyinfra inventories/manifest.py fact facts.libvirt.Domainz": "no such fact",
        "make dmeo": "no such target",
        "make check-manifest MANIFST=x.json": "no variable MANIFST",
        "python -m sandbox.nowhere": "no such runnable module",
        "python -m sandbox upp": "no subcommand upp",
        "python -m sandbox up --hostz 2": "no option --hostz",
    }
    for text, expected in wrong.items():
        problems = check(Shown(README, 1, text))
        assert any(expected in p for p in problems), (text, problems)
    for text in ("pyinfra -y --limit sm-01 inventories/manifest.py deploys/stop.py --data force=true",
                 "make starter MANIFEST=manifest.json",
                 "python -m sandbox up --hosts 2"):
        assert check(Shown(README, 1, text)) == [], text


def test_extraction_joins_continuations_and_drops_prompts_and_comments() -> None:
    text = (
        "```sh\n$ KVM_MANIFEST=m.json pyinfra -y inventories/manifest.py deploys/build.py  # build\n"
        "pyinfra inventories/manifest.py deploys/stop.py \\\n    --data force=true\nls -l\n```\n"
        "and `make demo` inline, `pyinfra -y` bare\n"
    )
    found = _fenced_commands(README, text) + _inline_commands(README, text)
    assert [c.argv for c in found] == [
        ["pyinfra", "-y", "inventories/manifest.py", "deploys/build.py"],
        ["pyinfra", "inventories/manifest.py", "deploys/stop.py", "--data", "force=true"],
        ["make", "demo"],
    ]
    assert [c.line for c in found] == [2, 3, 7]


DATA_KEY = re.compile(r"--data[ =]([A-Za-z_][A-Za-z0-9_]*)=")


def test_every_data_key_mentioned_is_a_setting() -> None:
    """`--data key=value` in prose and tables too, not only in whole commands."""
    known = set(_settings_defaults()) | NOT_YET_IN_DEFAULTS
    unknown = sorted(
        f"{document.relative_to(REPO)}: {key}"
        for document in DOCUMENTS
        for key in DATA_KEY.findall(document.read_text())
        if key not in known and key != "key"  # "--data key=value": the form itself
    )
    assert unknown == []


def test_readme_manifest_error_example_is_what_pyinfra_prints(tmp_path: Path) -> None:
    """The README's bad.json example: a manifest with those two problems gives exactly those lines,
    before any host is contacted (the hosts named do not exist)."""
    text = README.read_text()
    shown = re.search(r"```\n\$ (KVM_MANIFEST=bad.json pyinfra [^\n]*)\n(.*?)```", text, re.S)
    assert shown, "the README shows no bad.json example"

    def vm(number: int, ip: str, memory: int = 1) -> dict[str, Any]:
        return {"name": f"vm{number}", "hostname": f"vm{number}.example.internal", "ipaddress": ip,
                "vcpus": 1, "memoryGb": memory, "maxMemoryGb": 8, "numDisks": 0, "diskSize": 0}

    bad = [
        {"host": "nowhere-01.invalid", "vmspecs": [vm(1, "10.10.5.11"), vm(2, "10.10.5.12"), vm(3, "10.10.5.13", 16)]},
        {"host": "nowhere-02.invalid", "vmspecs": [vm(4, "10.10.5.11")]},
    ]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    argv = shlex.split(shown.group(1))[1:]
    env = {**os.environ, "KVM_MANIFEST": str(tmp_path / "bad.json"), "PYINFRA_PROGRESS": "off"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), *argv[1:]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    printed = (result.stdout + result.stderr).replace(str(tmp_path / "bad.json"), "bad.json")
    assert result.returncode != 0
    for line in shown.group(2).strip().splitlines():
        assert line in printed.splitlines(), (line, printed)


def test_every_not_yet_default_key_is_read_by_a_deploy() -> None:
    unread = sorted(k for k in NOT_YET_IN_DEFAULTS - set(_settings_defaults()) if not _read_by_deploys(k))
    assert unread == []


def _entry_point_deploys() -> set[str]:
    """deploys/*.py run from the command line: public files no other deploys module imports."""
    files = {p.stem: p for p in (REPO / "deploys").glob("*.py") if not p.stem.startswith("_")}
    imported = set()
    for path in (REPO / "deploys").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "deploys":
                    imported.update(parts[1:2] or [alias.name for alias in node.names])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[1] for a in node.names if a.name.startswith("deploys."))
    return {f"deploys/{stem}.py" for stem in files if stem not in imported}


def test_workflow_table_has_one_row_per_workflow() -> None:
    deploys = [re.search(r"deploys/\w+\.py", tail).group(0) for _, tail in _workflow_rows()]  # type: ignore[union-attr]
    duplicates = sorted({d for d in deploys if deploys.count(d) > 1})
    assert duplicates == [], f"workflow table rows repeat {duplicates}"
    readme = README.read_text()
    undocumented = sorted(d for d in _entry_point_deploys() if d not in readme)
    assert undocumented == [], f"deploys not in the README: {undocumented}"


def test_readme_order_and_size() -> None:
    text = README.read_text()
    assert len(text.encode()) < 16384, len(text.encode())
    headings = re.findall(r"^## (.+)$", text, re.M)
    order = ["Install", "The manifest", "Inventory", "Host setup", "Workflows", "Troubleshooting"]
    positions = [headings.index(h) for h in order]
    assert positions == sorted(positions), headings


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _links() -> list[tuple[Path, str]]:
    outside = [(d, FENCE.sub("", d.read_text())) for d in DOCUMENTS]
    return [(d, target) for d, text in outside for target in LINK.findall(text)]


@pytest.mark.parametrize(
    ("document", "target"), _links(), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v
)
def test_relative_link_resolves(document: Path, target: str) -> None:
    if re.match(r"^[a-z]+:", target):
        return  # an external address
    path_part, _, anchor = target.partition("#")
    path = (document.parent / path_part).resolve() if path_part else document
    if path in GENERATED and not path.exists():
        pytest.skip(f"{target}: generated from the settings table, not in this tree yet")
    assert path.is_file(), f"{document.relative_to(REPO)}: {target}: no such file"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.M)
        assert anchor in {_slug(h) for h in headings}, f"{document.relative_to(REPO)}: {target}: no such heading"
