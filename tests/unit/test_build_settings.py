"""Settings the build and stop read: finite numbers only, separate allocation ratios, ``overcommit`` alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from deploys._settings import SettingError, allocation_ratios, number

REPO = Path(__file__).resolve().parents[2]


def with_data(data: dict[str, Any], func: Any) -> Any:
    state = FakeState()
    host = create_host(state, name="sm-01", facts={}, data=data)
    with ctx_state.use(state), ctx_host.use(host):
        return func()


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["overcommit", "vcpu_allocation_ratio", "memory_allocation_ratio"])
def test_ratios_refuse_nan_and_inf_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(SettingError, match=f"^{key}=.*: expected a finite number"):
        with_data({key: value}, allocation_ratios)


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_ratios_refuse_zero_negative_and_words(value: str) -> None:
    with pytest.raises(SettingError, match="^vcpu_allocation_ratio="):
        with_data({"vcpu_allocation_ratio": value}, allocation_ratios)


@pytest.mark.parametrize("value", ["inf", "nan", float("inf")])
def test_stop_timeout_refuses_inf_and_nan(value: Any) -> None:
    with pytest.raises(SettingError, match="^stop_timeout=.*: expected a finite number"):
        with_data({"stop_timeout": value}, lambda: number("stop_timeout"))


def test_setting_errors_are_pyinfra_errors_so_the_cli_prints_one_line() -> None:
    assert issubclass(SettingError, PyinfraError) and issubclass(SettingError, ValueError)


def test_allocation_ratio_defaults_and_the_deprecated_overcommit() -> None:
    assert with_data({}, allocation_ratios) == (4.0, 1.0)
    assert with_data({"vcpu_allocation_ratio": "8", "memory_allocation_ratio": "1.5"}, allocation_ratios) == (
        8.0,
        1.5,
    )
    # overcommit stands for the ratios not set themselves
    assert with_data({"overcommit": "2"}, allocation_ratios) == (2.0, 2.0)
    assert with_data({"overcommit": "2", "vcpu_allocation_ratio": "6"}, allocation_ratios) == (6.0, 2.0)


@pytest.mark.parametrize(
    ("deploy", "data"),
    [("stop", "stop_timeout=inf"), ("build", "overcommit=nan"), ("build", "memory_allocation_ratio=inf")],
)
def test_cli_prints_the_key_without_a_traceback_and_changes_nothing(
    tmp_path: Path, deploy: str, data: str
) -> None:
    # @local as the only hypervisor: the deploy refuses while it loads, before any operation exists.
    inventory = tmp_path / "inventory.py"
    inventory.write_text("kvm_hosts = ['@local']\n")
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    result = subprocess.run(
        [pyinfra, "-y", str(inventory), f"deploys/{deploy}.py", "--data", data],
        cwd=REPO,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    key = data.split("=")[0]
    assert result.returncode != 0
    assert f"{key}=" in output and "expected a finite number" in output, output
    assert "Traceback" not in output, output
