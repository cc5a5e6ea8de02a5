"""One comparison of a vmspec with a domain: converge, status, drift and --diff agree on what differs."""

from __future__ import annotations

import copy
from typing import Any

from deploys._status import status_lines
from facts.util.host_state import Domain
from inventories.manifest_model import mac_for
from operations.util.converge_plan import resource_plan
from operations.util.domain_diff import build_diff
from operations.util.drift import drift
from operations.util.vm_compare import compare, configured, wanted
from tests.unit.fact_builders import typed, typed_domain
from tests.unit.vmspec_builders import vmspec as spec

GIB = 1024 * 1024


def domain_data(vcpus: int = 2, memory_kib: int = GIB, data_disks: int = 1) -> dict[str, Any]:
    disks = [
        {"target": f"vd{chr(97 + i)}", "device": "disk", "path": f"/p/vm01-vd{chr(97 + i)}"}
        for i in range(1 + data_disks)
    ]
    config = {
        "vcpus": vcpus,
        "max_vcpus": vcpus,
        "memory_kib": memory_kib,
        "max_memory_kib": 2 * GIB,
        "disks": disks + [{"target": "sda", "device": "cdrom", "path": "/iso/x.iso"}],
        "interfaces": [{"mac": mac_for("vm01")}, {"mac": "52:54:00:aa:bb:cc"}],
    }
    return {
        "state": "shut off",
        "persistent": True,
        "autostart": False,
        **copy.deepcopy(config),
        "config": config,
    }


def domain(vcpus: int = 2, memory_kib: int = GIB, data_disks: int = 1) -> Domain:
    return typed_domain(domain_data(vcpus, memory_kib, data_disks), "vm01")


def test_a_domain_built_from_the_vmspec_matches_it_everywhere() -> None:
    vm, dom = spec(), domain()
    assert configured(dom) == wanted(vm)
    assert not any(c.differs for c in compare(vm, dom))
    assert drift(vm, dom) == []
    assert "!" not in status_lines([vm], typed({"domains": {"vm01": dom}}))[1]
    assert build_diff([vm], typed({"domains": {"vm01": dom}})) == []
    assert resource_plan(vm, dom, "qemu:///system")[0] == []


def test_every_reader_sees_the_same_difference() -> None:
    vm, dom = spec(), domain(vcpus=3, memory_kib=2 * GIB)
    assert [c.field for c in compare(vm, dom) if c.differs] == ["vcpus", "memory"]
    assert drift(vm, dom) == [("vcpus", 3, 2), ("memory", 2 * GIB, GIB)]
    row = status_lines([vm], typed({"domains": {"vm01": dom}}))[1]
    assert "3!" in row and "2 GiB!" in row
    assert build_diff([vm], typed({"domains": {"vm01": dom}})) == [
        "vm01: vCPUs 3 -> 2",
        "vm01: memory 2 GiB -> 1 GiB",
    ]
    commands, actions, _notes = resource_plan(vm, dom, "qemu:///system")
    assert commands and actions == ["memory 2 GiB -> 1 GiB (config)", "vCPUs 3 (max 3) -> 2 (config)"]


def test_the_persistent_definition_counts_not_the_live_values() -> None:
    data = domain_data()
    data.update(state="running", memory_kib=GIB // 2, vcpus=1)  # a balloon and an unplugged vCPU
    dom = typed_domain(data, "vm01")
    assert configured(dom) == wanted(spec())
    assert drift(spec(), dom) == []
