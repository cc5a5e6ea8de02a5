"""Programs kept as files beside the code (``operations/scripts/``), read once at import.

A script there is a real file that ``shellcheck`` reads (``make lint``); Python passes it values as
quoted arguments, environment, or a prelude of quoted assignments, never by editing its text.
"""

from __future__ import annotations

from importlib import resources

SCRIPTS_PACKAGE = "operations"
SCRIPTS_DIR = "scripts"


def read_script(filename: str) -> str:
    """The text of ``operations/scripts/<filename>``; a plain file name, nothing else."""
    if not filename or "/" in filename or filename.startswith("."):
        raise ValueError(f"script {filename!r}: expected a file name inside operations/scripts")
    return resources.files(SCRIPTS_PACKAGE).joinpath(SCRIPTS_DIR, filename).read_text(encoding="utf-8")
