"""One way to print a line about the current host: pyinfra's logger, prefixed with the host's name."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger


def log(message: str, level: str = "info", on: Any = None) -> None:
    """Log ``message`` for the current host (or the host ``on``; ``level``: info, warning or error),
    as pyinfra's own output does: ``[host] message``."""
    try:
        prefix = (on if on is not None else host).print_prefix
    except (AttributeError, ValueError):  # outside a pyinfra run: no host, no prefix
        prefix = ""
    getattr(logger, level)(f"{prefix}{message}")
