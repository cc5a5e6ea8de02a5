"""Operations and facts tested the pyinfra way: JSON cases run by pyinfra-testing's generators.

Each case under ``tests/unit/cases/operations/<module>.<operation>/`` gives arguments and facts and the
exact commands (or the no-op) expected; each case under ``tests/unit/cases/facts/<module>.<Fact>/``
gives the fact's arguments, the command, the host's output and the parsed result. A case may name a
captured probe output instead of spelling it out: ``{"$fixture": "libvirt/cluster"}`` stands for
``tests/unit/fixtures/libvirt/cluster.json``, as the processed ``Hypervisor`` snapshot in a facts
section and as the raw output lines in a fact case's ``output``. That is the only expansion; every
expected value is written in the case file. A ``libvirt.Hypervisor`` value in a facts section is plain
data (JSON); the fake host hands it to the operation as the fact's typed ``HostState``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pyinfra_testing.operations
from pyinfra_testing.facts import make_fact_tests
from pyinfra_testing.operations import make_operation_tests

from facts.libvirt import Hypervisor
from facts.util.host_state import HostState

CASES = Path(__file__).with_name("cases")
FIXTURES = Path(__file__).with_name("fixtures")


def _fixture_lines(name: str) -> list[str]:
    return (FIXTURES / f"{name}.json").read_text().splitlines()


def _expand(value: Any, raw: bool) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$fixture"}:
            lines = _fixture_lines(value["$fixture"])
            return lines if raw else Hypervisor().process(lines).to_dict()
        return {key: _expand(item, raw) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, raw) for item in value]
    return value


def _expanded(kind: str, name: str) -> Path:
    """The case files of ``kind/name`` with fixture references replaced, in a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix=f"kvm-qemu-cases-{name}-"))
    for case in sorted((CASES / kind / name).glob("*.json")):
        data = json.loads(case.read_text())
        if "facts" in data:
            data["facts"] = _expand(data["facts"], raw=False)
        if "output" in data:
            data["output"] = _expand(data["output"], raw=True)
        (target / case.name).write_text(json.dumps(data))
    return target


def _operations() -> list[str]:
    return sorted(path.name for path in (CASES / "operations").iterdir() if path.is_dir())


def _facts() -> list[str]:
    return sorted(path.name for path in (CASES / "facts").iterdir() if path.is_dir())


_create_host = pyinfra_testing.operations.create_host


def _typed_host(state: Any, name: Any = None, facts: Any = None, data: Any = None) -> Any:
    """pyinfra-testing's fake host, with each ``libvirt.Hypervisor`` value as the fact returns it."""
    typed = {
        fact: (
            {args: HostState.from_dict(value) for args, value in values.items()}
            if fact == "libvirt.Hypervisor"
            else values
        )
        for fact, values in (facts or {}).items()
    }
    return _create_host(state, name=name, facts=typed, data=data)


for _name in _operations():
    _class = patch("pyinfra_testing.operations.create_host", _typed_host)(
        make_operation_tests("operations", _name, _expanded("operations", _name))
    )
    globals()[f"TestOperation_{_name.replace('.', '_')}"] = _class

for _name in _facts():
    _class = make_fact_tests("facts", _name, _expanded("facts", _name))
    globals()[f"TestFact_{_name.replace('.', '_')}"] = _class

del _class
