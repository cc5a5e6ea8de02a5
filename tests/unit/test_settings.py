"""The one settings resolver: call argument, then operator data (host, group, ``--data``), then the one
defaults table; checked through the real pyinfra CLI where the layering matters."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operations.util.installer_plan import InstallerError, InstallerSpec

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


# --- the table, the docs generated from it, and that nothing else reads host data ----------------

SETTINGS_MODULE = REPO / "inventories" / "settings.py"
SOURCE_DIRS = ("deploys", "operations", "facts", "inventories")
# Functions that read one setting, by the position of the key among their arguments.
READERS = {"setting": 0, "is_set": 0, "flag": 0, "number": 0, "seconds": 0, "whole": 0, "str_list": 0,
           "str_dict": 0, "safe_path": 0, "_data": 1, "_member_setting": 1}  # fmt: skip


def _sources() -> list[Path]:
    return [path for d in SOURCE_DIRS for path in sorted((REPO / d).rglob("*.py"))]


def test_every_key_is_in_the_table_once_with_a_known_type_and_a_one_line_meaning() -> None:
    from inventories.settings import DEFAULTS, KINDS, SETTINGS, TABLE

    assert len(SETTINGS) == len(TABLE) == len(DEFAULTS)
    for entry in TABLE:
        assert entry.kind in KINDS, entry
        assert entry.meaning and "\n" not in entry.meaning and "|" not in entry.meaning, entry
    # the bridge keys too
    assert {"kvm_bridge", "kvm_bond", "kvm_bridge_rollback_seconds"} <= set(SETTINGS)


def test_every_setting_read_in_the_code_names_a_key_of_the_table_of_a_type_its_reader_parses() -> None:
    from inventories.settings import ACCESSOR_KINDS, SETTINGS

    seen: set[str] = set()
    problems = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else None
            if func == "given" and node.args and isinstance(node.args[0], ast.Dict):
                keys = [k.value for k in node.args[0].keys if isinstance(k, ast.Constant)]
                problems += [f"{path.name}: given {k}" for k in keys if k not in SETTINGS]
                seen |= set(keys)
            if func not in READERS or len(node.args) <= READERS[func]:
                continue
            arg = node.args[READERS[func]]
            if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
                continue
            key = arg.value
            seen.add(key)
            where = f"{path.relative_to(REPO)}:{node.lineno} {func}({key!r})"
            if key not in SETTINGS:
                problems.append(f"{where}: not in the table")
            elif func in ACCESSOR_KINDS and SETTINGS[key].kind not in ACCESSOR_KINDS[func]:
                problems.append(f"{where}: a {SETTINGS[key].kind} setting")
    assert not problems, problems
    assert len(seen) > 60  # the scan sees the deploys' reads


def _data_reads(path: Path) -> list[str]:
    """``<host>.data`` in any form (``.get``, ``[...]``, attributes): host data read directly."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "data":
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if name in {"host", "member", "m", "h", "target", "source"} or name.endswith("host"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_nothing_but_the_settings_module_reads_host_data() -> None:
    reads = [hit for path in _sources() if path != SETTINGS_MODULE for hit in _data_reads(path)]
    assert not reads, reads
    assert _data_reads(SETTINGS_MODULE)  # the scan does find reads where they are


def test_docs_settings_md_is_generated_from_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inventories.settings"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (REPO / "docs" / "settings.md").read_text() == result.stdout, (
        "docs/settings.md differs from the table: run python -m inventories.settings > docs/settings.md"
    )
    assert "| `overcommit` | number | none |" in result.stdout


# --- the resolver's layers on pyinfra's real Host ---------------------------------------------------


def _inventory_host(
    host_data: dict[str, object], group_data: dict[str, object], global_data: dict[str, object],
    override: dict[str, object],
) -> object:
    from pyinfra.api import Inventory

    inventory = Inventory(
        (["sm-01", "sm-02"], global_data), override_data=override, kvm_hosts=(["sm-01", "sm-02"], group_data)
    )
    inventory.host_data["sm-01"].update(host_data)
    return inventory.get_host("sm-01")


def test_pyinfra_host_data_layers_are_the_ones_the_resolver_rebuilds() -> None:
    # If pyinfra adds, drops or reorders a layer of HostData, the resolver's adapter must follow.
    member = _inventory_host({"a": "host"}, {"a": "group", "b": "group"}, {"c": "global"}, {"d": "override"})
    datas = member.data.datas  # type: ignore[attr-defined]
    assert len(datas) == 6 and datas[0] is member.data.override_datas  # type: ignore[attr-defined]
    assert datas[-1] == member.get_deploy_data  # type: ignore[attr-defined]
    from inventories.settings import _operator_layers

    layers = _operator_layers(member)
    for key in "abcd":
        assert next(layer[key] for layer in layers if key in layer) == member.data.get(key)  # type: ignore[attr-defined]


def test_the_resolver_tells_the_operators_value_from_a_deploy_default() -> None:
    from pyinfra.context import ctx_host

    from inventories.settings import DEFAULTS, is_set, seconds, setting

    member = _inventory_host({"vcpu_allocation_ratio": 4.0}, {}, {}, {"overcommit": 8})
    with ctx_host.use(member), member.deploy("Build VMs", None, DEFAULTS):  # type: ignore[attr-defined]
        # what pyinfra's own lookup cannot say: both answer a value
        assert member.data.get("memory_allocation_ratio") == 1.0  # type: ignore[attr-defined]
        assert is_set("vcpu_allocation_ratio") and is_set("overcommit")
        assert not is_set("memory_allocation_ratio") and setting("memory_allocation_ratio") == 1.0
        assert setting("stop_timeout", 5) == 5 and seconds("command_timeout") == 60
    with ctx_host.use(member), member.deploy("Mine", None, {"stop_timeout": 9}):  # type: ignore[attr-defined]
        assert setting("stop_timeout") == 9 and not is_set("stop_timeout")


def test_another_hosts_setting_comes_from_its_own_data_then_the_table() -> None:
    from pyinfra.context import ctx_host

    from inventories.settings import flag, given, setting

    member = _inventory_host({"migration_unsafe": "yes"}, {}, {}, {})
    other = member.inventory.get_host("sm-02")  # type: ignore[attr-defined]
    with ctx_host.use(member), given({"libvirt_uri": "qemu+ssh://x/system"}):
        assert setting("libvirt_uri") == "qemu+ssh://x/system"
        assert setting("libvirt_uri", member=other) == "qemu:///system"  # a call argument is this host's
        assert flag("migration_unsafe", member=member) and not flag("migration_unsafe", member=other)


def test_a_key_outside_the_table_or_read_as_the_wrong_type_is_a_programming_error() -> None:
    from pyinfra.context import ctx_host

    from inventories.settings import flag, setting

    member = _inventory_host({}, {}, {}, {})
    with ctx_host.use(member):
        with pytest.raises(KeyError, match="not a setting"):
            setting("no_such_key")
        with pytest.raises(TypeError, match="dhcp_range is a text setting"):
            flag("dhcp_range")
        defaults = setting("kvm_users")
        defaults.append("mallory")
        assert setting("kvm_users") == []  # a copy: the table's default is unchanged
