"""Process helpers: namespace holders, nsenter, and stopping processes by pid."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Daemons get a minimal, predictable environment instead of the caller's (which may carry a
# virtualenv PATH or LIBVIRT_* overrides that must not leak into the sandbox).
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


class SandboxError(RuntimeError):
    """A sandbox operation failed; the message is meant for the operator."""


def run(argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with the clean environment and capture its output."""
    proc = subprocess.run(
        list(argv),
        env=CLEAN_ENV,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise SandboxError(f"command failed ({proc.returncode}): {shlex.join(argv)}\n{detail}")
    return proc


def nsenter_argv(pid: int, argv: Sequence[str], *, uts: bool = True, netns: str | None = None) -> list[str]:
    """Prefix argv so it runs inside the namespaces held by pid (and the network namespace at the
    path netns, e.g. /run/netns/NAME, resolved in the caller's mount namespace)."""
    prefix = ["nsenter", f"--mount=/proc/{pid}/ns/mnt"]
    if uts:
        prefix.append(f"--uts=/proc/{pid}/ns/uts")
    if netns:
        prefix.append(f"--net={netns}")
    return [*prefix, "--", *argv]


def nsrun(
    pid: int, argv: Sequence[str], *, timeout: float = 60, check: bool = True, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespaces held by pid."""
    return run(nsenter_argv(pid, argv, netns=netns), timeout=timeout, check=check)


def start_time(pid: int) -> int | None:
    """Kernel start time of pid (clock ticks since boot), or None if it is gone.

    Stored with every pid so a recycled pid is never mistaken for a sandbox process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces or parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    """True if pid runs (not a zombie) and, when given, is the same process that was recorded."""
    current = start_time(pid)
    return current is not None and (started is None or current == started)


def namespace_id(pid: int, kind: str = "mnt") -> str | None:
    """The namespace identity (e.g. 'mnt:[4026532177]') of pid, or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def pids_in_namespace(ns_id: str, kind: str = "mnt") -> list[int]:
    """Every live process whose namespace of the given kind is ns_id.

    Each sandbox node has its own mount namespace, so this finds everything started there
    (daemons, qemu, SSH sessions) without relying on pid files.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and namespace_id(int(entry), kind) == ns_id and alive(int(entry)):
            found.append(int(entry))
    return found


def _reap(pid: int) -> None:
    # Holders started by this process are its children; collect them so they don't linger as zombies.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    remaining = pids
    while remaining and time.monotonic() < deadline:
        for pid in remaining:
            _reap(pid)
        remaining = [pid for pid in remaining if alive(pid)]
        if remaining:
            time.sleep(0.05)
    return remaining


def stop(pids: list[int], *, timeout: float = 10) -> None:
    """SIGTERM the pids, wait for them to exit, SIGKILL whatever is left after timeout."""
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    remaining = _wait_gone(pids, timeout)
    if remaining:
        _signal_all(remaining, signal.SIGKILL)
        remaining = _wait_gone(remaining, 5)
    if remaining:
        raise SandboxError(f"processes did not exit even after SIGKILL: {remaining}")


def spawn_holder(script: str, ready_file: Path, log_file: Path, *, uts: bool, timeout: float = 15) -> int:
    """Start a long-running process in new mount (and optionally UTS) namespaces.

    script runs first inside the namespaces (mounts, hostname) and must end by exec'ing a
    long sleep; it writes its pid to ready_file once set up. Returns that pid.
    """
    flags = ["--mount", "--propagation", "private"] + (["--uts"] if uts else [])
    full = f"{script}\necho $$ > {shlex.quote(str(ready_file))}\nexec sleep infinity\n"
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            ["unshare", *flags, "--", "/bin/sh", "-ec", full],
            env=CLEAN_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists() and ready_file.read_text().strip():
            return proc.pid
        if proc.poll() is not None:
            raise SandboxError(f"namespace setup failed, see {log_file}:\n{log_file.read_text().strip()}")
        time.sleep(0.01)
    proc.kill()
    raise SandboxError(f"namespace setup timed out, see {log_file}")


def read_pid_file(path: Path) -> int | None:
    """The pid written in a daemon's pid file, or None if missing or unreadable."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 30, interval: float = 0.05) -> T:
    """Poll predicate() until it returns a truthy value; raise with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def spawn_daemon(argv: Sequence[str], log_file: Path) -> None:
    """Start a long-running foreground process detached from the caller (own session, output to log)."""
    with open(log_file, "ab") as log:
        subprocess.Popen(
            list(argv),
            env=CLEAN_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
