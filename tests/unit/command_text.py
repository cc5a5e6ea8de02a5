"""What a planned command runs, as text the unit tests compare: without the time-limit wrappers."""

from __future__ import annotations

import re
from typing import Any

# ``bounded`` wraps each step as ``{ timeout -k 5 N <step> || { rc=$?; ...; (exit $rc); }; }``.
BOUND = re.compile(r"\{ timeout -k 5 \d+ (.*?) \|\| \{ rc=\$\?; .*?\(exit \$rc\); \}; \}")


def unbounded(text: str) -> str:
    """A rendered command without the time-limit wrappers, for comparing what it runs."""
    return BOUND.sub(r"\1", text)


def rendered(command: Any) -> str:
    return unbounded(command.get_raw_value())
