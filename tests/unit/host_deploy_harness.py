"""Run a deploy file against simulated hosts and list what it would run, without contacting anything.

A ``SimHost`` answers pyinfra's facts from a small model of the machine (distribution, packages,
files with content, directories, users, systemd units...). ``plan()`` loads the deploy file the way
the pyinfra CLI does (once per host, with the host in context) and then walks every operation's
command generator in order, the same generators pyinfra would execute. Because files hold real
content, a host given the output of a first plan shows what a second run would do.
"""

from __future__ import annotations

import hashlib
import re
import runpy
from dataclasses import dataclass, field
from datetime import datetime
from inspect import getcallargs
from io import StringIO
from pathlib import Path
from typing import Any

import pyinfra
import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.arguments import all_argument_meta
from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

REPO = Path(__file__).resolve().parents[2]


def _posix_to_python(pattern: str) -> str:
    """grep/sed ERE classes used by pyinfra and our deploys -> Python ``re``."""
    return (
        pattern.replace("[[:space:]]", r"\s")
        .replace("[^#[:space:]]", r"[^#\s]")
        .replace("[[:alnum:]]", r"[A-Za-z0-9]")
    )


@dataclass
class SimHost:
    distro: dict[str, Any]
    systemd: bool = True
    packages: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=lambda: {"root", "kvm", "libvirt", "libvirt-qemu"})
    running: set[str] = field(default_factory=set)
    enabled: set[str] = field(default_factory=set)
    mounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: set[str] = field(default_factory=set)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    fact_calls: list[str] = field(default_factory=list)

    def _stat(self, path: str, kind: str) -> dict[str, Any] | None:
        if kind == "file" and path in self.files:
            default = {"user": "root", "group": "root", "mode": 644, "size": len(self.files[path])}
        elif kind == "directory" and (path in self.dirs or path == "/run/systemd/system" and self.systemd):
            default = {"user": "root", "group": "root", "mode": 755}
        else:
            return None
        return {**default, **self.meta.get(path, {}), "mtime": datetime(2025, 1, 1)}

    def fact(self, key: str, kwargs: dict[str, Any]) -> Any:
        self.fact_calls.append(key)
        path = kwargs.get("path")
        if key == "server.LinuxDistribution":
            return self.distro
        if key == "server.Os":
            return "Linux"
        if key == "server.Which":
            return f"/usr/sbin/{kwargs['command']}"
        if key == "rpm.RpmPackageProvides":
            return [[kwargs["package"], "1.0"]] if kwargs["package"] in self.packages else []
        if key == "server.TmpDir":
            return "/tmp"
        if key == "server.Date":
            return datetime(2025, 1, 1)
        if key == "files.Directory":
            return self._stat(path, "directory")
        if key == "files.File":
            return self._stat(path, "file")
        if key == "files.Link":
            return None
        if key in ("files.Sha1File", "files.Sha256File"):
            if path not in self.files:
                return None
            algo = hashlib.sha1 if key == "files.Sha1File" else hashlib.sha256
            return algo(self.files[path].encode()).hexdigest()
        if key == "files.FindInFile":
            if path not in self.files:
                return None
            pattern = re.compile(_posix_to_python(kwargs["pattern"]))
            return [line for line in self.files[path].splitlines() if pattern.search(line)]
        if key in ("deb.DebPackages", "rpm.RpmPackages"):
            return {name: ["1.0"] for name in self.packages}
        if key == "server.Users":
            return self.users
        if key == "server.Groups":
            return set(self.groups)
        if key == "server.KernelModules":
            return {name: {} for name in self.modules}
        if key == "server.Mounts":
            return self.mounts
        if key == "systemd.SystemdStatus":
            return {unit: unit in self.running for unit in kwargs.get("services") or []}
        if key == "systemd.SystemdEnabled":
            return {unit: unit in self.enabled for unit in kwargs.get("services") or []}
        raise KeyError(f"SimHost has no model for fact {key} {kwargs}")


@dataclass
class Step:
    name: str
    commands: list[str]
    conditional: bool
    noop: str | None = None
    uploads: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    steps: dict[str, list[Step]]
    state: State

    def names(self, host: str) -> list[str]:
        return [step.name for step in self.steps[host]]

    def step(self, host: str, name: str) -> Step:
        matches = [step for step in self.steps[host] if step.name == name]
        assert len(matches) == 1, f"{name!r} not exactly once in {self.names(host)}"
        return matches[0]

    def commands(self, host: str) -> list[str]:
        return [command for step in self.steps[host] for command in step.commands]

    def changing(self, host: str) -> list[str]:
        return [step.name for step in self.steps[host] if step.commands]

    def uploads(self, host: str) -> dict[str, str]:
        return {dest: text for step in self.steps[host] for dest, text in step.uploads.items()}


def _render(command: Any, uploads: dict[str, str]) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        if isinstance(src, StringIO):
            text = src.getvalue()
        elif hasattr(src, "read"):
            text = src.read()
        else:
            text = Path(src).read_text()
        uploads[command.dest] = text
        return f"upload {command.dest}"
    if isinstance(command, FunctionCommand):
        return f"call {command.function.__name__}"
    return repr(command)


def plan(
    deploy: str,
    sims: dict[str, SimHost],
    host_data: dict[str, dict[str, Any]] | None = None,
    groups: dict[str, list[str]] | None = None,
    group_data: dict[str, dict[str, Any]] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> Plan:
    """Load ``deploy`` (path relative to the repo) for every host of ``sims``; return their steps."""
    assert monkeypatch is not None
    host_data = host_data or {}
    groups = groups or {}
    group_data = group_data or {}
    inventory = Inventory(
        ([(name, dict(host_data.get(name, {}))) for name in sims], {}),
        **{group: (members, dict(group_data.get(group, {}))) for group, members in groups.items()},
    )
    state = State(inventory=inventory, config=Config())

    def get_fact(self: Host, cls: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs = {key: value for key, value in kwargs.items() if key not in all_argument_meta}
        if args or kwargs:
            kwargs = getcallargs(cls().command, *args, **kwargs)
            kwargs.pop("self", None)
        key = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
        return sims[self.name].fact(key, kwargs)

    monkeypatch.setattr(Host, "get_fact", get_fact)
    # Operation identity as in the CLI (call-stack lines), not the API's per-host counter, so hosts
    # with different operation counts (e.g. a user loop on one only) still line up.
    monkeypatch.setattr(pyinfra, "is_cli", True)
    state.current_op_file_number = 0
    state.set_stage(StateStage.Prepare)
    path = str(REPO / deploy)
    state.current_deploy_filename = path
    for host in inventory:
        state.activate_host(host)
        with ctx_state.use(state), ctx_host.use(host):
            runpy.run_path(path)

    steps: dict[str, list[Step]] = {name: [] for name in sims}
    for op_hash in state.get_op_order():
        meta = state.get_op_meta(op_hash)
        for host in inventory:
            op_data = state.ops[host].get(op_hash)
            if op_data is None:
                continue
            uploads: dict[str, str] = {}
            with ctx_state.use(state), ctx_host.use(host):
                host.noop_description = None  # type: ignore[attr-defined]
                commands = [_render(command, uploads) for command in op_data.command_generator()]
            steps[host.name].append(
                Step(
                    name=" | ".join(sorted(meta.names)),
                    commands=commands,
                    conditional=bool(op_data.global_arguments.get("_if")),
                    uploads=uploads,
                )
            )
    return Plan(steps=steps, state=state)
