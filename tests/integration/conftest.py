"""Fixtures for tests against the sandbox cluster (real libvirtd, sshd, dnsmasq on loopback)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

import sandbox
from sandbox import cluster

SANDBOX_HOSTS = 2


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_on_sigterm() -> object:
    """Turn SIGTERM (e.g. from `timeout`) into KeyboardInterrupt so pytest still runs teardown
    and the sandbox is not left running; returns the previous handler."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return previous


@pytest.fixture(scope="session")
def sandbox_cluster() -> Iterator[dict]:
    """The sandbox inventory (hosts, mgmt, guests SSH data) for a 2-host cluster.

    Reuses a sandbox that is already up with 2 hosts and leaves it running; otherwise brings
    one up for the session, tears it down at the end (even after failures) and checks that
    nothing it started is left running, mounted or on disk.
    """
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (namespaces, bind mounts, sshd on port 22)")
    already_up = sandbox.status().get("up", False)
    inventory = sandbox.up(hosts=SANDBOX_HOSTS)
    if already_up:
        yield inventory
        return
    previous = _interrupt_on_sigterm()
    try:
        yield inventory
    finally:
        signal.signal(signal.SIGTERM, previous)
        recorded = cluster.snapshot()
        sandbox.down()
        if recorded is not None:
            problems = cluster.leftovers(recorded)
            assert not problems, "sandbox down left things behind:\n" + "\n".join(problems)


def _consoles() -> str:
    """The tail of every guest's serial console log on every hypervisor of the sandbox."""
    nodes = cluster.state_dir() / "nodes"
    parts = []
    for log in sorted(nodes.glob("*/var-log-libvirt/qemu/*-console.log")):
        lines = log.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"--- {log.parent.parent.parent.name}: {log.name}\n" + "\n".join(lines))
    return "\n".join(parts) or "(no console logs)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the guests' serial consoles to a failing test that boots guests."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("guests") is not None:
        report.sections.append(("guest serial consoles", _consoles()))
