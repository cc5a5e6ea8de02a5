"""Bounded remote commands: the one wrapper that puts a time limit on every remote step.

Facts and operations both build their commands with ``bounded`` (operations re-export it from
``operations/util/virsh.py``); it lives here so that facts need nothing from operations.
"""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand

# Seconds coreutils ``timeout`` waits after SIGTERM before it sends SIGKILL.
KILL_AFTER = 5


def bounded(step: str, timeout: int, *command: str | StringCommand | QuoteString) -> StringCommand:
    """``command`` under ``timeout`` seconds; on expiry its exit status is kept and stderr names ``step``.

    ``timeout`` exits 124 after SIGTERM and 137 when SIGKILL was needed.
    """
    seconds = int(timeout)
    return StringCommand(
        "{ timeout -k",
        str(KILL_AFTER),
        QuoteString(str(seconds)),
        *command,
        "|| { rc=$?; if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo",
        QuoteString(f"kvm-qemu: timed out after {seconds} s: {step}"),
        ">&2; fi; (exit $rc); }; }",
    )
