"""Host bridge networking behind a dead-man switch.

``bridge_network`` compares the host with the wanted bridge (``facts.bridge.BridgeState``) and, when
they differ, yields five steps: stage (upload the switch script, save the old configuration), arm
(a timer that restores it), apply, verify (a new SSH connection from the controller must reach the
host and find the change applied) and commit (disarm). If the host stops answering, the commit
never runs and the timer rolls the host back by itself. Rendering lives in ``operations/util/bridge_*.py``
and ``operations/scripts/bridge-switch.sh``.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from io import StringIO
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.connectors.ssh import SSHConnector

from facts.bridge import BridgeState
from operations.util.bridge_diff import differences
from operations.util.bridge_spec import PENDING_STATES, STAMP, STATE_DIR, BridgeSpec
from operations.util.bridge_switch import apply_seconds, switch_script
from operations.util.output import log
from operations.util.pyinfra_adapter import new_ssh_connection

# Bound on the commit over the verification connection (the host-side commit waits 60 s for its lock).
COMMIT_SECONDS = 90


def _step(script: str, step: str, seconds: int) -> StringCommand:
    # Bounded twice: on the host (timeout) and while reading its output here (_timeout).
    return StringCommand("timeout", str(seconds), "sh", QuoteString(script), step, _timeout=seconds + 15)


def _run_new_connection(
    state: Any, host: Any, command: StringCommand, arguments: dict[str, Any], seconds: float = 30
) -> tuple[bool, str]:
    """Run ``command`` over a brand-new SSH connection built from the host's connection data.

    Returns (exit status 0, stdout) or (False, stderr / the reason no connection was made).
    Hosts not reached over SSH (``@local``) run it through their connector, a new process each time.
    """
    if not isinstance(host.connector, SSHConnector):
        ok, output = host.connector.run_shell_command(command, _timeout=int(seconds) + 1, **arguments)
        return ok, "\n".join(output.stdout_lines if ok else output.stderr_lines).strip()
    try:
        with gevent.Timeout(seconds, exception=TimeoutError(f"no answer within {seconds} s")):
            with new_ssh_connection(state, host) as connector:
                ok, output = connector.run_shell_command(command, _timeout=int(seconds) + 1, **arguments)
        return ok, "\n".join(output.stdout_lines if ok else output.stderr_lines).strip()
    except Exception as exc:  # any failure to connect is an answer: the host is not reachable
        return False, f"{type(exc).__name__}: {exc}"


def apply_change(state: Any, host: Any, script: str, seconds: int, arguments: dict[str, Any]) -> bool:
    """Step 3 over the existing connection. The change may cut that connection: then the new
    connection of step 4 decides, so a lost connection is not a failure here."""
    command = StringCommand("timeout", str(seconds + 5), "sh", QuoteString(script), "apply")
    try:
        ok, output = host.run_shell_command(command, _timeout=seconds + 5, **arguments)
    except Exception as exc:
        log(
            f"connection lost while applying ({type(exc).__name__}: {exc}); verifying over a new connection",
            "warning",
            on=host,
        )
        return True
    if not ok:
        for line in output.stderr_lines:
            log(line, "error", on=host)
    return bool(ok)


def verify_and_commit(state: Any, host: Any, state_dir: str, seconds: int, arguments: dict[str, Any]) -> bool:
    """Steps 4 and 5 over a new connection: it must find the change applied within ``seconds``,
    then it commits (disarms the rollback). Without an answer the host's timer rolls back."""
    read_state = StringCommand("cat", QuoteString(f"{state_dir}/state"))
    deadline = time.monotonic() + seconds
    detail = "no attempt"
    while True:
        remaining = max(3.0, deadline - time.monotonic())
        ok, detail = _run_new_connection(state, host, read_state, {}, remaining)
        if ok and detail == "applied":
            break
        if (ok and detail in ("failed", "rolledback")) or time.monotonic() >= deadline:
            log(
                f"no new connection found the change applied within {seconds} s "
                f"(last answer: {detail!r}); the host's timer restores the old network configuration",
                "error",
                on=host,
            )
            return False
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    log("a new connection reached the host after the change; committing", on=host)
    commit = StringCommand(
        "timeout", str(COMMIT_SECONDS - 5), "sh", QuoteString(f"{state_dir}/switch.sh"), "commit"
    )
    ok, detail = _run_new_connection(state, host, commit, arguments, COMMIT_SECONDS)
    if not ok:
        log(f"commit failed: {detail}", "error", on=host)
    return ok


def _pending_refusal(current: dict[str, Any], state_dir: str) -> StringCommand | None:
    """A failing command when an earlier change's rollback is still armed; None otherwise."""
    if current.get("switch_state") not in PENDING_STATES:
        return None
    message = (
        f"kvm-qemu: a bridge change on {host.name} is still pending ({state_dir}/state: "
        f"{current['switch_state']}); wait for its rollback or commit, nothing was changed"
    )
    return StringCommand("echo", QuoteString(message), ">&2", "&&", "exit", "1")


def _stage_and_arm(spec: BridgeSpec, backend: str, state_dir: str, stamp: str, timer: str) -> Iterator[Any]:
    """Steps 1 and 2: a root-owned directory (never a link), the script, the saved old configuration,
    then the rollback timer."""
    script = f"{state_dir}/switch.sh"
    quoted_dir = QuoteString(state_dir)
    yield StringCommand(
        "[ ! -L",
        quoted_dir,
        "] && mkdir -p -m 755",
        quoted_dir,
        "&& [ -d",
        quoted_dir,
        "] && [ ! -L",
        quoted_dir,
        "]",
    )
    yield FileUploadCommand(StringIO(switch_script(spec, backend, state_dir, stamp, timer=timer)), script)
    yield _step(script, "stage", 60)
    yield _step(script, "arm", 30)


def _connection_arguments() -> dict[str, Any]:
    """The operation's connector arguments (``_sudo``...) for the commands run outside pyinfra's loop."""
    return {
        key: value
        for key, value in (host.current_op_global_arguments or {}).items()
        if key in CONNECTOR_ARGUMENT_KEYS and key not in ("_timeout", "_stdin", "_success_exit_codes")
    }


@operation()
def bridge_network(
    spec: BridgeSpec,
    backend: str,
    state_dir: str = STATE_DIR,
    stamp: str = STAMP,
    timer: str = "auto",
) -> Generator[Any, None, None]:
    """Ensure the bridge described by ``spec`` with ``backend`` (netplan, networkmanager, ifcfg).

    ``timer``: ``auto`` (a systemd timer where systemd runs, else a detached process) or ``process``.
    """
    current = host.get_fact(BridgeState, state_dir=state_dir, stamp=stamp)
    refusal = _pending_refusal(current, state_dir)
    if refusal is not None:
        yield refusal
        return
    problems = differences(spec, backend, current)
    if not problems:
        host.noop(f"bridge {spec.bridge} is configured ({backend})")
        return
    log(f"bridge {spec.bridge} ({backend}): {'; '.join(problems)}")
    # 1. stage, 2. arm the rollback timer.
    yield from _stage_and_arm(spec, backend, state_dir, stamp, timer)
    arguments = _connection_arguments()
    # 3. apply (detached on the host: the change may cut this SSH session).
    yield FunctionCommand(apply_change, (f"{state_dir}/switch.sh", apply_seconds(spec), arguments), {})
    # 4. verify over a new connection, 5. commit over it (disarms the timer, records the stamp).
    yield FunctionCommand(verify_and_commit, (state_dir, spec.verify_seconds, arguments), {})
