"""libvirt facts: command rendering and process() on probe output captured from the sandbox.

Fixtures (``fixtures/libvirt``, re-captured with ``capture.py`` there): ``cluster.json`` has a running
domain after a live setmem, a shut-off domain with a qcow2 overlay on the base, a raw data disk, an
empty cdrom and two NICs, an inactive pool; ``empty.json`` is a host with nothing defined.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pyinfra.api.exceptions import FactProcessError

from facts.libvirt import PROBE, Domains, HostCapacity, Hypervisor, Pools, Volumes
from facts.util.host_state import HostState

FIXTURES = Path(__file__).parent / "fixtures" / "libvirt"


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_command_is_one_probe_with_the_uri_quoted() -> None:
    command = Hypervisor().command(uri="qemu+ssh://root@h/system?x=$(id)").get_raw_value()
    assert command.count(" -c ") == 1 and "import libvirt" in command
    assert "'qemu+ssh://root@h/system?x=$(id)' 60 ||" in command
    assert (
        "timeout -k 5 70" in command
    )  # the probe's own watchdog (60 s) names the step; this is the backstop
    assert Hypervisor().requires_command() == "virsh"


@pytest.mark.parametrize(
    "view, key", [(Pools, "pools"), (Volumes, "volumes"), (Domains, "domains"), (HostCapacity, "capacity")]
)
def test_views_are_parts_of_the_one_snapshot(view: type, key: str) -> None:
    assert view().process(lines("cluster.json")) == Hypervisor().process(lines("cluster.json")).to_dict()[key]


def test_probe_is_valid_python_for_old_hosts() -> None:
    # RHEL 8's platform-python is 3.6: the grammar of 3.6 must accept the probe.
    ast.parse(PROBE, feature_version=(3, 6))


def test_old_grammar_check_rejects_newer_syntax() -> None:
    with pytest.raises(SyntaxError):
        ast.parse("if (n := 1):\n    pass\n", feature_version=(3, 6))


def test_pools_active_inactive_and_paths() -> None:
    pools = Pools().process(lines("cluster.json"))
    assert pools["parked"] == {
        "uuid": "25a34013-341e-4178-9e7e-e8aa22360895",
        "state": "inactive",
        "autostart": False,
        "persistent": True,
        "type": "dir",
        "path": "/data01/parked",
        "capacity": 0,
        "allocation": 0,
        "available": 0,
    }
    assert pools["default"]["state"] == "running" and pools["default"]["autostart"] is True
    assert pools["default"]["path"] == "/data01/primary" and pools["default"]["available"] == 242661650432
    assert pools["secondary"]["autostart"] is False


def test_volumes_with_backing_and_formats() -> None:
    volumes = Volumes().process(lines("cluster.json"))
    assert volumes["parked"] == {}
    overlay = volumes["default"]["fx-off-vda.qcow2"]
    assert overlay["format"] == "qcow2" and overlay["backing"] == "/secondary/centos7-vda.img"
    assert overlay["capacity"] == 40 * 1024**3
    copy = volumes["default"]["fx-run-vda.img"]
    assert (copy["format"], copy["backing"], copy["allocation"]) == ("raw", None, 1024**3)
    assert volumes["secondary"]["centos7-vda.img"]["path"] == "/secondary/centos7-vda.img"


def test_domains_running_with_live_setmem_has_separate_config() -> None:
    domains = Domains().process(lines("cluster.json"))
    running = domains["fx-run"]
    assert running["state"] == "running" and running["persistent"] is True
    assert running["max_memory_kib"] == 2 * 1024 * 1024
    assert running["config"]["memory_kib"] == 1024 * 1024
    assert running["memory_kib"] != running["config"]["memory_kib"]  # live (balloon) vs persistent
    assert "<currentMemory unit='KiB'>1048576</currentMemory>" in running["xml"]  # the persistent XML


def test_domains_shut_off_overlay_cdrom_and_nics() -> None:
    off = Domains().process(lines("cluster.json"))["fx-off"]
    assert off["state"] == "shut off"
    resources = {"memory_kib": 1048576, "max_memory_kib": 1048576, "vcpus": 1, "max_vcpus": 1}
    assert {k: off[k] for k in resources} == resources
    # A shut-off domain has one definition: its config holds the same resources, disks and NICs.
    assert {k: off["config"][k] for k in resources} == resources
    assert [d["path"] for d in off["config"]["disks"]] == [
        "/data01/primary/fx-off-vda.qcow2",
        "/data01/primary/fx-off-vdb.img",
        None,
    ]
    assert [i["mac"] for i in off["config"]["interfaces"]] == ["52:54:00:00:0f:02", "52:54:00:00:0f:03"]
    assert off["disks"] == [
        {
            "target": "vda",
            "device": "disk",
            "path": "/data01/primary/fx-off-vda.qcow2",
            "format": "qcow2",
            "bus": "virtio",
            "backing": "/secondary/centos7-vda.img",
        },
        {
            "target": "vdb",
            "device": "disk",
            "path": "/data01/primary/fx-off-vdb.img",
            "format": "raw",
            "bus": "virtio",
            "backing": None,
        },
        {"target": "hdc", "device": "cdrom", "path": None, "format": "raw", "bus": "ide", "backing": None},
    ]
    assert [(i["mac"], i["type"], i["model"]) for i in off["interfaces"]] == [
        ("52:54:00:00:0f:02", "user", "virtio"),
        ("52:54:00:00:0f:03", "user", "e1000"),
    ]


def test_capacity() -> None:
    capacity = HostCapacity().process(lines("cluster.json"))
    assert (capacity["cpus"], capacity["memory_kib"]) == (2, 24683520)
    assert capacity["libvirt_version"] == "9.0.0"


def test_empty_host() -> None:
    assert Hypervisor().process(lines("empty.json")).domains == {}
    assert Pools().process(lines("empty.json")) == {}
    assert Hypervisor.default() == HostState()  # typed now: no pools, volumes, domains or files


@pytest.mark.parametrize(
    "output",
    [
        ["not json"],
        ['{"pools": []}'],
        ['{"pools": [{"name": "p", "xml": "<pool"}], "domains": [], "node": {}}'],
        [
            '{"pools": [], "domains": [{"name": "d", "state": 1, "xml": "<domain><vcpu>x</vcpu></domain>"}], "node": {}}'
        ],
        ['{"pools": [], "domains": [{"name": "d"}], "node": {}}'],
    ],
)
def test_malformed_output_is_a_fact_process_error(output: list[str]) -> None:
    with pytest.raises(FactProcessError):
        Hypervisor().process(output)
