"""A base VM from an ISO on the sandbox: deploys/installer.py defines and starts an installer VM that
boots a bootable ISO (made here from the sandbox guest with xorriso + isolinux) from the secondary
pool as its cdrom, onto a new empty boot disk.

BIOS: the guest boots from the cdrom (no direct kernel boot in the domain, the boot disk is empty, and
the console shows the guest's boot line and its "no usable root disk" line). UEFI: defined with
firmware autoselection; once started it runs OVMF from a read-only pflash loader with its own NVRAM
(a full UEFI boot under TCG costs minutes, so the UEFI domain is checked to the firmware start). A
clone of the UEFI base gets its own NVRAM file, and delete removes it and keeps the base's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import client, cluster, guest_image

pytestmark = [pytest.mark.integration, pytest.mark.guests]

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
ISO = "kvmq-installer.iso"
ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
CLONE = "it-uefi-clone"
MANIFEST = [
    {"host": "sm-01", "vmspecs": []},
    {
        "host": "sm-02",
        "vmspecs": [
            {"name": CLONE, "hostname": f"{CLONE}.sandbox.internal", "ipaddress": "10.10.5.61", "vcpus": 1,
             "memoryGb": 1, "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0, "srcvm": "it-uefi",
             "clone": "linked"},
        ],
    },
]  # fmt: skip


def make_iso(out: Path, work: Path) -> None:
    """A BIOS-bootable ISO (El Torito, isolinux) holding the sandbox guest's kernel and initramfs."""
    image = guest_image.build()
    tree = work / "iso"
    (tree / "isolinux").mkdir(parents=True)
    shutil.copy(ISOLINUX, tree / "isolinux" / "isolinux.bin")
    shutil.copy(LDLINUX, tree / "isolinux" / "ldlinux.c32")
    shutil.copy(image.kernel, tree / "vmlinuz")
    shutil.copy(image.initrd, tree / "initrd.img")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        f"DEFAULT guest\nPROMPT 0\nTIMEOUT 1\nLABEL guest\n  KERNEL /vmlinuz\n"
        f"  APPEND initrd=/initrd.img {image.cmdline}\n"
    )
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V", "KVMQ_INSTALL",
         "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table", str(tree)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


class Run:
    def __init__(self, inventory: dict[str, Any], workdir: Path) -> None:
        self.inventory = inventory
        self.workdir = workdir
        (workdir / "manifest.json").write_text(json.dumps(MANIFEST))
        (workdir / "inventory.json").write_text(json.dumps(inventory))

    def host(self, name: str, command: str, check: bool = True) -> str:
        return client.ssh(client.node_data(self.inventory, name), command, check=check)

    def pyinfra(
        self,
        deploy: str,
        *data: str,
        dry: bool = False,
        ok: bool | None = True,
        manifest: str = "manifest.json",
    ) -> str:
        env = client.workflow_env(
            self.workdir / manifest, self.workdir / "inventory.json", self.inventory["mgmt"]["name"]
        )
        extra = [x for d in data for x in ("--data", d)]
        result = subprocess.run(
            [PYINFRA, *(["--dry"] if dry else ["-y"]), "inventories/manifest.py", f"deploys/{deploy}.py",
             "--data", f"xml_dir={self.workdir / 'xml'}", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        text = result.stdout + result.stderr
        if ok is not None:
            assert (result.returncode == 0) == ok, text[-4000:]
        return text

    def installer(self, *data: str, dry: bool = False, ok: bool = True) -> str:
        return self.pyinfra(
            "installer", f"installer_iso={ISO}", "installer_graphics=none", "installer_bridge=",
            f"installer_domain_type={self.domain_type}", "installer_boot_size_gib=1",
            "installer_memory_mib=512", "installer_vcpus=1", *data, dry=dry, ok=ok,
        )  # fmt: skip

    @property
    def domain_type(self) -> str:
        xml = self.host("sm-01", "virsh -q dumpxml centos7")
        return ET.fromstring(xml).get("type", "kvm")

    def xml(self, host: str, vm: str, inactive: bool = False) -> ET.Element:
        return ET.fromstring(self.host(host, f"virsh -q dumpxml {'--inactive ' if inactive else ''}{vm}"))

    def console(self, host: str, vm: str) -> str:
        return self.host(host, f"cat /var/log/libvirt/qemu/{vm}-console.log", check=False)


@pytest.fixture(scope="module")
def run(sandbox_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if not ISOLINUX.exists() or not LDLINUX.exists() or not shutil.which("xorriso"):
        pytest.skip("making a bootable ISO needs the Debian packages xorriso, isolinux and syslinux-common")
    r = Run(sandbox_cluster, tmp_path_factory.mktemp("installer"))
    iso = cluster.state_dir() / "secondary" / ISO
    make_iso(iso, r.workdir)
    pools_before = {h: r.host(h, "virsh -q pool-list --all --name").split() for h in ("sm-01", "sm-02")}
    r.pyinfra("pools")
    yield r
    r.pyinfra("delete", ok=None)
    if (r.workdir / "sysprep.json").exists():
        r.pyinfra("delete", ok=None, manifest="sysprep.json")
    for host in ("sm-01", "sm-02"):
        for vm in ("it-bios", "it-uefi", CLONE):
            r.host(host, f"virsh -q destroy {vm}; virsh -q undefine --nvram {vm}", check=False)
        for pool in ("default", "secondary"):
            if pool not in pools_before[host]:
                r.host(host, f"virsh -q pool-destroy {pool}; virsh -q pool-undefine {pool}", check=False)
    for name in ("it-bios-vda.img", "it-uefi-vda.img", ISO):
        (cluster.state_dir() / "secondary" / name).unlink(missing_ok=True)


def test_bios_installer_boots_the_iso_from_the_pool_onto_a_new_disk(run: Run) -> None:
    disk = cluster.state_dir() / "secondary" / "it-bios-vda.img"
    dry = run.installer("installer_name=it-bios", "uefi=false", dry=True)
    assert "it-bios: boot disk /secondary/it-bios-vda.img 1 GiB" in dry, dry
    assert "BIOS" in dry
    assert not disk.exists()
    assert "it-bios" not in run.host("sm-01", "virsh -q list --all --name")

    run.installer("installer_name=it-bios", "uefi=false")
    assert disk.stat().st_size == 1 << 30 and disk.stat().st_mode & 0o777 == 0o600
    xml = run.xml("sm-01", "it-bios")
    os_element = xml.find("os")
    assert os_element is not None and os_element.find("kernel") is None and os_element.find("loader") is None
    cdrom = xml.find("./devices/disk[@device='cdrom']/source")
    assert cdrom is not None and cdrom.get("file") == f"/secondary/{ISO}"
    graphics = xml.findall("./devices/graphics")
    assert graphics == []
    deadline = time.monotonic() + 180
    while guest_image.BOOTED_MARKER not in run.console("sm-01", "it-bios") and time.monotonic() < deadline:
        time.sleep(2)
    console = run.console("sm-01", "it-bios")
    assert guest_image.BOOTED_MARKER in console, console[-2000:]
    # The kernel came from the cdrom and found nothing to mount on the new, empty boot disk.
    assert "KVMQ-WARNING no usable root disk /dev/vda" in console, console[-2000:]

    again = run.installer("installer_name=it-bios", "uefi=false")
    assert "[sm-01]   No changes" in again, again[-3000:]
    run.host("sm-01", "virsh -q destroy it-bios")


def test_installer_refuses_an_iso_the_pool_does_not_hold_and_makes_nothing(run: Run) -> None:
    out = run.installer("installer_name=it-none", "installer_iso=missing.iso", ok=False)
    assert "ISO missing.iso is not a volume of pool secondary" in out, out
    assert not (cluster.state_dir() / "secondary" / "it-none-vda.img").exists()
    assert "it-none" not in run.host("sm-01", "virsh -q list --all --name")


def test_uefi_installer_gets_ovmf_and_its_own_nvram_and_clones_get_theirs(run: Run) -> None:
    run.installer("installer_name=it-uefi", "installer_host=sm-02")
    inactive = run.xml("sm-02", "it-uefi", inactive=True)
    assert inactive.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    live = run.xml("sm-02", "it-uefi")
    loader = live.find("./os/loader")
    nvram = live.find("./os/nvram")
    assert loader is not None and loader.get("type") == "pflash" and loader.get("readonly") == "yes"
    assert "OVMF_CODE" in (loader.text or "") or "edk2" in (loader.text or ""), loader.text
    assert nvram is not None and nvram.text and nvram.text.endswith("it-uefi_VARS.fd"), ET.tostring(nvram)
    run.host("sm-02", f"test -f {nvram.text}")
    run.host("sm-02", "virsh -q destroy it-uefi")

    # The original scripts' sequence: dumpxml, then define the base on every host, then clone it.
    run.pyinfra("dumpxml", "xml_domains=it-uefi")
    saved = run.workdir / "xml" / "sm-02" / "it-uefi.xml"
    assert saved.stat().st_mode & 0o777 == 0o600
    run.pyinfra("base_vm", f"xml={saved}")
    assert "it-uefi" in run.host("sm-01", "virsh -q list --all --name")
    run.pyinfra("build")
    clone_inactive = run.xml("sm-02", CLONE, inactive=True)
    assert clone_inactive.find("./os/nvram") is None or "it-uefi_VARS" not in (
        clone_inactive.findtext("./os/nvram") or ""
    )
    run.host("sm-02", f"virsh -q start {CLONE}")
    clone_nvram = run.xml("sm-02", CLONE).findtext("./os/nvram") or ""
    assert clone_nvram.endswith(f"{CLONE}_VARS.fd"), clone_nvram
    run.host("sm-02", f"test -f {clone_nvram}")
    run.pyinfra("delete")
    assert run.host("sm-02", f"test -e {clone_nvram} && echo left || echo gone").strip() == "gone"
    run.host("sm-02", f"test -f {nvram.text}")  # the base's NVRAM stays
    assert re.search(r"it-uefi\b", run.host("sm-02", "virsh -q list --all --name"))


def test_sysprep_without_virt_sysprep_fails_naming_host_and_tool_and_makes_nothing(run: Run) -> None:
    vm = {**MANIFEST[1]["vmspecs"][0], "name": "it-sysprep", "hostname": "it-sysprep.sandbox.internal",
          "ipaddress": "10.10.5.62", "srcvm": "centos7", "sysprep": True}  # fmt: skip
    (run.workdir / "sysprep.json").write_text(json.dumps([{"host": "sm-01", "vmspecs": [vm]}]))
    assert run.host("sm-01", "command -v virt-sysprep || echo absent").strip() == "absent"
    dry = run.pyinfra("build", dry=True, manifest="sysprep.json")
    assert "virt-sysprep (hostname it-sysprep.sandbox.internal)" in dry, dry[-3000:]
    out = run.pyinfra("build", ok=False, manifest="sysprep.json")
    assert (
        "kvm-qemu: sm-01: virt-sysprep is not installed (libguestfs-tools; deploys/kvm_host.py installs it "
        "with kvm_guestfs_tools=true): sysprep of it-sysprep refused, nothing was made"
    ) in out, out[-3000:]
    assert "it-sysprep" not in run.host("sm-01", "virsh -q list --all --name")
    assert run.host("sm-01", "ls /data01/primary/ | grep -c it-sysprep || true").strip() == "0"
    # Group data for vmspecs that do not say: the same refusal.
    del vm["sysprep"]
    (run.workdir / "sysprep.json").write_text(json.dumps([{"host": "sm-01", "vmspecs": [vm]}]))
    out = run.pyinfra("build", "sysprep=true", ok=False, manifest="sysprep.json")
    assert "sm-01: virt-sysprep is not installed" in out, out[-3000:]
    assert "it-sysprep" not in run.host("sm-01", "virsh -q list --all --name")
