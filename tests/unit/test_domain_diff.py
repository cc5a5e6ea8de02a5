"""``--diff`` for the libvirt operations: before -> after per VM, from the fact captured on the sandbox."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from facts.libvirt import Hypervisor
from inventories.manifest_model import mac_for
from operations import libvirt
from operations.util.domain_diff import build_diff, delete_diff, power_diff
from tests.unit.vmspec_builders import fx_off as spec

FIXTURES = Path(__file__).parent / "fixtures"
HOST_STATE = Hypervisor().process((FIXTURES / "libvirt" / "cluster.json").read_text().splitlines())
URI_KEY = "timeout=60, uri=qemu:///system"


def test_build_diff_of_a_new_vm_is_absent_to_the_vmspec() -> None:
    new = spec(name="fx-new", vcpus=2, memory_gib=1, max_memory_gib=2, num_disks=2, mac=mac_for("fx-new"))
    assert build_diff([new], HOST_STATE) == [
        "fx-new: vCPUs absent -> 2",
        "fx-new: memory absent -> 1 GiB",
        "fx-new: max memory absent -> 2 GiB",
        "fx-new: disks absent -> vda, vdb, vdc",
        "fx-new: power state absent -> shut off",
        "fx-new: autostart absent -> off",
    ]


def test_build_diff_of_an_existing_vm_shows_only_what_changes() -> None:
    assert build_diff([spec()], HOST_STATE) == []
    grown = spec(vcpus=2, memory_gib=2, max_memory_gib=4, num_disks=2, autostart=True)
    assert build_diff([grown], HOST_STATE) == [
        "fx-off: vCPUs 1 -> 2",
        "fx-off: memory 1 GiB -> 2 GiB",
        "fx-off: max memory 1 GiB -> 4 GiB",
        "fx-off: disks vda, vdb -> vda, vdb, vdc",
        "fx-off: autostart off -> on",
    ]


def test_power_and_delete_diffs() -> None:
    domains = HOST_STATE.domains
    assert power_diff(["fx-off", "fx-run", "gone"], domains, "running") == [
        "fx-off: power state shut off -> running"
    ]
    assert power_diff(["fx-off", "fx-run"], domains, "shut off") == [
        "fx-run: power state running -> shut off"
    ]
    assert delete_diff(["fx-run", "gone"], domains) == [
        "fx-run: vCPUs 1 -> absent",
        "fx-run: memory 1 GiB -> absent",
        "fx-run: max memory 2 GiB -> absent",
        "fx-run: disks vda -> absent",
        "fx-run: power state running -> absent",
        "fx-run: autostart off -> absent",
    ]


def logged(caplog: pytest.LogCaptureFixture, op: Any, diff: bool, **kwargs: Any) -> list[str]:
    state = FakeState()
    state.config.DIFF = diff
    host = create_host(
        state, name="sm-01", facts={"libvirt.Hypervisor": {URI_KEY: copy.deepcopy(HOST_STATE)}}
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyinfra"), ctx_state.use(state), ctx_host.use(host):
        list(op._inner(**kwargs))
    return [r.getMessage().strip() for r in caplog.records]


@pytest.mark.parametrize(
    ("op", "kwargs", "line"),
    [
        (libvirt.vms, {"vmspecs": [spec(vcpus=2)]}, "fx-off: vCPUs 1 -> 2"),
        (
            libvirt.vms,
            {"vmspecs": [spec(vcpus=2)], "create": False},
            "fx-off: vCPUs 1 -> 2",
        ),
        (
            libvirt.vms_running,
            {"vmspecs": [spec()], "running": True},
            "fx-off: power state shut off -> running",
        ),
        (
            libvirt.vms_running,
            {"vmspecs": [spec(name="fx-run")], "running": False},
            "fx-run: power state running -> shut off",
        ),
        (libvirt.vms, {"vmspecs": [spec(name="fx-run")], "present": False}, "fx-run: memory 1 GiB -> absent"),
    ],
)
def test_operations_print_the_diff_only_with_diff(
    caplog: pytest.LogCaptureFixture, op: Any, kwargs: dict[str, Any], line: str
) -> None:
    assert line in logged(caplog, op, True, **kwargs)
    assert line not in logged(caplog, op, False, **kwargs)
