"""The build's allocation ratios from host data or ``--data`` (the preflight runs in the build operation)."""

from __future__ import annotations

from pyinfra import host, logger

from deploys._settings import number, setting


def allocation_ratios() -> tuple[float, float]:
    """``(vcpu_allocation_ratio, memory_allocation_ratio)``: finite and greater than 0, else SettingError.

    ``overcommit`` is the deprecated single ratio: when set it stands for whichever of the two ratios is
    not set itself, with a warning.
    """
    vcpu = number("vcpu_allocation_ratio", positive=True)
    memory = number("memory_allocation_ratio", positive=True)
    if setting("overcommit") is not None:
        legacy = number("overcommit", positive=True)
        keys = ("vcpu_allocation_ratio", "memory_allocation_ratio")
        replaced = [key for key in keys if host.data.get(key) is None]
        if "vcpu_allocation_ratio" in replaced:
            vcpu = legacy
        if "memory_allocation_ratio" in replaced:
            memory = legacy
        if replaced:
            logger.warning(
                f"{getattr(host, 'print_prefix', '')}overcommit is deprecated: it sets "
                f"{' and '.join(replaced)} to {legacy:g}; use those keys instead"
            )
    return vcpu, memory
