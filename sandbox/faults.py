"""Faults for the sandbox: freeze or kill a node's daemon, shrink a directory with a small tmpfs.

Every fault is a context manager that undoes itself on the way out (also after a failure), so a test
never leaves a frozen sshd, a dead libvirtd or a stray mount behind:

    with faults.frozen("sm-01", "sshd"), faults.killed("sm-02", "libvirtd"):
        ...

``killed`` restarts the daemon afterwards and records its new pid in the sandbox state, so ``down``
and ``status`` keep working.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from . import cluster, hypervisor, proc
from .node import Node
from .proc import SandboxError


def _node(name: str) -> Node:
    state = cluster._load(cluster.Layout.current())
    if state is None or name not in state.nodes:
        raise SandboxError(f"no sandbox node {name}")
    return state.nodes[name]


def _daemon_pid(node: Node, daemon: str) -> int:
    pid = node.daemon_pid(daemon)
    if pid is None:
        raise SandboxError(f"{daemon} is not running on {node.name}")
    return pid


@contextlib.contextmanager
def frozen(name: str, daemon: str) -> Iterator[int]:
    """SIGSTOP the daemon (it keeps its sockets but answers nothing); SIGCONT on the way out."""
    pid = _daemon_pid(_node(name), daemon)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def kill(name: str, daemon: str) -> None:
    node = _node(name)
    pid = _daemon_pid(node, daemon)
    os.kill(pid, signal.SIGKILL)
    proc.wait_for(lambda: not proc.alive(pid), f"{daemon} on {name} to die", timeout=10)


def restart_libvirt(name: str) -> None:
    """Start virtlogd/libvirtd again on a hypervisor whose libvirtd was killed; save the new pids."""
    layout = cluster.Layout.current()
    with cluster._locked(layout):
        state = cluster._load(layout)
        if state is None:
            raise SandboxError("the sandbox is not up")
        node = state.nodes[name]
        if node.daemon_pid("libvirtd") is None:
            old = node.daemon_pid("virtlogd")
            if old is not None:
                proc.stop([old])
            hypervisor.start_libvirt(node)
            cluster._save(layout, state)


@contextlib.contextmanager
def killed(name: str, daemon: str = "libvirtd") -> Iterator[None]:
    """SIGKILL libvirtd on a hypervisor; started again (and recorded) on the way out."""
    if daemon != "libvirtd":
        raise SandboxError("only libvirtd can be killed and restarted")
    kill(name, daemon)
    try:
        yield
    finally:
        restart_libvirt(name)


@contextlib.contextmanager
def small_tmpfs(name: str, directory: str, size_mib: int) -> Iterator[None]:
    """Mount a ``size_mib`` tmpfs over ``directory`` inside the node's mount namespace; unmounted after."""
    node = _node(name)
    node.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mib)}m,mode=0775", "kvm-qemu-fault", directory])
    try:
        yield
    finally:
        node.run(["umount", "-l", directory], check=False)
