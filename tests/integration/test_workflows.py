"""End to end on the sandbox: every workflow deploy through the real pyinfra CLI, checked with virsh.

pools -> build -> re-run (no change) -> start -> resize live -> stop -> delete (volumes gone, base
untouched) -> build again -> delete with keep_disks (volumes kept); --dry on a fresh cluster changes
nothing; a failing host fails alone; capacity preflight refuses.

The VMs here are clones of ``wf-idle``: the sandbox's base VM without its kernel, idling in the
firmware, since these tests are about what libvirt and the management node hold, which a booting
guest does not change (test_guests.py runs the workflows on booted guests).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dns.resolver
import pytest

from inventories.manifest_model import mac_for
from sandbox import client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
BASE_DISK = "/secondary/centos7-vda.img"

MANIFEST = [
    {
        "host": "sm-01",
        "vmspecs": [
            {
                "name": "wf-vm01",
                "hostname": "wf-vm01.wf.internal",
                "ipaddress": "10.10.5.13",
                "vcpus": 1,
                "memoryGb": 1,
                "maxMemoryGb": 2,
                "numDisks": 1,
                "diskSize": 5,
            },
            {
                "name": "wf-vm02",
                "hostname": "wf-vm02.wf.internal",
                "ipaddress": "10.10.5.130",
                "vcpus": 1,
                "memoryGb": 1,
                "maxMemoryGb": 2,
                "numDisks": 0,
                "diskSize": 0,
                "clone": "linked",
            },
        ],
    },
    {
        "host": "sm-02",
        "vmspecs": [
            {
                "name": "wf-vm03",
                "hostname": "wf-vm03.wf.internal",
                "ipaddress": "10.10.5.14",
                "vcpus": 2,
                "memoryGb": 1,
                "maxMemoryGb": 2,
                "numDisks": 2,
                "diskSize": 5,
            },
        ],
    },
]
VMS = {"sm-01": ["wf-vm01", "wf-vm02"], "sm-02": ["wf-vm03"]}
IDLE_BASE = "wf-idle"
for _entry in MANIFEST:
    for _spec in _entry["vmspecs"]:
        _spec["srcvm"] = IDLE_BASE


def idle_base_xml(base_xml: str) -> str:
    """The base VM without direct kernel boot and without a network boot ROM: it never runs an OS,
    so it never takes a DHCP lease."""
    root = ET.fromstring(base_xml)
    root.find("name").text = IDLE_BASE
    for element in root.findall("uuid"):
        root.remove(element)
    os_element = root.find("os")
    for tag in ("kernel", "initrd", "cmdline"):
        for element in os_element.findall(tag):
            os_element.remove(element)
    ET.SubElement(os_element, "boot", {"dev": "hd"})
    for interface in root.findall("devices/interface"):
        ET.SubElement(interface, "rom", {"bar": "off"})
    for source in root.findall("devices/serial/source") + root.findall("devices/console/source"):
        source.set("path", f"/var/log/libvirt/qemu/{IDLE_BASE}-console.log")
    return ET.tostring(root, encoding="unicode")


class Cluster:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir

    def ssh(self, host: str, command: str, check: bool = True) -> str:
        return client.ssh(client.node_data(self.inventory, host), command, check=check)

    def virsh(self, host: str, *args: str) -> str:
        return self.ssh(host, "virsh -q -c qemu:///system " + " ".join(args))

    def pyinfra(
        self,
        manifest: list[dict[str, Any]],
        *args: str,
        inventory: str = "inventories/manifest.py",
        expect_ok: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        path = self.workdir / "manifest.json"
        path.write_text(json.dumps(manifest))
        env = client.workflow_env(path, self.workdir / "inventory.json", self.inventory["mgmt"]["name"])
        (self.workdir / "inventory.json").write_text(json.dumps(self.inventory))
        result = subprocess.run(
            [PYINFRA, *args[:1], inventory, *args[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if expect_ok:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def deploy(
        self,
        manifest: list[dict[str, Any]],
        deploy: str,
        *data: str,
        flag: str = "-y",
        expect_ok: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        extra = [x for d in data for x in ("--data", d)]
        return self.pyinfra(manifest, flag, f"deploys/{deploy}.py", *extra, expect_ok=expect_ok)

    def domains(self, host: str) -> dict[str, str]:
        out = self.virsh(host, "list", "--all")
        return {line.split()[1]: " ".join(line.split()[2:]) for line in out.splitlines() if line.strip()}

    def files(self, host: str, pattern: str = "wf-vm*") -> list[str]:
        out = self.ssh(host, f"ls -1 /data01/primary/{pattern} 2>/dev/null || true")
        return sorted(out.split())


def totals(result: subprocess.CompletedProcess[str]) -> list[str]:
    """pyinfra's "Grand total" row: hosts, success (changed), error, no change."""
    row = next(line for line in (result.stdout + result.stderr).splitlines() if "Grand total" in line)
    return row.split()[2:]


@pytest.fixture(scope="module")
def cluster(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    c = Cluster(sandbox_cluster, tmp_path_factory.mktemp("workflows"))
    idle = c.workdir / f"{IDLE_BASE}.xml"
    idle.write_text(idle_base_xml(c.virsh("sm-01", "dumpxml", "--inactive", "centos7")))
    for host in VMS:
        client.ssh(client.node_data(c.inventory, host), "virsh -q define /dev/stdin", stdin=idle.read_text())
    yield c
    # Leave the sandbox as found even when a test failed halfway.
    c.deploy(MANIFEST, "delete", expect_ok=False)
    for host, names in VMS.items():
        for vm in names:
            c.ssh(
                host,
                f"virsh -q destroy {vm}; virsh -q undefine --nvram {vm}; rm -f /data01/primary/{vm}-*",
                check=False,
            )
        c.ssh(host, f"virsh -q undefine {IDLE_BASE}", check=False)


def base_checksum(c: Cluster) -> str:
    return c.ssh("sm-01", client.content_checksum_command(BASE_DISK)).strip()


def test_dry_run_on_a_fresh_cluster_changes_nothing(cluster: Cluster) -> None:
    before = {h: cluster.domains(h) for h in VMS}
    for deploy in ("build", "start", "stop", "resize", "delete", "dumpxml", "status"):
        result = cluster.deploy(MANIFEST, deploy, flag="--dry")
        assert "Traceback" not in result.stderr, result.stderr
    assert {h: cluster.domains(h) for h in VMS} == before
    assert cluster.files("sm-01") == [] and cluster.files("sm-02") == []


def test_lifecycle(cluster: Cluster) -> None:
    checksum = base_checksum(cluster)
    cluster.deploy(MANIFEST, "pools")
    pools = cluster.virsh("sm-01", "pool-list", "--all", "--name").split()
    assert {"default", "secondary"} <= set(pools)

    dry = cluster.deploy(MANIFEST, "build", flag="--dry")
    assert f"wf-vm01: define from {IDLE_BASE}" in dry.stdout + dry.stderr
    build = cluster.deploy(MANIFEST, "build")
    assert set(VMS["sm-01"]) <= set(cluster.domains("sm-01"))
    assert set(VMS["sm-02"]) <= set(cluster.domains("sm-02"))
    assert cluster.files("sm-01") == [
        "/data01/primary/wf-vm01-vda.img",
        "/data01/primary/wf-vm01-vdb.img",
        "/data01/primary/wf-vm02-vda.qcow2",
    ]
    assert cluster.files("sm-02") == [
        "/data01/primary/wf-vm03-vda.img",
        "/data01/primary/wf-vm03-vdb.img",
        "/data01/primary/wf-vm03-vdc.img",
    ]
    info = cluster.virsh("sm-02", "dominfo", "wf-vm03")
    assert (
        "CPU(s):         2" in info
        and "Max memory:     2097152 KiB" in info
        and "Used memory:    1048576 KiB" in info
    )
    assert mac_for("wf-vm03") in cluster.virsh("sm-02", "domiflist", "wf-vm03")
    overlay = cluster.ssh("sm-01", "qemu-img info --output=json /data01/primary/wf-vm02-vda.qcow2")
    assert json.loads(overlay)["backing-filename"] == BASE_DISK
    assert int(totals(build)[1]) >= 2 and totals(build)[2] == "-"  # both hypervisors changed, nothing failed

    # DNS on the management node answers every VM's names; the .13/.130 pair stays distinct.
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [cluster.inventory["mgmt"]["data"]["ssh_hostname"]]
    assert resolver.resolve("wf-vm01.wf.internal", "A")[0].to_text() == "10.10.5.13"
    assert resolver.resolve("wf-vm02.wf.internal", "A")[0].to_text() == "10.10.5.130"
    assert resolver.resolve("wf-vm03", "A")[0].to_text() == "10.10.5.14"

    again = cluster.deploy(MANIFEST, "build", flag="--dry")
    assert "define from" not in again.stdout + again.stderr
    rerun = cluster.deploy(MANIFEST, "build")
    assert "define from" not in rerun.stdout + rerun.stderr
    # 2 hypervisors x (placement, clone) + mgmt: no change anywhere
    assert totals(rerun) == ["5", "-", "-", "5"]

    cluster.deploy(MANIFEST, "start")
    assert cluster.domains("sm-01")["wf-vm01"] == "running"
    assert cluster.domains("sm-02")["wf-vm03"] == "running"

    resized = copy.deepcopy(MANIFEST)
    resized[1]["vmspecs"][0]["memoryGb"] = 2
    cluster.deploy(resized, "resize")
    assert "Used memory:    2097152 KiB" in cluster.virsh("sm-02", "dominfo", "wf-vm03")
    assert "<currentMemory unit='KiB'>2097152</currentMemory>" in cluster.virsh(
        "sm-02", "dumpxml", "--inactive", "wf-vm03"
    )

    cluster.deploy(resized, "stop", "stop_timeout=2")
    assert cluster.domains("sm-01")["wf-vm01"] == "shut off"
    assert cluster.domains("sm-02")["wf-vm03"] == "shut off"

    status = cluster.deploy(resized, "status")
    assert "wf-vm03" in status.stdout + status.stderr

    cluster.deploy(resized, "delete")
    assert not set(VMS["sm-01"]) & set(cluster.domains("sm-01"))
    assert cluster.files("sm-01") == [] and cluster.files("sm-02") == []
    assert base_checksum(cluster) == checksum
    # No upstream servers in the sandbox: an unknown name is refused rather than NXDOMAIN.
    with pytest.raises((dns.resolver.NXDOMAIN, dns.resolver.NoNameservers)):
        resolver.resolve("wf-vm01.wf.internal", "A")

    cluster.deploy(MANIFEST, "build")
    cluster.deploy(MANIFEST, "delete", "keep_disks=true")
    assert "wf-vm01" not in cluster.domains("sm-01")
    assert cluster.files("sm-01") == [
        "/data01/primary/wf-vm01-vda.img",
        "/data01/primary/wf-vm01-vdb.img",
        "/data01/primary/wf-vm02-vda.qcow2",
    ]
    cluster.ssh("sm-01", "rm -f /data01/primary/wf-vm0*")
    cluster.ssh("sm-02", "rm -f /data01/primary/wf-vm0*")


def test_dumpxml_saves_definitions_on_the_controller(cluster: Cluster, tmp_path: Path) -> None:
    one = [{"host": "sm-01", "vmspecs": [MANIFEST[0]["vmspecs"][1]]}]
    cluster.deploy(one, "build")
    try:
        cluster.deploy(one, "dumpxml", f"xml_dir={tmp_path}")
        saved = (tmp_path / "sm-01" / "wf-vm02.xml").read_text()
        assert "<name>wf-vm02</name>" in saved
    finally:
        cluster.deploy(one, "delete")


def test_a_failing_host_fails_alone(cluster: Cluster) -> None:
    manifest = copy.deepcopy(MANIFEST[:1])
    manifest[0]["vmspecs"] = manifest[0]["vmspecs"][1:]
    manifest.append(
        {
            "host": "sm-99",
            "ssh": {"ssh_hostname": "127.0.1.199", "ssh_port": 22},
            "vmspecs": [
                {
                    "name": "wf-vm99",
                    "hostname": "wf-vm99.wf.internal",
                    "ipaddress": "10.10.5.99",
                    "vcpus": 1,
                    "memoryGb": 1,
                    "maxMemoryGb": 1,
                    "numDisks": 0,
                    "diskSize": 0,
                }
            ],
        }
    )
    cluster.deploy(MANIFEST, "pools")  # also when run on its own
    try:
        result = cluster.deploy(manifest, "build", expect_ok=False)
        assert result.returncode != 0
        assert "sm-99" in result.stdout + result.stderr
        assert "wf-vm02" in cluster.domains("sm-01")
    finally:
        cluster.deploy(manifest[:1], "delete")


def test_capacity_refusal_fails_that_host_alone_with_a_table(cluster: Cluster) -> None:
    # Sandbox hosts have 2 CPUs: at the default vCPU ratio 4.0, 9 vCPUs do not fit on sm-01.
    manifest = copy.deepcopy(MANIFEST)
    manifest[0]["vmspecs"][0]["vcpus"] = 9
    cluster.deploy(MANIFEST, "pools")
    try:
        result = cluster.deploy(manifest, "build", expect_ok=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "Traceback" not in output and "An exception occurred" not in output, output[-3000:]
        assert "capacity preflight refused the build on sm-01" in output
        table = [line for line in output.splitlines() if "vCPUs" in line and "limit" in line]
        assert table, output[-3000:]
        assert re.search(r"sm-01 +\d+ +8 .*vCPUs > 2 CPUs x 4", output), output[-3000:]
        assert re.search(r"sm-02 +\d+ +8 .* ok", output), output[-3000:]
        assert "wf-vm01 (9 vCPU, 1 GiB) would fit on: no other host" in output
        assert "wf-vm02 (1 vCPU, 1 GiB) would fit on: sm-02" in output
        assert not set(VMS["sm-01"]) & set(cluster.domains("sm-01"))
        assert cluster.files("sm-01") == []
        assert "wf-vm03" in cluster.domains("sm-02")  # the other host was built
    finally:
        cluster.deploy(manifest, "delete")


def test_a_clone_that_fails_midway_leaves_nothing_behind(cluster: Cluster) -> None:
    # ext4 refuses a 58 TiB file (its limit is 16 TiB): the data disk fails after the base disk was copied.
    spec = {
        **MANIFEST[0]["vmspecs"][0],
        "name": "wf-vm09",
        "hostname": "wf-vm09.wf.internal",
        "ipaddress": "10.10.5.19",
        "numDisks": 1,
        "diskSize": 60000,
    }
    manifest = [{"host": "sm-01", "vmspecs": [spec]}]
    result = cluster.deploy(manifest, "build", expect_ok=False)
    assert result.returncode != 0
    assert "wf-vm09" not in cluster.domains("sm-01")
    assert cluster.files("sm-01", "wf-vm09*") == []
    cluster.deploy(manifest, "delete")


def test_base_vm_defined_from_a_controller_side_xml(cluster: Cluster, tmp_path: Path) -> None:
    xml = cluster.virsh("sm-01", "dumpxml", "--inactive", "centos7")
    xml = xml.replace("<name>centos7</name>", "<name>wf-base</name>")
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    path = tmp_path / "wf-base.xml"
    path.write_text(xml)
    try:
        first = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(first)[1] == "2"
        assert "wf-base" in cluster.domains("sm-01") and "wf-base" in cluster.domains("sm-02")
        second = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(second) == ["2", "-", "-", "2"]
        missing = cluster.deploy(MANIFEST, "base_vm", flag="-y", expect_ok=False)
        assert missing.returncode != 0 and "--data xml=" in missing.stdout + missing.stderr
    finally:
        for host in VMS:
            cluster.ssh(host, "virsh -q undefine wf-base", check=False)


def test_resize_adds_a_missing_data_disk_to_a_running_vm(cluster: Cluster) -> None:
    spec = {
        **MANIFEST[0]["vmspecs"][1],
        "name": "wf-vm08",
        "hostname": "wf-vm08.wf.internal",
        "ipaddress": "10.10.5.18",
    }
    manifest = [{"host": "sm-01", "vmspecs": [spec]}]
    try:
        cluster.deploy(manifest, "build")
        cluster.deploy(manifest, "start")
        grown = [{"host": "sm-01", "vmspecs": [{**spec, "numDisks": 1, "diskSize": 3}]}]
        cluster.deploy(grown, "resize")
        assert "vdb" in cluster.virsh("sm-01", "domblklist", "wf-vm08")  # live
        assert "vdb" in cluster.virsh("sm-01", "domblklist", "--inactive", "wf-vm08")  # config
        assert totals(cluster.deploy(grown, "resize"))[1] == "-"
        shrunk = cluster.deploy(manifest, "resize")
        assert "beyond numDisks 0: not removed" in shrunk.stdout + shrunk.stderr
    finally:
        cluster.deploy(manifest, "delete")
    assert cluster.files("sm-01", "wf-vm08*") == []


HAND_WRITTEN_XML = """<domain type='kvm'>
  <name>wf-hand</name>
  <memory unit='GiB'>2</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/secondary/wf-hand-vda.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' port='-1' listen='127.0.0.1' passwd='s3cret'/>
  </devices>
</domain>
"""


def test_base_vm_from_a_hand_written_xml_is_defined_once_and_redefined_in_place(
    cluster: Cluster, tmp_path: Path
) -> None:
    # No <uuid>, memory in GiB, machine 'pc', a VNC password: libvirt's dump differs from all of it.
    path = tmp_path / "wf-hand.xml"
    path.write_text(HAND_WRITTEN_XML)
    try:
        first = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(first)[1] == "2"
        uuids = {host: cluster.virsh(host, "domuuid", "wf-hand").strip() for host in VMS}
        assert "sha256:" in cluster.virsh("sm-01", "dumpxml", "--inactive", "wf-hand")

        second = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(second) == ["2", "-", "-", "2"], second.stdout[-3000:] + second.stderr[-3000:]

        path.write_text(HAND_WRITTEN_XML.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"))
        changed = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(changed)[1] == "2"
        for host in VMS:
            assert cluster.virsh(host, "domuuid", "wf-hand").strip() == uuids[host]
            assert "CPU(s):         2" in cluster.virsh(host, "dominfo", "wf-hand")
        third = cluster.deploy(MANIFEST, "base_vm", f"xml={path}")
        assert totals(third) == ["2", "-", "-", "2"]
    finally:
        for host in VMS:
            cluster.ssh(host, "virsh -q undefine wf-hand", check=False)


def test_diff_prints_before_and_after_for_each_libvirt_workflow(cluster: Cluster) -> None:
    spec = {
        **MANIFEST[0]["vmspecs"][1],
        "name": "wf-vm07",
        "hostname": "wf-vm07.wf.internal",
        "ipaddress": "10.10.5.17",
    }
    manifest = [{"host": "sm-01", "vmspecs": [spec]}]
    grown = [{"host": "sm-01", "vmspecs": [{**spec, "memoryGb": 2}]}]

    def diff(deploy: str, m: list[dict[str, Any]], *data: str) -> str:
        extra = [x for d in data for x in ("--data", d)]
        result = cluster.pyinfra(m, "-y", f"deploys/{deploy}.py", "--diff", *extra)
        return result.stdout + result.stderr

    cluster.deploy(MANIFEST, "pools")
    try:
        build = diff("build", manifest)
        assert "wf-vm07: vCPUs absent -> 1" in build and "wf-vm07: max memory absent -> 2 GiB" in build
        assert "wf-vm07: disks absent -> vda" in build and "wf-vm07: power state absent -> shut off" in build
        assert "wf-vm07: power state shut off -> running" in diff("start", manifest)
        assert "wf-vm07: memory 1 GiB -> 2 GiB" in diff("resize", grown)
        assert "wf-vm07: power state running -> shut off" in diff("stop", grown, "stop_timeout=2")
        deleted = diff("delete", grown)
        assert "wf-vm07: memory 2 GiB -> absent" in deleted and "wf-vm07: autostart off -> absent" in deleted
        assert "wf-vm07" not in cluster.domains("sm-01")
        # Without --diff none of it is printed.
        quiet = cluster.deploy(manifest, "build")
        assert "vCPUs absent ->" not in quiet.stdout + quiet.stderr
    finally:
        cluster.deploy(manifest, "delete")


def hypervisor_reads(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """How often each host loaded the Hypervisor fact, from pyinfra's ``-v`` lines."""
    counts: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        match = re.search(r"\[([\w.-]+)\]\s+Loaded fact facts\.libvirt\.Hypervisor\b", line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def test_a_build_reads_each_hypervisors_state_once(cluster: Cluster) -> None:
    try:
        # Placement, the capacity preflight and the clones share one read per host, with or without
        # change detection, whether the build changes anything or not.
        first = cluster.pyinfra(MANIFEST, "-y", "-v", "deploys/build.py")
        assert set(VMS["sm-01"]) <= set(cluster.domains("sm-01"))
        assert hypervisor_reads(first) == {"sm-01": 1, "sm-02": 1}
        rerun = cluster.pyinfra(MANIFEST, "-y", "-v", "deploys/build.py")
        assert hypervisor_reads(rerun) == {"sm-01": 1, "sm-02": 1}
        detected = cluster.pyinfra(MANIFEST, "--dry", "-v", "deploys/build.py")
        assert hypervisor_reads(detected) == {"sm-01": 1, "sm-02": 1}
    finally:
        cluster.deploy(MANIFEST, "delete")


def test_a_failing_start_fails_its_host_naming_the_vm_and_the_others_still_start(cluster: Cluster) -> None:
    """A host's VMs each get their start: wf-vm01 cannot start (its disk is gone), wf-vm02 on the same
    host starts anyway, sm-01 fails naming wf-vm01, and sm-02 is not held back."""
    try:
        cluster.deploy(MANIFEST, "pools")  # also when run on its own
        cluster.deploy(MANIFEST, "build")
        (disk,) = cluster.files("sm-01", "wf-vm01-vda*")
        cluster.ssh("sm-01", f"rm -f {disk}")
        result = cluster.deploy(MANIFEST, "start", expect_ok=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert re.search(r"sm-01\S*\s+kvm-qemu: start of wf-vm01 failed \(exit \d+\)", output), output[-3000:]
        assert "start of wf-vm02 failed" not in output
        sm01 = cluster.domains("sm-01")
        assert (sm01["wf-vm01"], sm01["wf-vm02"]) == ("shut off", "running")
        assert cluster.domains("sm-02")["wf-vm03"] == "running"
    finally:
        cluster.deploy(MANIFEST, "delete", expect_ok=False)
