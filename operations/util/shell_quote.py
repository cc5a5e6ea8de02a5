"""One shell command line from separate arguments, each quoted by pyinfra (``QuoteString``)."""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand


def shell_line(*args: str) -> str:
    """One shell command line; every argument goes through pyinfra's quoting."""
    return StringCommand(*(QuoteString(arg) for arg in args)).get_raw_value()
