"""The one settings resolver: call argument, then operator data (host, group, ``--data``), then the one
defaults table; checked through the real pyinfra CLI where the layering matters."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operations._installer_plan import InstallerError, InstallerSpec

REPO = Path(__file__).resolve().parents[1].parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "settings"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def _manifest(tmp_path: Path, count: int, vcpus: int) -> Path:
    vms = [
        {
            "name": f"ovc{i}",
            "hostname": f"ovc{i}.example.internal",
            "ipaddress": f"10.10.5.{20 + i}",
            "vcpus": vcpus,
            "memoryGb": 1,
            "maxMemoryGb": 1,
            "numDisks": 1,
            "diskSize": 1,
        }
        for i in range(count)
    ]
    path = tmp_path / "manifest.json"
    import json

    path.write_text(json.dumps([{"host": "sm-01", "vmspecs": vms}]))
    return path


def _build_dry(tmp_path: Path, *data: str) -> str:
    """deploys/build.py through the pyinfra CLI (``--dry``) on @local, whose libvirt is libvirt's test
    driver with 2 CPUs and 64 GiB; the capacity preflight prints its verdict while the deploy loads."""
    manifest = _manifest(tmp_path, count=6, vcpus=2)
    args = [PYINFRA, "--dry", str(FIXTURES / "inventory.py"), "deploys/build.py"]
    args += ["--data", f"libvirt_uri=test://{FIXTURES / 'two_cpu_node.xml'}"]
    for item in data:
        args += ["--data", item]
    result = subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, "PYINFRA_PROGRESS": "off", "KVM_MANIFEST": str(manifest)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    return output


def _capacity_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "capacity:" in line]
    assert len(lines) == 1, output
    return lines[0]


def test_six_vms_of_two_vcpus_on_two_cpus_are_refused_without_overcommit(tmp_path: Path) -> None:
    line = _capacity_line(_build_dry(tmp_path))
    assert "12/2x4" in line and "12 vCPUs > 2 CPUs x 4" in line, line


def test_overcommit_given_with_data_counts_inside_the_build_deploy(tmp_path: Path) -> None:
    output = _build_dry(tmp_path, "overcommit=8")
    line = _capacity_line(output)
    assert "12/2x8" in line and "GiBx8" in line and line.rstrip().endswith("ok"), line
    assert "overcommit is deprecated" in output, output


def test_a_ratio_the_operator_sets_wins_over_overcommit_even_at_its_default_value(tmp_path: Path) -> None:
    # vcpu_allocation_ratio=4 equals the default, but the operator set it: overcommit only replaces
    # the memory ratio.
    line = _capacity_line(_build_dry(tmp_path, "overcommit=8", "vcpu_allocation_ratio=4"))
    assert "12/2x4" in line and "GiBx8" in line and "12 vCPUs > 2 CPUs x 4" in line, line


# --- the installer VM's names: the whole value must match, a trailing newline included ------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"vm": "centos7\n"}, "installer_name"), ({"bridge": "br0\n"}, "installer_bridge")],
)
def test_installer_names_with_a_trailing_newline_are_refused(overrides: dict[str, str], key: str) -> None:
    values = dict(vm="centos7", iso="CentOS.iso", iso_pool="secondary", pool="secondary")
    values.update(overrides)
    with pytest.raises(InstallerError, match=f"^{key}="):
        InstallerSpec(**values).check()  # type: ignore[arg-type]


# --- direction: facts are read by operations and deploys, never the other way round -------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_facts_import_nothing_from_operations_or_deploys() -> None:
    wrong = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "facts").rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in {"operations", "deploys"}
    }
    assert not wrong, sorted(wrong)
