"""The libvirt operations with pyinfra-testing's FakeHost, fed the Hypervisor fact parsed from real probe
output captured on the sandbox (``fixtures/libvirt/cluster.json``): rendered commands and no-op messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import OperationValueError
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from facts.libvirt import Hypervisor
from inventories.manifest_model import VmSpec, mac_for
from operations import libvirt

FIXTURES = Path(__file__).parent / "fixtures"
SNAPSHOT = Hypervisor().process((FIXTURES / "libvirt" / "cluster.json").read_text().splitlines())
URI_KEY = "timeout=60, uri=qemu:///system"


BOUND = re.compile(r"\{ timeout -k 5 \d+ (.*?) \|\| \{ rc=\$\?; .*?\(exit \$rc\); \}; \}")


def run(op: Any, snapshot: dict[str, Any] | None = None, **kwargs: Any) -> tuple[list[str], Any]:
    state = FakeState()
    host = create_host(state, facts={"libvirt.Hypervisor": {URI_KEY: snapshot or SNAPSHOT}})
    with ctx_state.use(state), ctx_host.use(host):
        # Without the time-limit wrappers, so the tests compare what runs.
        commands = [BOUND.sub(r"\1", c.get_raw_value()) for c in op._inner(**kwargs) if hasattr(c, "get_raw_value")]
    return commands, host


def vmspec(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        name="fx-new", hostname="fx-new.example.internal", ipaddress="10.0.0.5", vcpus=2, memory_gb=1,
        max_memory_gb=2, num_disks=1, disk_size_gb=2, mac=mac_for("fx-new"),
    )  # fmt: skip
    values.update(overrides)
    return VmSpec(**values).to_dict()


def test_pool_present_and_running_is_a_noop() -> None:
    commands, host = run(libvirt.pool, pool_name="default", path="/data01/primary/")
    assert commands == [] and host.noop_description == "pool default is defined at /data01/primary/ and running"


def test_new_pool_is_defined_built_started_autostarted() -> None:
    (command,), _ = run(libvirt.pool, pool_name="fast", path="/srv/fast dir")
    assert command == (
        "virsh -q -c qemu:///system pool-define-as fast dir --target '/srv/fast dir' && "
        "virsh -q -c qemu:///system pool-build fast && virsh -q -c qemu:///system pool-start fast && "
        "virsh -q -c qemu:///system pool-autostart fast"
    )


def test_inactive_pool_is_started() -> None:
    (command,), _ = run(libvirt.pool, pool_name="parked", path="/data01/parked", autostart=False)
    assert command == "virsh -q -c qemu:///system pool-build parked && virsh -q -c qemu:///system pool-start parked"


def test_changing_a_pool_path_fails_the_host_instead_of_redefining() -> None:
    (command,), _ = run(libvirt.pool, pool_name="default", path="/elsewhere")
    assert "refusing to redefine it" in command and command.endswith("exit 1")
    assert "pool-define" not in command


def test_build_clones_from_the_real_base_definition() -> None:
    (command,), _ = run(libvirt.domains_built, vmspecs=[vmspec()])
    assert "cp --sparse=always -- /secondary/centos7-vda.img /data01/primary/fx-new-vda.img" in command
    assert "truncate -s 2G -- /data01/primary/fx-new-vdb.img" in command


def test_build_of_existing_domains_converges_or_noops() -> None:
    # fx-off in the fixture: 1 vCPU, 1 GiB, overlay disk + vdb data disk, shut off.
    spec = vmspec(name="fx-off", vcpus=1, memory_gb=1, max_memory_gb=1, num_disks=1, mac="52:54:00:00:0f:02")
    commands, host = run(libvirt.domains_built, vmspecs=[spec])
    assert commands == [] and host.noop_description == "1 domain(s) match the manifest"
    (command,), _ = run(libvirt.domains_built, vmspecs=[{**spec, "vcpus": 2}])
    assert "setvcpus fx-off 2 --maximum --config" in command


def test_build_with_a_missing_base_fails_only_at_execution_not_at_prepare() -> None:
    (command,), _ = run(libvirt.domains_built, vmspecs=[vmspec(srcvm="rocky9")])
    assert "source domain rocky9 is not defined" in command and command.endswith("exit 1")


def test_power_and_delete_noops() -> None:
    commands, host = run(libvirt.domains_power, domains=["fx-run"], running=True)
    assert commands == [] and host.noop_description == "1 domain(s) already running"
    commands, host = run(libvirt.domains_deleted, domains=["gone"])
    assert commands == [] and host.noop_description == "1 domain(s) already absent"


def test_delete_of_the_overlay_vm_keeps_its_base_and_the_empty_cdrom() -> None:
    (command,), _ = run(libvirt.domains_deleted, domains=["fx-off"])
    assert "rm -f -- /data01/primary/fx-off-vda.qcow2 /data01/primary/fx-off-vdb.img" in command
    assert "centos7-vda.img" not in command


def test_define_from_xml(tmp_path: Path) -> None:
    base = SNAPSHOT["domains"]["centos7"]["xml"]
    path = tmp_path / "centos7.xml"
    path.write_text(base)
    commands, host = run(libvirt.domain_defined, xml_file=str(path))
    assert commands == [] and host.noop_description == f"domain centos7 matches {path}"
    changed = copy.deepcopy(SNAPSHOT)
    del changed["domains"]["centos7"]
    (command,), _ = run(libvirt.domain_defined, snapshot=changed, xml_file=str(path))
    assert command == "virsh -q -c qemu:///system define /dev/stdin >/dev/null"
    with pytest.raises(OperationValueError, match="cannot use domain XML"):
        run(libvirt.domain_defined, xml_file=str(tmp_path / "missing.xml"))


def test_build_plans_from_the_deploys_snapshot_at_prepare_without_reading_the_fact() -> None:
    state = FakeState()
    host = create_host(state, facts={})  # reading the fact would raise "Missing test fact"
    with ctx_state.use(state), ctx_host.use(host):
        (command,) = list(libvirt.domains_built._inner(vmspecs=[vmspec()], prepared_snapshot=SNAPSHOT))
    assert "define /dev/stdin" in command.get_raw_value()
