"""Installer VM XML and plans, and the virt-sysprep step of a clean clone: pure functions, rendered
commands, no host."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from inventories.manifest_model import ManifestError, parse
from operations.util.clone_plan import clone_plan
from operations.util.installer_plan import InstallerError, InstallerSpec, installer_plan, installer_xml
from tests.unit.command_text import rendered
from tests.unit.fact_builders import URI, host_state
from tests.unit.vmspec_builders import kvmhost01 as spec

ISO = {"secondary": {"CentOS 7.iso": {"path": "/secondary/CentOS 7.iso", "format": "iso"}}}


def installer(**overrides: Any) -> InstallerSpec:
    values: dict[str, Any] = dict(vm="centos7b", iso="CentOS 7.iso", iso_pool="secondary", pool="secondary")
    values.update(overrides)
    return InstallerSpec(**values)


def test_uefi_installer_xml_autoselects_ovmf_without_secure_boot_and_boots_disk_then_cdrom() -> None:
    root = ET.fromstring(installer_xml(installer(), "/secondary/centos7b-vda.img", "/secondary/CentOS 7.iso"))
    os_element = root.find("os")
    assert os_element is not None and os_element.get("firmware") == "efi"
    feature = os_element.find("./firmware/feature")
    assert feature is not None and feature.attrib == {"enabled": "no", "name": "secure-boot"}
    # No fixed loader or NVRAM path: libvirt picks the firmware and makes the domain's own NVRAM.
    assert os_element.find("loader") is None and os_element.find("nvram") is None
    disk, cdrom = root.findall("./devices/disk")
    assert disk.find("source").get("file") == "/secondary/centos7b-vda.img"  # type: ignore[union-attr]
    assert disk.find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert cdrom.get("device") == "cdrom" and cdrom.find("readonly") is not None
    assert cdrom.find("source").get("file") == "/secondary/CentOS 7.iso"  # type: ignore[union-attr]
    assert cdrom.find("boot").get("order") == "2"  # type: ignore[union-attr]
    log = root.find("./devices/serial/log")
    assert log is not None and log.get("file") == "/var/log/libvirt/qemu/centos7b-console.log"
    assert root.find("./devices/console") is not None
    graphics = root.findall("./devices/graphics")
    assert len(graphics) == 1 and graphics[0].get("listen") == "127.0.0.1"
    assert [e.attrib for e in graphics[0].findall("listen")] == [{"type": "address", "address": "127.0.0.1"}]
    assert root.find("./devices/interface/source").get("bridge") == "br0"  # type: ignore[union-attr]


def test_bios_installer_without_graphics_console_or_nic() -> None:
    xml = installer_xml(
        installer(uefi=False, graphics="none", console=False, bridge=""), "/d/x-vda.img", "/d/x.iso"
    )
    root = ET.fromstring(xml)
    assert root.find("os").get("firmware") is None  # type: ignore[union-attr]
    assert root.find("./os/firmware") is None
    for tag in ("graphics", "video", "serial", "console", "interface"):
        assert root.find(f"./devices/{tag}") is None, tag


def test_installer_plan_creates_the_disk_exclusively_then_defines_and_starts() -> None:
    plan = installer_plan(installer(boot_size_gib=80), host_state(volumes=ISO), URI)
    assert plan is not None and plan.error is None and plan.stdin
    text = rendered(plan.command)
    assert "umask 077" in text and "set -C" in text  # a new 0600 file, no link followed
    assert "truncate -s 80G -- ./centos7b-vda.img" in text
    assert text.index("truncate") < text.index("define /dev/stdin") < text.index("start centos7b")
    assert "undefine --nvram centos7b" in text  # a failed start leaves nothing defined
    assert "'/secondary/CentOS 7.iso'" not in text  # the ISO path travels in the XML on stdin only
    assert "/secondary/CentOS 7.iso" in plan.stdin
    assert "80 GiB" in plan.summary() and "UEFI" in plan.summary()
    assert subprocess.run(["sh", "-n", "-c", plan.command.get_raw_value()], check=False).returncode == 0


def test_installer_is_made_once_and_refuses_missing_pool_or_iso() -> None:
    existing = host_state(domains={"centos7b": {"state": "shut off"}}, volumes=ISO)
    assert installer_plan(installer(), existing, URI) is None
    plan = installer_plan(installer(iso="nope.iso"), host_state(volumes=ISO), URI)
    assert plan is not None and plan.command is None
    assert (
        plan.error == "ISO nope.iso is not a volume of pool secondary on this host (copy it into /secondary)"
    )
    plan = installer_plan(installer(pool="fast"), host_state(volumes=ISO), URI)
    assert plan is not None and plan.error and "storage pool fast is not defined" in plan.error


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"vm": "-x"}, "installer_name"),
        ({"iso": "../etc/shadow"}, "installer_iso"),
        ({"pool": ""}, "installer_pool"),
        ({"boot_size_gib": 0}, "installer_boot_size_gib"),
        ({"vcpus": True}, "installer_vcpus"),
        ({"graphics": "spice"}, "installer_graphics"),
        ({"domain_type": "xen"}, "installer_domain_type"),
        ({"bridge": "br0; reboot"}, "installer_bridge"),
    ],
)
def test_installer_settings_are_checked_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(InstallerError, match=f"^{key}="):
        installer(**overrides).check()


# --- clean clones ----------------------------------------------------------------------------------


def test_sysprep_checks_the_tool_first_then_runs_after_the_copy_and_before_the_define() -> None:
    plan = clone_plan(spec(sysprep=True, hostname="kvm host'01.chnet.internal"), host_state(), URI)
    assert plan.error is None and plan.command is not None
    raw = plan.command.get_raw_value()
    text = rendered(plan.command)
    assert raw.startswith("command -v virt-sysprep >/dev/null 2>&1 || {")
    assert "$(uname -n): virt-sysprep is not installed" in raw
    assert text.index("cp --sparse=always") < text.index("virt-sysprep -q") < text.index("define /dev/stdin")
    assert (
        "virt-sysprep -q --format raw -a ./kvmhost01-vda.img --operations "
        "dhcp-client-state,dhcp-server-state,logfiles,machine-id,net-hwaddr,ssh-hostkeys,"
        "udev-persistent-net,customize --hostname 'kvm host'\"'\"'01.chnet.internal' --firstboot-command"
    ) in text
    assert "kvmhost01-vdb" not in text.split("virt-sysprep -q", 1)[1].split("--operations")[0]  # data disks
    assert "virt-sysprep (hostname kvm host'01.chnet.internal)" in plan.summary()
    assert subprocess.run(["sh", "-n", "-c", raw], check=False).returncode == 0


def test_without_sysprep_no_virt_sysprep() -> None:
    for value in (None, False):
        plan = clone_plan(spec(sysprep=value), host_state(), URI)
        assert "virt-sysprep" not in plan.command.get_raw_value()  # type: ignore[union-attr]


def test_missing_tool_fails_before_any_file_is_made(tmp_path: Any) -> None:
    """The rendered check, run by a real shell with no virt-sysprep on PATH: exit 1, nothing created."""
    plan = clone_plan(spec(sysprep=True), host_state(), URI)
    raw = plan.command.get_raw_value()  # type: ignore[union-attr]
    check = raw.split("exit 1; };", 1)[0] + "exit 1; }; : > made"
    result = subprocess.run(
        ["/bin/sh", "-c", check], cwd=tmp_path, env={"PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 1 and not (tmp_path / "made").exists()
    assert "virt-sysprep is not installed" in result.stderr and "kvmhost01 refused" in result.stderr


def test_manifest_sysprep_must_be_a_boolean() -> None:
    vm = {"name": "a1", "hostname": "a1.x.y", "ipaddress": "10.0.0.5", "vcpus": 1, "memoryGb": 1,
          "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0, "srcvm": "base"}  # fmt: skip
    assert parse([{"host": "h1", "vmspecs": [{**vm, "sysprep": True}]}])[0].vmspecs[0].sysprep is True
    assert parse([{"host": "h1", "vmspecs": [vm]}])[0].vmspecs[0].sysprep is None
    with pytest.raises(ManifestError, match="sysprep"):
        parse([{"host": "h1", "vmspecs": [{**vm, "sysprep": "yes"}]}])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "installer_iso is required"),
        (["installer_iso=x.iso", "installer_host=nope"], "installer_host='nope': not a hypervisor"),
        (["installer_iso=x.iso", "installer_boot_size_gib=abc"], "installer_boot_size_gib='abc': expected"),
        (["installer_iso=x.iso", "uefi=maybe"], "uefi='maybe': expected true or false"),
        (["installer_iso=x.iso", "installer_graphics=spice"], "installer_graphics='spice'"),
    ],
)
def test_installer_deploy_refuses_bad_data_before_contacting_libvirt(
    tmp_path: Any, data: list[str], message: str
) -> None:
    repo = Path(__file__).resolve().parents[2]
    inventory = tmp_path / "inventory.py"
    inventory.write_text('kvm_hosts = [("@local", {})]\n')
    extra = [x for d in data for x in ("--data", d)]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "--dry", str(inventory), "deploys/installer.py", *extra],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Hypervisor" not in result.stdout + result.stderr
