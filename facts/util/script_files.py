"""Programs kept as files beside the code (``<package>/scripts/``: ``operations/scripts/``,
``facts/scripts/``), read once at import. Facts and operations both load theirs through this module.

A script there is a real file that its checker reads (``make lint``: shellcheck for ``*.sh``, ruff for
``*.py``); Python passes it values as quoted arguments, environment, or a prelude of quoted
assignments, never by editing its text.
"""

from __future__ import annotations

from importlib import resources

SCRIPTS_DIR = "scripts"


def read_script(filename: str, package: str = "operations") -> str:
    """The text of ``<package>/scripts/<filename>``; ``filename`` is a plain file name, nothing else."""
    if not filename or "/" in filename or filename.startswith("."):
        raise ValueError(f"script {filename!r}: expected a file name inside {package}/{SCRIPTS_DIR}")
    return resources.files(package).joinpath(SCRIPTS_DIR, filename).read_text(encoding="utf-8")
