"""Host bridge networking behind a dead-man switch.

``bridge_network`` compares the host with the wanted bridge (``facts.bridge.BridgeState``) and, when
they differ, yields five steps: stage (upload the switch script, save the old configuration), arm
(a timer that restores it), apply, verify (a new SSH connection from the controller must reach the
host and find the change applied) and commit (disarm). If the host stops answering, the commit
never runs and the timer rolls the host back by itself. Rendering lives in ``_bridge_render``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from io import StringIO
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.connectors.ssh import SSHConnector

from facts.bridge import BridgeState
from operations._bridge_render import PENDING_STATES, STAMP, STATE_DIR, BridgeSpec, differences, switch_script

# Seconds the controller waits for the detached apply to finish (the step command gets 30 more).
APPLY_WAIT = 150


def _step(script: str, step: str, seconds: int) -> StringCommand:
    return StringCommand("timeout", str(seconds), "sh", QuoteString(script), step)


def _probe(state: Any, target: Any, command: StringCommand) -> tuple[bool, str]:
    """Run ``command`` over a brand-new SSH connection built from the host's connection data."""
    if not isinstance(target.connector, SSHConnector):
        ok, output = target.connector.run_shell_command(command, _timeout=10)
        return ok, "\n".join(output.stdout_lines).strip() if ok else output.stderr
    connector = SSHConnector(state, target)
    try:
        connector._connect()
        ok, output = connector.run_shell_command(command, _timeout=10)
        return ok, "\n".join(output.stdout_lines).strip() if ok else output.stderr
    except Exception as exc:  # any failure to connect is an answer: the host is not reachable
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if connector.client is not None:
            connector.client.close()


def verify_new_connection(state: Any, target: Any, state_dir: str, seconds: int) -> bool:
    """True once a new connection reads ``applied`` from the switch; False after ``seconds``."""
    command = StringCommand("cat", QuoteString(f"{state_dir}/state"))
    deadline = time.monotonic() + seconds
    detail = "no attempt"
    while True:
        ok, detail = _probe(state, target, command)
        if ok and detail == "applied":
            logger.info(f"{target.print_prefix}new connection after the change: OK")
            return True
        if ok and detail in ("failed", "rolledback"):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    logger.error(
        f"{target.print_prefix}no new connection found the change applied within {seconds} s "
        f"(last answer: {detail!r}); the host's timer restores the old network configuration"
    )
    return False


@operation()
def bridge_network(
    spec: BridgeSpec,
    backend: str,
    state_dir: str = STATE_DIR,
    stamp: str = STAMP,
) -> Generator[Any, None, None]:
    """Ensure the bridge described by ``spec`` with ``backend`` (netplan, networkmanager, ifcfg)."""
    current = host.get_fact(BridgeState, state_dir=state_dir, stamp=stamp)
    if current.get("switch_state") in PENDING_STATES:
        message = (
            f"kvm-qemu: a bridge change on {host.name} is still pending ({state_dir}/state: "
            f"{current['switch_state']}); wait for its rollback or commit, nothing was changed"
        )
        yield StringCommand("echo", QuoteString(message), ">&2", "&&", "exit", "1")
        return
    problems = differences(spec, backend, current)
    if not problems:
        host.noop(f"bridge {spec.bridge} is configured ({backend})")
        return
    logger.info(f"{host.print_prefix}bridge {spec.bridge} ({backend}): {'; '.join(problems)}")
    script = f"{state_dir}/switch.sh"
    quoted_dir = QuoteString(state_dir)
    # 1. stage: a root-owned directory (never a link), the script, the saved old configuration.
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
    yield FileUploadCommand(StringIO(switch_script(spec, backend, state_dir, stamp, APPLY_WAIT)), script)
    yield _step(script, "stage", 60)
    # 2. arm the rollback timer.
    yield _step(script, "arm", 30)
    # 3. apply, detached from this SSH session.
    yield _step(script, "apply", APPLY_WAIT + 30)
    # 4. verify over a new connection.
    yield FunctionCommand(verify_new_connection, (state_dir, spec.verify_seconds), {})
    # 5. commit: disarm the timer, record the stamp.
    yield _step(script, "commit", 90)
