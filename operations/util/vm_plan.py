"""A VM's plan: readable actions, notes and at most one command.

Every plan holds at most one command, so a VM costs one round trip. The planners (``clone_plan``,
``converge_plan``, ``power_plan``, ``delete_plan``, ...) are pure: the host's ``Hypervisor`` fact and
the vmspecs in, plans out; the operations in ``operations/libvirt.py`` yield their commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import StringCommand


@dataclass
class VmPlan:
    """One VM's changes: ``actions`` say what the command does, ``notes`` what is reported but not done."""

    vm: str
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    command: StringCommand | None = None
    stdin: str | None = None
    error: str | None = None
    # Seconds the controller waits for ``command`` (the sum of its steps' limits plus slack).
    limit: int = 0

    @property
    def changes(self) -> bool:
        return self.command is not None or self.error is not None

    def summary(self) -> str:
        parts = self.actions + [f"note: {n}" for n in self.notes]
        if self.error:
            parts.insert(0, f"error: {self.error}")
        return f"{self.vm}: " + ("; ".join(parts) if parts else "up to date")

