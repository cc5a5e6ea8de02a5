"""Command builders: every value goes through QuoteString, so nothing from a manifest is shell text."""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand

DEFAULT_URI = "qemu:///system"


def virsh(uri: str, *args: str | int) -> StringCommand:
    """``virsh -c URI ARGS...`` with every argument quoted."""
    return StringCommand("virsh", "-q", "-c", QuoteString(uri), *(QuoteString(str(a)) for a in args))


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
