"""The typed host state: one definition of "running", values read once from the XML, plain data round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from facts.libvirt import Domains, Hypervisor
from facts.util.host_state import DOMAIN_STATES, Domain, HostState
from facts.util.libvirt_parse import domains_from

CLUSTER = (Path(__file__).parent / "fixtures" / "libvirt" / "cluster.json").read_text().splitlines()

# The two definitions this package had before Domain.active: the planners' list of running states, and
# placement's and migrate's "not shut off, crashed or without a state".
PLANNERS_ACTIVE = {"running", "idle", "paused", "in shutdown", "pmsuspended"}
MOVES_NOT_LIVE = {"shut off", "crashed", "no state"}


@pytest.mark.parametrize("state", sorted(DOMAIN_STATES.values()))
def test_every_state_libvirt_reports_is_running_or_not_as_both_old_definitions_said(state: str) -> None:
    assert (state in PLANNERS_ACTIVE) == (state not in MOVES_NOT_LIVE)
    assert Domain("vm", state=state).active == (state in PLANNERS_ACTIVE)


def test_a_state_libvirt_added_later_counts_as_possibly_running() -> None:
    # Nothing copies its disks, edits it offline or starts it again.
    assert Domain("vm", state="unknown").active


def test_the_fact_reads_cache_shareable_cpu_mode_and_scsi_controllers_once() -> None:
    xml = (
        "<domain><name>web</name><cpu mode='host-model'/><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
        "<source file='/secondary/web-vda.qcow2'/><target dev='vda' bus='virtio'/><shareable/></disk>"
        "<disk type='file' device='cdrom'><source file='/p/web-seed.iso'/><target dev='sda' bus='scsi'/>"
        "<readonly/></disk><controller type='scsi' index='0' model='virtio-scsi'/></devices></domain>"
    )
    domain = domains_from({"domains": [{"name": "web", "state": 5, "xml": xml}]})["web"]
    vda, seed = domain.config.disks
    assert (vda.cache, vda.shareable, vda.readonly) == ("none", True, False)
    assert (seed.device, seed.readonly) == ("cdrom", True)
    assert domain.config.cpu_mode == "host-model" and domain.config.scsi_models == ("virtio-scsi",)
    assert domain.disks == domain.config.disks and not domain.active


def test_plain_data_reads_back_as_the_same_host_state() -> None:
    host = Hypervisor().process(CLUSTER)
    assert HostState.from_dict(host.to_dict()) == host
    assert Domains().process(CLUSTER) == host.to_dict()["domains"]  # what `pyinfra ... fact` prints


def test_a_disks_backing_chain_follows_headers_and_volumes_to_the_end() -> None:
    host = Hypervisor().process(CLUSTER)
    overlay = host.domains["fx-off"].config.disks[0]
    assert host.backing_chain(overlay) == ("/data01/primary/fx-off-vda.qcow2", "/secondary/centos7-vda.img")
    assert host.backing_chain(host.domains["fx-off"].config.disks[2]) == ()  # the empty cdrom
