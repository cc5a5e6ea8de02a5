"""The sandbox guest image: pure parts, plus booting it under qemu directly (integration)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from sandbox import guest_image as gi
from sandbox.proc import SandboxError

# --- pure parts -------------------------------------------------------------------------------------------

APT_DEPENDS = """linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
"""


def test_parse_depends_takes_the_one_versioned_kernel():
    assert gi.parse_depends(APT_DEPENDS) == "linux-image-6.1.0-56-cloud-amd64"


@pytest.mark.parametrize(
    "text",
    [
        "linux-image-cloud-amd64\n",
        "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-55-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n",
        "linux-image-cloud-amd64\n  Depends: <linux-image-*-cloud-amd64>\n",
    ],
)
def test_parse_depends_refuses_none_or_several(text):
    with pytest.raises(SandboxError, match="linux-image-cloud-amd64"):
        gi.parse_depends(text)


MODULE_PATHS = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
]
# modprobe ends every line with a blank.
SHOW_DEPENDS = "".join(f"insmod /c/lib/modules/K/{rel} \n" for rel in MODULE_PATHS)


def test_parse_show_depends_keeps_load_order_relative_to_the_module_dir():
    assert gi.parse_show_depends(SHOW_DEPENDS, Path("/c/lib/modules/K")) == MODULE_PATHS


def test_parse_show_depends_skips_builtin_and_duplicates():
    text = "builtin ext4\n" + SHOW_DEPENDS + SHOW_DEPENDS.splitlines()[0] + "\n"
    assert len(gi.parse_show_depends(text, Path("/c/lib/modules/K"))) == 5


def test_parse_show_depends_refuses_modules_from_elsewhere():
    with pytest.raises(SandboxError, match="outside"):
        gi.parse_show_depends("insmod /lib/modules/K/kernel/x.ko\n", Path("/c/lib/modules/K"))


LDD = """	linux-vdso.so.1 (0x00007fcde7210000)
	libcrypt.so.1 => /lib/x86_64-linux-gnu/libcrypt.so.1 (0x00007fcde7088000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fcde661e000)
	/lib64/ld-linux-x86-64.so.2 (0x00007fcde7212000)
"""


def test_parse_ldd_lists_libraries_and_the_loader_but_not_the_vdso():
    assert gi.parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libcrypt.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_fails_on_a_missing_library():
    with pytest.raises(SandboxError, match="libfoo"):
        gi.parse_ldd("\tlibfoo.so.1 => not found\n")


def _read_newc(raw: bytes) -> list[tuple[str, int, bytes]]:
    entries, pos = [], 0
    while True:
        assert raw[pos : pos + 6] == b"070701"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = raw[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = raw[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, data))


def test_cpio_archive_is_newc_with_parents_first(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "etc" / "passwd").chmod(0o644)
    (tree / "sh").symlink_to("/bin/busybox")
    out = tmp_path / "initrd.img"
    gi.write_cpio(gi.cpio_entries(tree), out)
    entries = _read_newc(gzip.decompress(out.read_bytes()))
    assert [(name, oct(mode)) for name, mode, _ in entries] == [
        (".", "0o40755"),
        ("etc", oct(0o40000 | ((tree / "etc").stat().st_mode & 0o7777))),
        ("sh", "0o120777"),
        ("etc/passwd", "0o100644"),
    ]
    assert dict((n, d) for n, _, d in entries)["sh"] == b"/bin/busybox"
    assert dict((n, d) for n, _, d in entries)["etc/passwd"] == b"root:x:0:0::/root:/bin/sh\n"


def test_sshd_config_defines_sftp_once_and_only_key_login_for_root():
    lines = gi.SSHD_CONFIG.splitlines()
    assert sum(1 for line in lines if line.split()[:2] == ["Subsystem", "sftp"]) == 1
    assert "PermitRootLogin prohibit-password" in lines
    assert "PasswordAuthentication no" in lines
    assert "AuthorizedKeysFile /root/.ssh/authorized_keys" in lines


def test_init_scripts_cover_hostname_dhcp_acpi_and_readiness():
    rcs = gi.RCS
    assert "hostname -F /etc/hostname" in rcs
    assert "acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid" in rcs
    assert "udhcpc -b -i eth0 -s /etc/kvmq/dhcp.sh" in rcs
    assert f'kvmq.clientid=shared) set -- "$@" -x "61:{gi.SHARED_CLIENT_ID}"' in rcs
    # The offered name applies only when the VM's own disk has no /etc/hostname.
    assert 'if [ ! -s /etc/hostname ] && [ ! -s /run/kvmq/seed-hostname ] && [ -n "$hostname" ]; then' in (
        gi.DHCP_SCRIPT
    )
    assert gi.DHCP_SCRIPT.count("KVMQ-READY") == 1 and "mkdir /run/kvmq/ready" in gi.DHCP_SCRIPT
    assert gi.POWER_BUTTON.index("sync") < gi.POWER_BUTTON.index("poweroff -f")
    stage1 = gi.STAGE1.read_text()
    assert "switch_root /newroot /sbin/init" in stage1 and "insmod" in stage1


def test_init_scripts_are_valid_shell(tmp_path):
    for name, text in [("rcS", gi.RCS), ("dhcp", gi.DHCP_SCRIPT), ("pwr", gi.POWER_BUTTON)]:
        script = tmp_path / name
        script.write_text(text)
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0, name
    assert subprocess.run(["sh", "-n", str(gi.STAGE1)]).returncode == 0


def test_cache_key_follows_every_input():
    base = {"kernel_package": "linux-image-6.1.0-56-cloud-amd64", "busybox": "1", "scripts": "a"}
    assert gi.cache_key(base) == gi.cache_key(dict(base))
    for field in base:
        assert gi.cache_key({**base, field: base[field] + "x"}) != gi.cache_key(base)


def test_cmdline_with_shared_client_id_and_bad_value():
    image = gi.GuestImage(Path("/c"), Path("/c/k"), Path("/c/i"), gi.CMDLINE, "K", Path("/c/t"), "k")
    assert image.cmdline_with() == gi.CMDLINE
    assert image.cmdline_with("shared").endswith(" kvmq.clientid=shared")
    with pytest.raises(ValueError, match="clientid"):
        image.cmdline_with("01:02")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"authorized_key": ""}, "authorized_key"),
        ({"authorized_key": "ssh-ed25519 AAA a\nssh-ed25519 BBB b"}, "authorized_key"),
        ({"data_mib": 2048, "size_gib": 1}, "data_mib"),
        ({"hostname": "bad name"}, "hostname"),
    ],
)
def test_make_rootfs_refuses_bad_input_and_writes_nothing(tmp_path, kwargs, field):
    image = gi.GuestImage(tmp_path, tmp_path / "k", tmp_path / "i", gi.CMDLINE, "K", tmp_path / "t", "k")
    args = {"authorized_key": "ssh-ed25519 AAAA x", "data_mib": 0, "size_gib": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        gi.make_rootfs(tmp_path / "disk.img", image, **args)
    assert not (tmp_path / "disk.img").exists()


# --- integration: boot the guest under qemu directly, on a bridge inside a private network namespace ----

# Per process, so two runs never share (or delete) each other's namespace.
def test_debugfs_script_replaces_files_and_refuses_odd_paths(tmp_path):
    script = gi.debugfs_script({"/root/.ssh/authorized_keys": tmp_path / "k"})
    assert script == f"rm /root/.ssh/authorized_keys\nwrite {tmp_path}/k /root/.ssh/authorized_keys\n"
    with pytest.raises(SandboxError, match="plain path"):
        gi.debugfs_script({"/etc/a b": tmp_path / "k"})


def _fake_image(tmp_path: Path) -> gi.GuestImage:
    tree = tmp_path / "img" / "tree"
    for d in ("etc/ssh", "root", "sbin"):
        (tree / d).mkdir(parents=True)
    (tree / "root").chmod(0o700)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return gi.GuestImage(tmp_path / "img", tmp_path / "k", tmp_path / "i", gi.CMDLINE, "K", tree, "img")


def _debugfs(disk: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(disk)], capture_output=True, text=True).stdout


def test_make_rootfs_puts_keys_and_hostname_on_a_copy_of_the_cached_disk(tmp_path):
    image = _fake_image(tmp_path)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmqTestKey sandbox"
    disk = tmp_path / "vda.img"
    host_pub = gi.make_rootfs(disk, image, key + "\n", data_mib=3, size_gib=1, hostname="base.example")
    base = image.directory / "rootfs-3m-1g.img"
    base_sum = subprocess.run(["sha256sum", str(base)], capture_output=True, text=True).stdout.split()[0]

    assert disk.stat().st_size == 1 << 30 and disk.stat().st_blocks * 512 < 64 << 20  # sparse
    assert _debugfs(disk, "cat /root/.ssh/authorized_keys") == key + "\n"
    assert "Mode:  0600" in _debugfs(disk, "stat /root/.ssh/authorized_keys")
    assert "Mode:  0700" in _debugfs(disk, "stat /root/.ssh")
    assert "Mode:  0600" in _debugfs(disk, "stat /etc/ssh/ssh_host_ed25519_key")
    assert _debugfs(disk, "cat /etc/ssh/ssh_host_ed25519_key.pub").strip() == host_pub
    assert _debugfs(disk, "cat /etc/hostname") == "base.example\n"
    assert "Size: 3145728" in _debugfs(disk, "stat /data.bin")
    assert subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True).returncode == 0
    # The cached disk holds no key and no hostname, and a second disk reuses it unchanged.
    assert _debugfs(base, "cat /root/.ssh/authorized_keys") == ""
    assert _debugfs(base, "cat /etc/hostname") == ""
    other_pub = gi.make_rootfs(tmp_path / "vdb.img", image, key, data_mib=3, size_gib=1)
    assert other_pub != host_pub
    assert _debugfs(tmp_path / "vdb.img", "cat /etc/hostname") == ""
    assert (
        subprocess.run(["sha256sum", str(base)], capture_output=True, text=True).stdout.split()[0] == base_sum
    )


def test_prune_keeps_the_newest_other_build_and_the_kernels_in_use(tmp_path):
    kernel = tmp_path / "kernel"
    for name in ("linux-image-A_1", "linux-image-B_2", "linux-image-C_3"):
        (kernel / name).mkdir(parents=True)
    (tmp_path / "debs").mkdir()
    for name in ("linux-image-A_1_amd64.deb", "linux-image-C_3_amd64.deb"):
        (tmp_path / "debs" / name).write_text("")
    builds = {
        "000000000000000a": "linux-image-A",
        "000000000000000b": "linux-image-B",
        "000000000000000c": None,
    }
    for age, (key, package) in enumerate(builds.items()):
        (tmp_path / key).mkdir()
        if package:
            inputs = {
                "kernel_package": package,
                "kernel_version": package[-1].replace("A", "1").replace("B", "2"),
            }
            (tmp_path / key / "image.json").write_text(json.dumps({"inputs": inputs}))
        os.utime(tmp_path / key, (1000 - age, 1000 - age))
    gi._prune(tmp_path, keep_image="000000000000000c", keep_kernel=kernel / "linux-image-C_3")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000000000a",
        "000000000000000c",
        "debs",
        "kernel",
    ]
    assert sorted(p.name for p in kernel.iterdir()) == ["linux-image-A_1", "linux-image-C_3"]
    assert sorted(p.name for p in (tmp_path / "debs").iterdir()) == [
        "linux-image-A_1_amd64.deb",
        "linux-image-C_3_amd64.deb",
    ]


def test_install_copies_kernel_and_initrd_once_and_replaces_stale_copies(tmp_path):
    (tmp_path / "k").write_bytes(b"kernel")
    (tmp_path / "i").write_bytes(b"initrd")
    image = gi.GuestImage(tmp_path, tmp_path / "k", tmp_path / "i", gi.CMDLINE, "K", tmp_path / "t", "k")
    dest = tmp_path / "secondary"
    placed = gi.install(image, dest)
    assert placed.kernel.read_bytes() == b"kernel" and placed.initrd.read_bytes() == b"initrd"
    assert placed.cmdline == image.cmdline and placed.kernel.parent == dest
    inode = placed.kernel.stat().st_ino
    assert gi.install(image, dest).kernel.stat().st_ino == inode  # unchanged: not rewritten
    (tmp_path / "i").write_bytes(b"initrd2")
    assert gi.install(image, dest).initrd.read_bytes() == b"initrd2"
