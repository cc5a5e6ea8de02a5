"""Command builders: every value goes through QuoteString, so nothing from a manifest is shell text.

Every remote step is bounded: ``virsh`` and ``bounded`` run their command under coreutils ``timeout``
(SIGTERM after the limit, SIGKILL 5 s later) and, when the limit is hit, say on stderr which step timed
out and after how long; pyinfra prefixes that line with the host's name.
"""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand

from facts.util.commands import KILL_AFTER, bounded
from inventories.defaults import COMMAND_TIMEOUT as DEFAULT_TIMEOUT
from inventories.defaults import COPY_TIMEOUT as DEFAULT_COPY_TIMEOUT
from inventories.defaults import LIBVIRT_URI as DEFAULT_URI

__all__ = ["DEFAULT_COPY_TIMEOUT", "DEFAULT_TIMEOUT", "DEFAULT_URI", "KILL_AFTER", "bounded"]
# Added to a command's own limits for the controller-side bound (SSH round trip, shell, small steps).
SLACK = 30


def session_limit(steps: int, timeout: int, extra: int = 0) -> int:
    """Seconds pyinfra waits for a command of ``steps`` bounded steps (plus ``extra``) before it gives
    up on the host: the remote limits cannot help when the SSH session itself stops answering."""
    return steps * (int(timeout) + KILL_AFTER) + int(extra) + SLACK


def virsh(uri: str, *args: str | int, timeout: int = DEFAULT_TIMEOUT) -> StringCommand:
    """``virsh -c URI ARGS...`` with every argument quoted, bounded by ``timeout`` seconds."""
    words = [str(a) for a in args]
    step = "virsh " + " ".join(words[:2]) if words else "virsh"
    return bounded(
        step, timeout, StringCommand("virsh", "-q", "-c", QuoteString(uri), *(QuoteString(w) for w in words))
    )


def sh(*parts: str | StringCommand | QuoteString) -> StringCommand:
    """Join fixed shell syntax (plain str) and quoted values/commands into one command."""
    return StringCommand(*parts)


def q(value: str | int) -> QuoteString:
    return QuoteString(str(value))


def fail(message: str) -> StringCommand:
    """A command that fails the host with ``message`` on stderr (used at execute time instead of raising)."""
    return StringCommand("echo", QuoteString(f"kvm-qemu: {message}"), ">&2;", "exit", "1")


def all_of(commands: list[StringCommand]) -> StringCommand:
    """Run commands in order, stopping at the first failure (one SSH round trip for all of them)."""
    parts: list[str | StringCommand] = []
    for index, command in enumerate(commands):
        if index:
            parts.append("&&")
        parts.append(command)
    return StringCommand(*parts)
