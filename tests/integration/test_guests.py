"""The workflows on booted guests, checked from inside each guest over SSH through the ProxyCommand.

One sandbox, three guests booted once for the whole module (the tests run in order and share
them): build -> start -> wait, then leases, names, disks and the shared client id seen from inside;
sethostname, graceful stop and start (the hostname stays); live memory resize (MemTotal follows);
delete (volumes gone, base unchanged, names gone). On failure, every guest's serial console is
attached to the report (conftest.py).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
import pytest

from inventories.manifest_model import mac_for
from sandbox import client, guest_image, network

pytestmark = [pytest.mark.integration, pytest.mark.guests]

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
BASE_DISK = "/secondary/centos7-vda.img"
DOMAIN = "sandbox.internal"
SHARED_BASE = "centos7-shared-id"


def _vm(name: str, ip: str, **extra: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "hostname": f"{name}.{DOMAIN}",
        "ipaddress": ip,
        "vcpus": 1,
        "memoryGb": 1,
        "maxMemoryGb": 1,
        "numDisks": 0,
        "diskSize": 0,
    }
    return {**spec, **extra}


# A full clone with a data disk and room to grow, and two linked clones of the base twin whose
# guests all send one DHCP client identifier, on two hypervisors.
MANIFEST = [
    {
        "host": "sm-01",
        "vmspecs": [
            _vm("gt-vm01", "10.10.5.41", maxMemoryGb=2, numDisks=1, diskSize=2),
            _vm("gt-vm02", "10.10.5.42", clone="linked", srcvm=SHARED_BASE),
        ],
    },
    {"host": "sm-02", "vmspecs": [_vm("gt-vm03", "10.10.5.43", clone="linked", srcvm=SHARED_BASE)]},
]
SPECS = {spec["name"]: spec for entry in MANIFEST for spec in entry["vmspecs"]}
HOST_OF = {spec["name"]: entry["host"] for entry in MANIFEST for spec in entry["vmspecs"]}


class Guests:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir
        self.timings: dict[str, float] = {}
        self.checksum = ""
        self.wait: subprocess.CompletedProcess[str] | None = None

    def host(self, name: str, command: str, check: bool = True) -> str:
        return client.ssh(client.node_data(self.inventory, name), command, check=check)

    def guest(self, vm: str, command: str, check: bool = True) -> str:
        """A command inside a guest, over SSH through the cluster namespace (the ProxyCommand)."""
        return client.ssh(client.guest_data(self.inventory, SPECS[vm]["ipaddress"]), command, check=check)

    def pyinfra(
        self,
        manifest: list[dict[str, Any]],
        deploy: str,
        *data: str,
        inventory: str = "manifest",
        ok: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(manifest))
        (self.workdir / "inventory.json").write_text(json.dumps(self.inventory))
        env = client.workflow_env(path, self.workdir / "inventory.json", self.inventory["mgmt"]["name"])
        extra = [x for d in data for x in ("--data", d)]
        started = time.monotonic()
        result = subprocess.run(
            [PYINFRA, "-y", f"inventories/{inventory}.py", f"deploys/{deploy}.py", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        self.timings[deploy] = round(time.monotonic() - started, 1)
        if ok:
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result

    def console(self, vm: str) -> str:
        return self.host(HOST_OF[vm], f"cat /var/log/libvirt/qemu/{vm}-console.log", check=False)

    def domstate(self, vm: str) -> str:
        return self.host(HOST_OF[vm], f"virsh -q domstate {vm}").strip()

    def base_checksum(self) -> str:
        return self.host("sm-01", client.content_checksum_command(BASE_DISK)).strip()


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def guests(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guests]:
    g = Guests(sandbox_cluster, tmp_path_factory.mktemp("guests"))
    g.checksum = g.base_checksum()
    pools_before = {
        host: g.host(host, "virsh -q pool-list --all --name").split() for host in ("sm-01", "sm-02")
    }
    g.pyinfra(MANIFEST, "pools")
    g.pyinfra(MANIFEST, "build")
    g.pyinfra(MANIFEST, "start")
    g.wait = g.pyinfra(MANIFEST, "wait", "wait_timeout=180")
    print(f"guest timings (s): {g.timings}")
    yield g
    g.pyinfra(MANIFEST, "delete", ok=False)
    for vm, host in HOST_OF.items():
        g.host(
            host, f"virsh -q destroy {vm}; virsh -q undefine {vm}; rm -f /data01/primary/{vm}-*", check=False
        )
    # Leave the pools as found: other tests define pools on the same directories.
    for host, before in pools_before.items():
        for pool in ("default", "secondary"):
            if pool not in before:
                g.host(host, f"virsh -q pool-destroy {pool}; virsh -q pool-undefine {pool}", check=False)


def test_wait_prints_when_each_guest_had_its_lease_and_answered_ssh(guests: Guests) -> None:
    assert guests.wait is not None
    lines = output(guests.wait).splitlines()
    assert any(re.search(r"VM\s+IP\s+lease after\s+SSH after", line) for line in lines)
    for vm, spec in SPECS.items():
        row = next(line for line in lines if re.search(rf"\] {vm}\s", line))
        assert re.search(rf"{re.escape(spec['ipaddress'])}\s+\d+\.\d s\s+\d+\.\d s$", row), row


def test_wait_fails_naming_the_vms_that_are_not_ready(guests: Guests) -> None:
    missing = copy.deepcopy(MANIFEST)
    missing[1]["vmspecs"].append(_vm("gt-vm09", "10.10.5.49"))  # never built
    result = guests.pyinfra(missing, "wait", "wait_timeout=3", ok=False)
    assert result.returncode != 0
    assert f"gt-vm09 (no lease for {mac_for('gt-vm09')} -> 10.10.5.49)" in output(result)
    assert "gt-vm01 (" not in output(result)


def test_each_guest_holds_its_manifest_address_from_dhcp(guests: Guests) -> None:
    leases = guests.host("mgmt-01", "cat /var/lib/misc/dnsmasq.leases").splitlines()
    for vm, spec in SPECS.items():
        assert f"inet {spec['ipaddress']}/24" in guests.guest(vm, "ip -4 -o address show dev eth0")
        # Set by the guest's DHCP client script from the lease dnsmasq handed out.
        assert guests.guest(vm, "cat /run/kvmq/lease").strip() == spec["ipaddress"]
        assert any(line.split()[1:3] == [mac_for(vm), spec["ipaddress"]] for line in leases), leases


def _addresses(nslookup: str) -> list[str]:
    # busybox nslookup: the server's "Address: 10.10.5.1:53" first, then the answers.
    return [
        line.split()[-1] for line in nslookup.splitlines() if line.startswith("Address") and ":53" not in line
    ]


def test_guests_resolve_each_other_through_the_management_node(guests: Guests) -> None:
    assert f"nameserver {network.MGMT_IP}" in guests.guest("gt-vm01", "cat /etc/resolv.conf")
    for vm, other in (("gt-vm01", "gt-vm03"), ("gt-vm03", "gt-vm01")):
        ip = SPECS[other]["ipaddress"]
        assert _addresses(guests.guest(vm, f"nslookup {other}.{DOMAIN} {network.MGMT_IP}")) == [ip]
        assert _addresses(guests.guest(vm, f"nslookup {other}")) == [ip]


def test_data_disks_have_the_manifest_size(guests: Guests) -> None:
    sectors = int(guests.guest("gt-vm01", "cat /sys/block/vdb/size"))
    assert sectors * 512 == SPECS["gt-vm01"]["diskSize"] << 30
    assert guests.guest("gt-vm02", "test -e /sys/block/vdb && echo yes || echo no").strip() == "no"


def test_guests_sharing_one_client_id_each_get_their_reservation(guests: Guests) -> None:
    shared = f"61:{guest_image.SHARED_CLIENT_ID}"
    udhcpc = "tr '\\0' ' ' < /proc/$(cat /run/udhcpc.pid)/cmdline"
    for vm in ("gt-vm02", "gt-vm03"):
        assert shared in guests.guest(vm, udhcpc)
        assert f"inet {SPECS[vm]['ipaddress']}/24" in guests.guest(vm, "ip -4 -o address show dev eth0")
    assert shared not in guests.guest("gt-vm01", udhcpc)


def test_sethostname_then_graceful_stop_and_start_keep_the_fqdn(guests: Guests) -> None:
    guests.pyinfra(MANIFEST, "sethostname", inventory="guests")
    for vm, spec in SPECS.items():
        assert guests.guest(vm, "hostname; cat /etc/hostname").split() == [spec["hostname"]] * 2
    again = guests.pyinfra(MANIFEST, "sethostname", inventory="guests")
    totals = next(line for line in output(again).splitlines() if "Grand total" in line).split()[2:]
    assert totals[1] == "-" and totals[2] == "-", totals  # nothing changed, nothing failed

    started = time.monotonic()
    stop = guests.pyinfra(MANIFEST, "stop", "stop_timeout=60")
    assert time.monotonic() - started < 60, output(stop)[-2000:]
    for vm in SPECS:
        assert guests.domstate(vm) == "shut off"
        # The guest's own ACPI power button handler ran: nothing was destroyed.
        assert "KVMQ-POWEROFF" in guests.console(vm)
    assert "destroying it" not in output(stop)

    guests.pyinfra(MANIFEST, "start")
    guests.pyinfra(MANIFEST, "wait", "wait_timeout=180")
    for vm, spec in SPECS.items():
        assert guests.guest(vm, "hostname").strip() == spec["hostname"]


def _mem_total_kib(guests: Guests, vm: str) -> int:
    return int(guests.guest(vm, "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo"))


def test_live_memory_resize_reaches_the_guest(guests: Guests) -> None:
    before = _mem_total_kib(guests, "gt-vm01")
    assert before < 1 << 20  # started at memoryGb 1 of maxMemoryGb 2: the balloon holds the rest
    grown = copy.deepcopy(MANIFEST)
    grown[0]["vmspecs"][0]["memoryGb"] = 2
    guests.pyinfra(grown, "resize")
    deadline = time.monotonic() + 60
    while (after := _mem_total_kib(guests, "gt-vm01")) < before + (768 << 10) and time.monotonic() < deadline:
        time.sleep(1)
    assert after >= before + (768 << 10), (before, after)


def test_delete_removes_the_volumes_and_keeps_the_base(guests: Guests) -> None:
    guests.pyinfra(MANIFEST, "delete")
    for vm, host in HOST_OF.items():
        assert vm not in guests.host(host, "virsh -q list --all --name").split()
        assert guests.host(host, f"ls /data01/primary/{vm}-* 2>/dev/null || true").strip() == ""
    assert guests.base_checksum() == guests.checksum


def test_deleted_guests_names_no_longer_resolve(guests: Guests) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [guests.inventory["mgmt"]["data"]["ssh_hostname"]]
    resolver.lifetime = 3
    for vm, spec in SPECS.items():
        for name in (spec["hostname"], vm):
            with pytest.raises((dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.resolver.NoAnswer)):
                resolver.resolve(name, "A", search=False)
