"""The host-side switch script: ``operations/scripts/bridge-switch.sh`` with this host's prelude.

The file holds the steps every backend shares (stage, arm, apply, commit, rollback); it is read once
at import and never edited. ``switch_script`` puts a prelude after its first line: the host's values
as quoted assignments, and the backend's functions (``bridge_family``), whose every value went through
pyinfra's quoting. The result is one file, uploaded as ``<state_dir>/switch.sh``: its rollback timer
runs it again later, without the controller.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from facts.util.script_files import read_script
from operations.util.bridge_family import Family, family
from operations.util.bridge_spec import ROLLBACK_UNIT, STAMP, STATE_DIR, BridgeSpec
from operations.util.shell_quote import shell_line

SWITCH_SCRIPT = read_script("bridge-switch.sh", package="operations")
TIMERS = ("auto", "process")
# Seconds kept free after the apply step for verification's margin and the commit.
COMMIT_MARGIN = 10


def apply_seconds(spec: BridgeSpec) -> int:
    """How long the apply step may take: apply, verification and commit must all fit before the
    rollback fires (parse_spec guarantees at least 10 s)."""
    return spec.rollback_seconds - spec.verify_seconds - COMMIT_MARGIN


def _function(name: str, lines: Sequence[str]) -> list[str]:
    """A sh function of ``lines`` (``:`` when there are none)."""
    body = [f"  {line}" for line in lines] if lines else ["  :"]
    return [f"{name}() {{", *body, "}", ""]


def _file_lines(fam: Family) -> tuple[list[str], list[str]]:
    """(write_new, install_new): the new files staged under ``$D/new``, then moved into place."""
    write_new = []
    install_new = []
    for index, (path, (content, mode)) in enumerate(sorted(fam.files.items()), start=1):
        encoded = base64.b64encode(content.encode()).decode()
        write_new.append(f"printf '%s\\n' {shell_line(encoded)} | base64 -d > \"$D/new/{index}\" || return 1")
        write_new.append(f"printf '%s\\t%s\\n' {index} {shell_line(path)} >>\"$D/new/list\"")
        staged = f"{path}.kvm-qemu-new"
        install_new.append(
            f'cp -- "$D/new/{index}" {shell_line(staged)} && {shell_line("chmod", str(mode), staged)} '
            f"&& {shell_line('mv', '-f', '--', staged, path)} || return 1"
        )
    return write_new, install_new


def _values(
    spec: BridgeSpec, backend: str, state_dir: str, stamp: str, apply_wait: int, timer: str
) -> list[str]:
    """The host's values, each a quoted assignment."""
    stamp_json = json.dumps(spec.stamp(backend), sort_keys=True)
    values = {
        "D": state_dir,
        "STAMP": stamp,
        "UNIT": ROLLBACK_UNIT,
        "ROLLBACK_SECONDS": str(spec.rollback_seconds),
        "TIMER": timer,
        "APPLY_WAIT": str(apply_wait),
        "LINKS": " ".join(spec.links),
        "VIRTUAL": " ".join(spec.virtual),
        "STAMP_B64": base64.b64encode(stamp_json.encode()).decode(),
    }
    return [f"{key}={shell_line(value)}" for key, value in values.items()]


def _backend_functions(fam: Family) -> list[str]:
    """The backend's part of the switch, as the sh functions the shared steps call."""
    write_new, install_new = _file_lines(fam)
    snapshot = " ".join(fam.snapshot)
    return [
        "# shellcheck disable=SC2041,SC2043 # a backend may save one file, its quoted path a single word",
        "snapshot_list() {",
        f'  for f in {snapshot}; do [ -f "$f" ] && printf \'%s\\n\' "$f"; done',
        "  return 0",
        "}",
        "",
        *_function("write_new", write_new),
        *_function("install_new", install_new),
        *_function("family_apply", [f"{line} || return 1" for line in fam.apply]),
        *_function("family_unapply", fam.unapply),
        *_function("family_reapply", fam.reapply),
        *_function("save_extra", fam.save_extra),
    ]


def switch_script(
    spec: BridgeSpec,
    backend: str,
    state_dir: str = STATE_DIR,
    stamp: str = STAMP,
    apply_wait: int | None = None,
    root: str = "",
    timer: str = "auto",
) -> str:
    """The host-side switch: one POSIX sh script, run as ``sh switch.sh <step>``.

    ``apply_wait`` (seconds the apply step waits for the detached apply) defaults to ``apply_seconds``.
    ``timer``: ``auto`` arms a systemd timer where systemd runs, else a detached process; ``process``
    always uses the detached process (it lives in the caller's network namespace, a systemd unit
    would not).
    """
    if timer not in TIMERS:
        raise ValueError(f"timer={timer!r}: expected auto or process")
    wait = apply_seconds(spec) if apply_wait is None else apply_wait
    shebang, shared = SWITCH_SCRIPT.split("\n", 1)
    prelude = [
        "# This host's values and its backend's steps (operations/util/bridge_switch.py), then the shared",
        "# steps (operations/scripts/bridge-switch.sh).",
        *_values(spec, backend, state_dir, stamp, wait, timer),
        "",
        *_backend_functions(family(spec, backend, root)),
    ]
    return "\n".join([shebang, *prelude, shared])
