"""The sandbox cluster behaves like separate machines: own libvirt per host, shared /secondary,
working VMs, a real dnsmasq on the management node, and SSH-reachable guest stand-ins."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import dns.resolver
import paramiko
import pytest

import sandbox
from sandbox import cluster, network, proc

pytestmark = pytest.mark.integration

VIRSH = "virsh -c qemu:///system"


def ssh(data: dict, command: str, *, stdin: str | None = None, check: bool = True) -> str:
    """Run a shell command on a sandbox node with the OpenSSH client and the inventory's data."""
    argv = [
        "ssh",
        "-i",
        data["ssh_key"],
        "-p",
        str(data["ssh_port"]),
        "-o",
        f"UserKnownHostsFile={data['ssh_known_hosts_file']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{data['ssh_user']}@{data['ssh_hostname']}",
        command,
    ]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"{command!r} failed on {data['ssh_hostname']}: {result.stderr}"
    return result.stdout


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sm01(sandbox_cluster: dict) -> dict:
    return sandbox_cluster["hosts"]["sm-01"]


@pytest.fixture(scope="module")
def sm02(sandbox_cluster: dict) -> dict:
    return sandbox_cluster["hosts"]["sm-02"]


@pytest.fixture(scope="module")
def mgmt(sandbox_cluster: dict) -> dict:
    return sandbox_cluster["mgmt"]["data"]


def test_inventory_shape(sandbox_cluster: dict) -> None:
    assert list(sandbox_cluster["hosts"]) == ["sm-01", "sm-02"]
    assert sandbox_cluster["mgmt"]["name"] == "mgmt-01"
    assert sandbox_cluster["mgmt"]["data"]["ssh_hostname"] == "127.0.2.1"
    for index, data in enumerate(sandbox_cluster["hosts"].values(), start=1):
        assert data["ssh_hostname"] == f"127.0.1.{index}"
        assert data["ssh_port"] == 22 and data["ssh_user"] == "root"
        assert data["ssh_strict_host_key_checking"] == "yes"


def test_up_again_is_idempotent_and_refuses_another_size(sandbox_cluster: dict) -> None:
    assert sandbox.up(hosts=2)["hosts"] == sandbox_cluster["hosts"]
    with pytest.raises(sandbox.SandboxError, match="already up"):
        sandbox.up(hosts=3)


def test_status_reports_libvirt_and_accelerator(sandbox_cluster: dict) -> None:
    report = sandbox.status()
    assert report["up"] is True
    assert report["accelerator"] in ("KVM", "TCG")
    for info in report["hosts"].values():
        assert all(info["alive"].values())
        assert info["libvirt"]["libvirt"].count(".") == 2
        assert info["libvirt"]["hypervisor"].startswith("QEMU")


def test_paramiko_connects_with_strict_host_keys(sandbox_cluster: dict) -> None:
    # pyinfra's SSH connector is paramiko: the key type and known_hosts format must suit it.
    nodes = [*sandbox_cluster["hosts"].values(), sandbox_cluster["mgmt"]["data"]]
    for data in nodes:
        client = paramiko.SSHClient()
        client.load_host_keys(data["ssh_known_hosts_file"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            data["ssh_hostname"],
            port=data["ssh_port"],
            username=data["ssh_user"],
            key_filename=data["ssh_key"],
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        try:
            _, stdout, _ = client.exec_command("python3 -c 'import libvirt; print(libvirt.getVersion())'")
            assert stdout.channel.recv_exit_status() == 0
            assert int(stdout.read()) > 0
        finally:
            client.close()


def test_hosts_are_independent(sm01: dict, sm02: dict) -> None:
    pool = unique("itest-pool")
    # A directory of its own: a workflow test may have defined the pool "default" on /data01/primary.
    ssh(sm01, f"{VIRSH} pool-define-as {pool} dir --target /data01/{pool}")
    try:
        assert pool in ssh(sm01, f"{VIRSH} pool-list --all --name").split()
        assert pool not in ssh(sm02, f"{VIRSH} pool-list --all --name").split()
    finally:
        ssh(sm01, f"{VIRSH} pool-undefine {pool}")
    assert ssh(sm01, "hostname").strip() == "sm-01"
    assert ssh(sm02, "hostname").strip() == "sm-02"


def test_primary_is_private_and_secondary_shared(sm01: dict, sm02: dict) -> None:
    name = unique("itest-file")
    ssh(sm01, f"echo shared > /secondary/{name} && echo private > /data01/primary/{name}")
    try:
        assert ssh(sm02, f"cat /secondary/{name}").strip() == "shared"
        assert ssh(sm02, f"test -e /data01/primary/{name} || echo absent").strip() == "absent"
    finally:
        ssh(sm01, f"rm -f /secondary/{name} /data01/primary/{name}")


def test_base_vm_is_defined_on_every_host(sandbox_cluster: dict) -> None:
    for data in sandbox_cluster["hosts"].values():
        xml = ET.fromstring(ssh(data, f"{VIRSH} dumpxml centos7"))
        assert xml.get("type") == sandbox.status()["virt_type"]
        assert xml.find("devices/disk/source").get("file") == "/secondary/centos7-vda.img"
        assert xml.find("devices/interface").get("type") == "bridge"
        assert xml.find("devices/interface/source").get("bridge") == network.BRIDGE
        assert xml.find("devices/interface/mac").get("address") == "52:54:00:00:00:01"
        assert xml.find("devices/graphics") is None
        # Direct kernel boot from the shared directory, root file system on vda.
        assert xml.findtext("os/kernel") == "/secondary/guest-vmlinuz"
        assert xml.findtext("os/initrd") == "/secondary/guest-initrd.img"
        assert "root=/dev/vda" in xml.findtext("os/cmdline")
        serial = xml.find("devices/serial")
        assert serial.get("type") == "file"
        assert serial.find("source").get("path") == "/var/log/libvirt/qemu/centos7-console.log"
        twin = ET.fromstring(ssh(data, f"{VIRSH} dumpxml centos7-shared-id"))
        assert "kvmq.clientid=shared" in twin.findtext("os/cmdline")
        assert twin.find("devices/disk/source").get("file") == "/secondary/centos7-vda.img"


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_cluster_network_lives_in_its_own_namespace(sandbox_cluster: dict) -> None:
    # Never an address or route of the cluster network in the root namespace.
    assert network.addresses_in_root_namespace() == []
    inside = subprocess.run(
        ["ip", "-n", network.NETNS, "-4", "-o", "address", "show", "dev", network.BRIDGE],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"inet {network.MGMT_IP}/24" in inside
    cluster_ns = f"net:[{os.stat(network.netns_path()).st_ino}]"
    state = cluster.snapshot()
    for name in sandbox_cluster["hosts"]:
        libvirtd = state["nodes"][name]["daemons"]["libvirtd"][0]
        sshd = state["nodes"][name]["daemons"]["sshd"][0]
        assert _netns_of(libvirtd) == cluster_ns  # VM taps land on the bridge
        assert _netns_of(sshd) == _netns_of(os.getpid())  # reached on loopback
    assert _netns_of(state["nodes"]["mgmt-01"]["daemons"]["dnsmasq"][0]) == cluster_ns


def _clone_xml(base_xml: str, name: str, disk: str) -> str:
    domain = ET.fromstring(base_xml)
    domain.find("name").text = name
    domain.find("uuid").text = str(uuid.uuid4())
    domain.find("devices/disk/source").set("file", disk)
    domain.find("devices/interface/mac").set("address", "52:54:00:7e:57:01")
    for source in domain.findall("devices/serial/source") + domain.findall("devices/console/source"):
        source.set("path", f"/var/log/libvirt/qemu/{name}-console.log")
    # Room to balloon up: maximum 2 GiB, starting at 1 GiB.
    domain.find("memory").attrib, domain.find("memory").text = {"unit": "KiB"}, str(2 << 20)
    domain.find("currentMemory").attrib, domain.find("currentMemory").text = {"unit": "KiB"}, str(1 << 20)
    return ET.tostring(domain, encoding="unicode")


def test_cloned_vm_starts_and_balloons(sm02: dict) -> None:
    name = unique("itest-vm")
    disk = f"/data01/primary/{name}.img"
    ssh(sm02, f"cp --sparse=always /secondary/centos7-vda.img {disk}")
    try:
        ssh(
            sm02,
            f"{VIRSH} define /dev/stdin",
            stdin=_clone_xml(ssh(sm02, f"{VIRSH} dumpxml centos7"), name, disk),
        )
        ssh(sm02, f"{VIRSH} start {name}")
        assert ssh(sm02, f"{VIRSH} domstate {name}").strip() == "running"
        assert (
            ssh(sm02, f"pgrep -f 'guest={name},' >/dev/null && echo qemu-running").strip() == "qemu-running"
        )
        ssh(sm02, f"{VIRSH} setmem {name} 1572864 --live")
    finally:
        ssh(sm02, f"{VIRSH} destroy {name}; {VIRSH} undefine {name}; rm -f {disk}", check=False)


def test_dnsmasq_answers_names_after_sighup(mgmt: dict) -> None:
    name = unique("itest-host")
    hosts_file = "/etc/kvm-qemu/dnsmasq/hosts"
    reload = "kill -HUP $(cat /run/dnsmasq/dnsmasq.pid)"
    ssh(mgmt, f"echo '127.0.3.201 {name}' >> {hosts_file} && {reload}")
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.2.1"]
        resolver.lifetime = 2
        deadline = time.monotonic() + 5
        while True:
            try:
                answer = resolver.resolve(f"{name}.sandbox.internal", "A")
                break
            except dns.resolver.NXDOMAIN:
                # SIGHUP is handled asynchronously; give dnsmasq a moment to re-read the file.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert [r.address for r in answer] == ["127.0.3.201"]
    finally:
        ssh(mgmt, f"sed -i '/ {name}$/d' {hosts_file} && {reload}")


def test_mgmt_files_are_private(mgmt: dict) -> None:
    # The real machine has no sandbox entries; the management node's copy does after writes.
    assert ssh(mgmt, "test -f /etc/kvm-qemu/dnsmasq/dhcp-hosts && echo ok").strip() == "ok"
    # Written by deploys/mgmt_server.py from the sandbox's data: the bridge address, DHCP on.
    conf = ssh(mgmt, "cat /etc/dnsmasq.conf")
    assert "# Managed by kvm-qemu (deploys/mgmt_server.py)" in conf
    assert f"listen-address={network.MGMT_IP}" in conf
    assert f"dhcp-range={network.DHCP_RANGE}" in conf
    assert "domain=sandbox.internal" in conf


def test_guest_stand_ins(sandbox_cluster: dict) -> None:
    if sandbox_cluster["guests"] or sandbox.status()["guests"]:
        pytest.skip("the reused sandbox already has guests; guests_down would remove them")
    guests = sandbox.guests_up({"itest-guest": "127.0.3.250"})
    try:
        data = guests["itest-guest"]
        assert cluster.state_dir().joinpath("inventory.json").read_text().count("127.0.3.250") == 1
        assert data["ssh_hostname"] == "127.0.3.250"
        # A fresh clone of the base VM still carries the base VM's hostname.
        assert ssh(data, "hostname; cat /etc/hostname").split() == ["centos7", "centos7"]
        ssh(data, "hostnamectl set-hostname itest-guest")
        assert ssh(data, "hostname; cat /etc/hostname").split() == ["itest-guest", "itest-guest"]
        assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != "itest-guest"
        recorded = cluster.snapshot()
    finally:
        sandbox.guests_down()
    guest = recorded["guests"]["itest-guest"]
    assert not proc.alive(guest["holder"], guest["holder_start"])
    assert not any(proc.alive(pid, started) for pid, started in guest["daemons"].values())
    assert sandbox.status()["guests"] == {}
