"""The libvirt operations with pyinfra-testing's FakeHost, fed the Hypervisor fact parsed from real probe
output captured on the sandbox (``fixtures/libvirt/cluster.json``): rendered commands and no-op messages."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import OperationValueError
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from facts.libvirt import Hypervisor
from facts.util.host_state import HostState
from operations import libvirt
from tests.unit.command_text import unbounded
from tests.unit.vmspec_builders import fx_new as vmspec

FIXTURES = Path(__file__).parent / "fixtures"
HOST_STATE = Hypervisor().process((FIXTURES / "libvirt" / "cluster.json").read_text().splitlines())
URI_KEY = "timeout=60, uri=qemu:///system"


def run(op: Any, host_state: HostState | None = None, **kwargs: Any) -> tuple[list[str], Any]:
    state = FakeState()
    host = create_host(state, facts={"libvirt.Hypervisor": {URI_KEY: host_state or HOST_STATE}})
    with ctx_state.use(state), ctx_host.use(host):
        # Without the time-limit wrappers, so the tests compare what runs.
        commands = [unbounded(c.get_raw_value()) for c in op._inner(**kwargs) if hasattr(c, "get_raw_value")]
    return commands, host


def test_pool_present_and_running_is_a_noop() -> None:
    commands, host = run(libvirt.pool, pool_name="default", path="/data01/primary/")
    assert (
        commands == [] and host.noop_description == "pool default is defined at /data01/primary/ and running"
    )


def test_new_pool_is_defined_built_started_autostarted() -> None:
    (command,), _ = run(libvirt.pool, pool_name="fast", path="/srv/fast dir")
    assert command == (
        "virsh -q -c qemu:///system pool-define-as fast dir --target '/srv/fast dir' && "
        "virsh -q -c qemu:///system pool-build fast && virsh -q -c qemu:///system pool-start fast && "
        "virsh -q -c qemu:///system pool-autostart fast"
    )


def test_inactive_pool_is_started() -> None:
    (command,), _ = run(libvirt.pool, pool_name="parked", path="/data01/parked", autostart=False)
    assert (
        command
        == "virsh -q -c qemu:///system pool-build parked && virsh -q -c qemu:///system pool-start parked"
    )


def test_changing_a_pool_path_fails_the_host_instead_of_redefining() -> None:
    (command,), _ = run(libvirt.pool, pool_name="default", path="/elsewhere")
    assert "refusing to redefine it" in command and command.endswith("exit 1")
    assert "pool-define" not in command


def test_build_clones_from_the_real_base_definition() -> None:
    (command,), _ = run(libvirt.vms, vmspecs=[vmspec()])
    assert "cp --sparse=always -- /secondary/centos7-vda.img ./fx-new-vda.img" in command
    assert "truncate -s 2G -- ./fx-new-vdb.img" in command


def test_build_of_existing_domains_converges_or_noops() -> None:
    # fx-off in the fixture: 1 vCPU, 1 GiB, overlay disk + vdb data disk, shut off.
    spec = vmspec(
        name="fx-off", vcpus=1, memory_gib=1, max_memory_gib=1, num_disks=1, mac="52:54:00:00:0f:02"
    )
    commands, host = run(libvirt.vms, vmspecs=[spec])
    assert commands == [] and host.noop_description == "1 domain(s) match the manifest"
    (command,), _ = run(libvirt.vms, vmspecs=[replace(spec, vcpus=2)])
    assert "setvcpus fx-off 2 --maximum --config" in command


def test_build_with_a_missing_base_fails_only_at_execution_not_at_prepare() -> None:
    (command,), _ = run(libvirt.vms, vmspecs=[vmspec(srcvm="rocky9")])
    assert "source domain rocky9 is not defined" in command and command.endswith("exit 1")


def test_power_and_delete_noops() -> None:
    commands, host = run(libvirt.vms_running, vmspecs=[vmspec(name="fx-run")], running=True)
    assert commands == [] and host.noop_description == "1 domain(s) already running"
    commands, host = run(libvirt.vms, vmspecs=[vmspec(name="gone")], present=False)
    assert commands == [] and host.noop_description == "1 domain(s) already absent"


def test_delete_of_the_overlay_vm_keeps_its_base_and_the_empty_cdrom() -> None:
    (command,), _ = run(libvirt.vms, vmspecs=[vmspec(name="fx-off")], present=False)
    assert "rm -f -- /data01/primary/fx-off-vda.qcow2 /data01/primary/fx-off-vdb.img" in command
    assert "centos7-vda.img" not in command


def test_define_from_xml(tmp_path: Path) -> None:
    base = HOST_STATE.domains["centos7"].xml
    path = tmp_path / "centos7.xml"
    path.write_text(base)
    commands, host = run(libvirt.domain, xml_file=str(path))
    assert commands == [] and host.noop_description == f"domain centos7 matches {path}"
    changed = copy.deepcopy(HOST_STATE)
    del changed.domains["centos7"]
    (command,), _ = run(libvirt.domain, host_state=changed, xml_file=str(path))
    assert command == "virsh -q -c qemu:///system define /dev/stdin >/dev/null"
    with pytest.raises(OperationValueError, match="cannot use domain XML"):
        run(libvirt.domain, xml_file=str(tmp_path / "missing.xml"))


# --- define from a hand-written XML file -------------------------------------------------------------

HAND_WRITTEN = """<domain type='kvm'>
  <name>hand</name>
  <memory unit='GiB'>2</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/secondary/hand.img'/><target dev='vda' bus='virtio'/></disk>
    <graphics type='vnc' port='-1' passwd='s3cret'/>
  </devices>
</domain>
"""


def run_commands(op: Any, host_state: HostState, **kwargs: Any) -> tuple[list[Any], Any]:
    state = FakeState()
    host = create_host(state, facts={"libvirt.Hypervisor": {URI_KEY: host_state}})
    with ctx_state.use(state), ctx_host.use(host):
        return list(op._inner(**kwargs)), host


def as_libvirt_defines_it(xml: str, uuid: str) -> str:
    """What libvirt's dump of the definition looks like: units in KiB, machine expanded, a UUID, no
    password, defaults added (done by hand here the way libvirt 9 does it)."""
    out = xml.replace("<memory unit='GiB'>2</memory>", "<memory unit='KiB'>2097152</memory>")
    out = out.replace('<memory unit="GiB">2</memory>', "<memory unit='KiB'>2097152</memory>")
    out = out.replace("machine='pc'", "machine='pc-i440fx-8.2'").replace(
        'machine="pc"', "machine='pc-i440fx-8.2'"
    )
    out = out.replace(" passwd='s3cret'", "").replace(' passwd="s3cret"', "")
    out = out.replace("<name>hand</name>", f"<name>hand</name><uuid>{uuid}</uuid>")
    assert "GiB" not in out and "passwd" not in out and "machine='pc'" not in out
    return out


def with_domain(xml: str, uuid: str = "5a1f0c6e-0000-4000-8000-000000000001") -> HostState:
    host_state = copy.deepcopy(HOST_STATE)
    host_state.domains["hand"] = replace(host_state.domains["centos7"], name="hand", uuid=uuid, xml=xml)
    return host_state


def test_hand_written_xml_defined_once_then_a_noop(tmp_path: Path) -> None:
    path = tmp_path / "hand.xml"
    path.write_text(HAND_WRITTEN)
    (define,), _ = run_commands(libvirt.domain, HOST_STATE, xml_file=str(path))
    sent = define.connector_arguments["_stdin"]
    assert (
        "<uuid>" not in sent and "digest=" in sent and "s3cret" in sent
    )  # first define: libvirt picks the UUID

    uuid = "5a1f0c6e-0000-4000-8000-000000000001"
    defined = with_domain(as_libvirt_defines_it(sent, uuid), uuid)
    commands, host = run_commands(libvirt.domain, defined, xml_file=str(path))
    assert commands == [] and host.noop_description == f"domain hand matches {path}"

    # The file changes: redefined once, keeping the domain's UUID.
    path.write_text(HAND_WRITTEN.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"))
    (redefine,), _ = run_commands(libvirt.domain, defined, xml_file=str(path))
    sent = redefine.connector_arguments["_stdin"]
    assert f"<uuid>{uuid}</uuid>" in sent and "<vcpu>2</vcpu>" in sent


def test_hand_written_xml_with_another_uuid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hand.xml"
    path.write_text(HAND_WRITTEN.replace("<name>hand</name>", "<name>hand</name><uuid>0-other</uuid>"))
    defined = with_domain(as_libvirt_defines_it(HAND_WRITTEN, "u-1"), "u-1")
    with pytest.raises(OperationValueError, match="differs from the defined domain's u-1"):
        run_commands(libvirt.domain, defined, xml_file=str(path))


# --- capacity preflight in the build operation ---------------------------------------------------------


def test_build_refuses_a_host_that_does_not_fit_with_a_failing_command_not_an_exception() -> None:
    # The fixture host has 2 CPUs: 12 vCPUs do not fit at 4.0, and nothing is cloned.
    (command,), _ = run(libvirt.vms, vmspecs=[vmspec(vcpus=12)], vcpu_ratio=4.0, memory_ratio=1.0)
    assert command.endswith("exit 1") and "define /dev/stdin" not in command
    assert "capacity preflight refused the build on" in command
    # 12 + the 4 vCPUs of the other domains defined there (wf-vm03, fx-off, fx-run; not the base)
    assert "16 vCPUs > 2 CPUs x 4" in command and "fx-new (12 vCPU, 1 GiB) would fit on" in command
    (command,), _ = run(libvirt.vms, vmspecs=[vmspec(vcpus=4)], vcpu_ratio=4.0, memory_ratio=1.0)
    assert "define /dev/stdin" in command


def test_build_reads_the_fact_itself() -> None:
    state = FakeState()
    host = create_host(state, facts={})
    with ctx_state.use(state), ctx_host.use(host), pytest.raises(Exception, match="Missing test fact"):
        list(libvirt.vms._inner(vmspecs=[vmspec()]))
    with pytest.raises(TypeError):
        list(libvirt.vms._inner(vmspecs=[vmspec()], prepared_snapshot=HOST_STATE))
