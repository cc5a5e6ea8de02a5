"""Host setup deploys (kvm_host, nfs_server, nfs_client, mgmt_server) per distribution, no host contacted.

Each test describes hosts with ``SimHost`` (facts: distribution, packages, files, systemd...), loads
the real deploy file through ``plan()`` and asserts the exact operations and commands.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest

from deploys._settings import SettingError as HostDataError
from tests.unit.host_deploy_harness import Plan, SimHost, plan

FIXTURES = Path(__file__).parent / "fixtures" / "host_deploys"
DISTROS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "distributions.json").read_text())
DEBIAN_LIKE = ["debian12", "ubuntu2404", "popos2204"]
RHEL_LIKE = ["rocky9", "alma8", "rhel9", "centos_stream9"]
REPO = Path(__file__).resolve().parents[2]

APT_INSTALL = (
    'DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::="--force-confdef" '
    '-o Dpkg::Options::="--force-confold" install -o DPkg::Lock::Timeout=300'
)
DEBIAN_KVM = "qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients ovmf python3-libvirt virtinst"
RHEL_KVM = "qemu-kvm qemu-img libvirt-daemon-kvm libvirt-client edk2-ovmf python3-libvirt virt-install"
STOCK_QEMU_CONF = '# stock\n#vnc_listen = "0.0.0.0"\n#vnc_tls = 1\n#spice_listen = "0.0.0.0"\n'
STOCK_LIBVIRT_CONF = '#uri_default = "qemu:///session"\n'
STOCK_LIBVIRTD_CONF = (
    '#listen_tls = 0\n#listen_tcp = 1\n#unix_sock_group = "libvirt"\n#unix_sock_ro_perms = "0777"\n'
    '#unix_sock_rw_perms = "0770"\n#auth_tcp = "sasl"\n#key_file = "/etc/pki/libvirt/private/serverkey.pem"\n'
    '#cert_file = "/etc/pki/libvirt/servercert.pem"\n#ca_file = "/etc/pki/CA/cacert.pem"\n'
    '#tls_allowed_dn_list = ["DN1", "DN2"]\nlog_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
)
LIBVIRTD_DEFAULTS = {
    "listen_tcp": "0",
    "auth_tcp": '"sasl"',
    "listen_tls": "0",
    "unix_sock_group": '"libvirt"',
    "unix_sock_ro_perms": '"0777"',
    "unix_sock_rw_perms": '"0770"',
}

GROUPS = {"kvm_hosts": ["sm-01", "sm-02"], "mgmt": ["mgmt-01"]}
HOST_DATA: dict[str, dict[str, Any]] = {
    "sm-01": {"ssh_hostname": "10.0.0.11"},
    "sm-02": {"ssh_hostname": "10.0.0.12"},
    "mgmt-01": {"ssh_hostname": "10.0.0.2"},
}


def normalized(command: str) -> str:
    """pyinfra's sed edits carry a timestamped backup suffix; make it comparable."""
    return re.sub(r"\.\d{10}\b", ".TS", command)


def sed_edit(path: str, key: str, value: str) -> str:
    """The (normalized) command files.line runs to turn the stock ``#key = ...`` line into ours."""
    replace = f"{key} = {value}".replace("/", "\\/")
    return f"sed -E -i.TS 's/^#?[[:space:]]*{key}[[:space:]]*=.*$/{replace}/' {path} && rm -f {path}.TS"


def configured(text: str, settings: dict[str, str]) -> str:
    """``text`` after our line edits (what a first run leaves behind)."""
    for key, value in settings.items():
        text = re.sub(rf"(?m)^#?\s*{key}\s*=.*$", f"{key} = {value}", text)
    return text


def sim(distro: str, **kwargs: Any) -> SimHost:
    return SimHost(DISTROS[distro], **kwargs)


def hypervisor(distro: str, **kwargs: Any) -> SimHost:
    """A hypervisor with the distro's stock libvirt files, nothing installed or configured yet."""
    files = {
        "/etc/libvirt/qemu.conf": STOCK_QEMU_CONF,
        "/etc/libvirt/libvirt.conf": STOCK_LIBVIRT_CONF,
        "/etc/libvirt/libvirtd.conf": STOCK_LIBVIRTD_CONF,
    }
    files.update(kwargs.pop("files", {}))
    return SimHost(DISTROS[distro], files=files, **kwargs)


def kvm_plan(
    monkeypatch: pytest.MonkeyPatch,
    host: SimHost,
    data: dict[str, Any] | None = None,
    other: SimHost | None = None,
) -> Plan:
    sims = {"sm-01": host, "sm-02": other or hypervisor("debian12"), "mgmt-01": sim("debian12")}
    host_data = {name: dict(values) for name, values in HOST_DATA.items()}
    host_data["sm-01"].update(data or {})
    return plan("deploys/kvm_host.py", sims, host_data, GROUPS, monkeypatch=monkeypatch)


def converged_debian_hypervisor(first: Plan, distro: str = "debian12", **kwargs: Any) -> SimHost:
    """The state a first run leaves behind: packages installed, files written, services up."""
    listen = {"vnc_listen": '"127.0.0.1"', "spice_listen": '"127.0.0.1"'}
    files = {
        **first.uploads("sm-01"),
        "/etc/libvirt/qemu.conf": configured(STOCK_QEMU_CONF, listen),
        "/etc/libvirt/libvirt.conf": configured(STOCK_LIBVIRT_CONF, {"uri_default": '"qemu:///system"'}),
        "/etc/libvirt/libvirtd.conf": configured(STOCK_LIBVIRTD_CONF, LIBVIRTD_DEFAULTS),
    }
    return SimHost(
        DISTROS[distro],
        packages=set(DEBIAN_KVM.split()),
        files=files,
        dirs={"/etc/libvirt", "/data01/primary"},
        meta={"/data01/primary": {"group": "kvm", "mode": 711}},
        running={"libvirtd.service"},
        enabled={"libvirtd.service"},
        **kwargs,
    )


# --- kvm_host -----------------------------------------------------------------------------------


def test_kvm_host_debian_fresh_host_exact_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_users": ["alice"]})
    libvirtd = "/etc/libvirt/libvirtd.conf"
    qemu = "/etc/libvirt/qemu.conf"

    steps = [
        (step.name, [normalized(c) for c in step.commands], step.conditional)
        for step in result.steps["sm-01"]
    ]
    assert steps == [
        (
            "KVM host | Refresh apt package lists",
            ["apt-get update", "touch /var/lib/apt/periodic/update-success-stamp"],
            False,
        ),
        ("KVM host | Install KVM/libvirt packages", [f"{APT_INSTALL} {DEBIAN_KVM}"], False),
        (
            "KVM host | Add alice to libvirt, kvm, libvirt-qemu",
            ["useradd -d /home/alice -G libvirt,kvm,libvirt-qemu -m alice"],
            False,
        ),
        (
            "KVM host | Primary storage directory",
            ["mkdir -p /data01/primary", "chmod 711 /data01/primary", "chown root:kvm /data01/primary"],
            False,
        ),
        *[
            (f"KVM host | libvirtd.conf: {key} = {value}", [sed_edit(libvirtd, key, value)], False)
            for key, value in LIBVIRTD_DEFAULTS.items()
        ],
        (
            'KVM host | qemu.conf: vnc_listen = "127.0.0.1"',
            [sed_edit(qemu, "vnc_listen", '"127.0.0.1"')],
            False,
        ),
        (
            'KVM host | qemu.conf: spice_listen = "127.0.0.1"',
            [sed_edit(qemu, "spice_listen", '"127.0.0.1"')],
            False,
        ),
        (
            'KVM host | libvirt.conf: uri_default = "qemu:///system"',
            [sed_edit("/etc/libvirt/libvirt.conf", "uri_default", '"qemu:///system"')],
            False,
        ),
        ("KVM host | No sysctl settings: remove /etc/sysctl.d/90-kvm-qemu.conf", [], False),
        (
            "KVM host | libvirtd enabled and running",
            ["systemctl start libvirtd.service", "systemctl enable libvirtd.service"],
            False,
        ),
        ("KVM host | Restart libvirtd (configuration changed)", ["systemctl start libvirtd.service"], True),
    ]
    # Spelled out once, so the helper above is checked too.
    assert sed_edit(qemu, "vnc_listen", '"127.0.0.1"') == (
        "sed -E -i.TS 's/^#?[[:space:]]*vnc_listen[[:space:]]*=.*$/vnc_listen = \"127.0.0.1\"/' "
        "/etc/libvirt/qemu.conf && rm -f /etc/libvirt/qemu.conf.TS"
    )


def test_kvm_host_libvirtd_conf_is_secure_and_keeps_other_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12"))
    edits = [normalized(c) for c in result.commands("sm-01") if "libvirtd.conf" in c]
    # Only our keys are edited: the sandbox's (or an admin's) log_outputs line stays.
    assert edits == [sed_edit("/etc/libvirt/libvirtd.conf", k, v) for k, v in LIBVIRTD_DEFAULTS.items()]
    assert not any("log_outputs" in c or "auth_unix_rw" in c for c in result.commands("sm-01"))
    # The original scripts wrote listen_tcp = 1 with auth_tcp = "none" (TCP without authentication),
    # and a literal "{ libvirt_listen_tls }" (a template placeholder never filled in).
    for command in result.commands("sm-01"):
        assert 'auth_tcp = "none"' not in command and "listen_tcp = 1" not in command and "{" not in command


@pytest.mark.parametrize("distro", DEBIAN_LIKE)
def test_kvm_host_debian_family_uses_apt_and_libvirt_qemu_group(
    monkeypatch: pytest.MonkeyPatch, distro: str
) -> None:
    result = kvm_plan(monkeypatch, hypervisor(distro), {"kvm_users": ["alice"]})
    assert f"{APT_INSTALL} {DEBIAN_KVM}" in result.commands("sm-01")
    assert "useradd -d /home/alice -G libvirt,kvm,libvirt-qemu -m alice" in result.commands("sm-01")
    assert not any(command.startswith("dnf") for command in result.commands("sm-01"))


@pytest.mark.parametrize("distro", RHEL_LIKE)
def test_kvm_host_rhel_family_uses_dnf_and_no_libvirt_qemu_group(
    monkeypatch: pytest.MonkeyPatch, distro: str
) -> None:
    # /etc/apparmor.d present on purpose: AppArmor must still not be touched on RHEL (the original
    # scripts configured it there too).
    host = hypervisor(distro, dirs={"/etc/apparmor.d", "/sys/kernel/security/apparmor"})
    result = kvm_plan(monkeypatch, host, {"kvm_users": ["alice"]})
    commands = result.commands("sm-01")
    assert result.names("sm-01")[0] == "KVM host | Install KVM/libvirt packages"
    assert commands[0] == f"dnf install -y {RHEL_KVM}"
    assert "useradd -d /home/alice -G libvirt,kvm -m alice" in commands
    assert not any("libvirt-qemu" in command for command in commands)
    assert not any("apparmor" in name.lower() for name in result.names("sm-01"))
    assert not any(command.startswith("apt-get") for command in commands)


def test_kvm_host_libguestfs_tools_and_extra_packages_are_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"kvm_guestfs_tools": "true", "kvm_extra_packages": "virt-top,bridge-utils"}
    result = kvm_plan(monkeypatch, hypervisor("rocky9"), data)
    assert result.commands("sm-01")[0] == f"dnf install -y {RHEL_KVM} libguestfs-tools virt-top bridge-utils"


def test_kvm_host_no_update_when_packages_present(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12", packages=set(DEBIAN_KVM.split())))
    assert "KVM host | Refresh apt package lists" not in result.names("sm-01")
    assert result.step("sm-01", "KVM host | Install KVM/libvirt packages").commands == []


@pytest.mark.parametrize("distro", ["arch", "fedora40"])
def test_kvm_host_unsupported_distribution_fails_only_that_host(
    monkeypatch: pytest.MonkeyPatch, distro: str
) -> None:
    result = kvm_plan(monkeypatch, hypervisor(distro), other=hypervisor("debian12"))
    [step] = result.steps["sm-01"]
    assert step.name.startswith("KVM host | Unsupported distribution: ")
    [command] = step.commands
    assert command.startswith("echo 'kvm-qemu: unsupported distribution")
    assert command.endswith(">&2 && exit 1")
    assert "Debian/Ubuntu (apt) and RHEL/CentOS/Rocky/AlmaLinux (dnf)" in command
    # The other hypervisor is planned as usual.
    assert "KVM host | Install KVM/libvirt packages" in result.names("sm-02")


def test_kvm_host_only_runs_on_kvm_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12"))
    assert result.steps["mgmt-01"] == []


def test_kvm_host_existing_user_is_appended_to_groups_only_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = {
        "alice": {"home": "/home/alice", "shell": "/bin/bash", "group": "alice", "groups": ["sudo"]},
        "bob": {
            "home": "/srv/bob",
            "shell": "/bin/sh",
            "group": "bob",
            "groups": ["libvirt", "kvm", "libvirt-qemu"],
        },
    }
    result = kvm_plan(monkeypatch, hypervisor("debian12", users=users), {"kvm_users": ["alice", "bob"]})
    assert result.step("sm-01", "KVM host | Add alice to libvirt, kvm, libvirt-qemu").commands == [
        "usermod -a -G libvirt,kvm,libvirt-qemu alice"
    ]
    assert result.step("sm-01", "KVM host | Add bob to libvirt, kvm, libvirt-qemu").commands == []


def test_kvm_host_second_run_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    first = kvm_plan(monkeypatch, hypervisor("debian12"))
    second = kvm_plan(monkeypatch, converged_debian_hypervisor(first))
    # Only operations guarded by "did an earlier one change?" still list commands in a plan; at
    # execution they are skipped because nothing before them changed.
    assert [step.name for step in second.steps["sm-01"] if step.commands and not step.conditional] == []
    assert [step.name for step in second.steps["sm-01"] if step.conditional] == [
        "KVM host | Restart libvirtd (configuration changed)"
    ]


def test_kvm_host_without_systemd_skips_services(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    host = hypervisor("debian12", systemd=False, dirs={"/etc/apparmor.d"})
    with caplog.at_level(logging.WARNING):
        result = kvm_plan(monkeypatch, host)
    assert not any(command.startswith("systemctl") for command in result.commands("sm-01"))
    assert not any("Restart" in name or "enabled and running" in name for name in result.names("sm-01"))
    assert (
        "systemd is not running (no /run/systemd/system): libvirtd (and apparmor) not enabled" in caplog.text
    )
    # Configuration is still written.
    assert any("listen_tcp = 0" in command for command in result.commands("sm-01"))


def test_kvm_host_graphics_listen_override_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_graphics_listen": "192.0.2.10"})
    edits = [normalized(command) for command in result.commands("sm-01") if "_listen" in command]
    assert edits == [
        "sed -E -i.TS 's/^#?[[:space:]]*vnc_listen[[:space:]]*=.*$/vnc_listen = \"192.0.2.10\"/' "
        "/etc/libvirt/qemu.conf && rm -f /etc/libvirt/qemu.conf.TS",
        "sed -E -i.TS 's/^#?[[:space:]]*spice_listen[[:space:]]*=.*$/spice_listen = \"192.0.2.10\"/' "
        "/etc/libvirt/qemu.conf && rm -f /etc/libvirt/qemu.conf.TS",
    ]
    with pytest.raises(HostDataError, match="kvm_graphics_listen"):
        kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_graphics_listen": '0.0.0.0"; rm -rf /'})


def test_kvm_host_primary_storage_path_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_primary_storage": "/srv/vm/"})
    assert "mkdir -p /srv/vm" in result.commands("sm-01")
    for bad in ("relative/dir", "/data 01", "/x;reboot", "/a/../etc"):
        with pytest.raises(HostDataError, match="kvm_primary_storage"):
            kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_primary_storage": bad})


def test_kvm_host_tls_needs_certificate_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # The original scripts forced TLS on with empty certificate paths. Here it is refused before any change.
    with pytest.raises(HostDataError, match="libvirt_tls_cert"):
        kvm_plan(monkeypatch, hypervisor("debian12"), {"libvirt_listen_tls": True})


def test_kvm_host_tls_listener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data: dict[str, Any] = {"libvirt_listen_tls": "yes", "libvirt_tls_allowed_dn_list": ["CN=mgmt-01,O=lab"]}
    for key in ("libvirt_tls_cert", "libvirt_tls_key", "libvirt_tls_cacert"):
        (tmp_path / key).write_text(f"-----{key}-----\n")
        data[key] = str(tmp_path / key)
    result = kvm_plan(monkeypatch, hypervisor("debian12", running={"libvirtd.service"}), data)

    uploads = result.uploads("sm-01")
    assert uploads["/etc/pki/libvirt/servercert.pem"] == "-----libvirt_tls_cert-----\n"
    assert uploads["/etc/pki/libvirt/private/serverkey.pem"] == "-----libvirt_tls_key-----\n"
    assert uploads["/etc/pki/CA/cacert.pem"] == "-----libvirt_tls_cacert-----\n"
    assert "chmod 600 /etc/pki/libvirt/private/serverkey.pem" in result.commands("sm-01")
    edits = [normalized(c) for c in result.commands("sm-01") if "libvirtd.conf" in c]
    assert edits == [
        sed_edit("/etc/libvirt/libvirtd.conf", key, value)
        for key, value in {
            **LIBVIRTD_DEFAULTS,
            "listen_tls": "1",
            "cert_file": '"/etc/pki/libvirt/servercert.pem"',
            "key_file": '"/etc/pki/libvirt/private/serverkey.pem"',
            "ca_file": '"/etc/pki/CA/cacert.pem"',
            "tls_allowed_dn_list": '["CN=mgmt-01,O=lab"]',
        }.items()
    ]
    # systemd will not start a socket while its service runs: stop, start the socket, start again.
    assert result.names("sm-01")[-4:] == [
        "KVM host | Stop libvirtd to start libvirtd-tls.socket",
        "KVM host | libvirtd-tls.socket enabled and listening",
        "KVM host | libvirtd enabled and running",
        "KVM host | Restart libvirtd (configuration changed)",
    ]
    assert result.step("sm-01", "KVM host | Stop libvirtd to start libvirtd-tls.socket").commands == [
        "systemctl stop libvirtd.service"
    ]
    assert result.step("sm-01", "KVM host | libvirtd-tls.socket enabled and listening").commands == [
        "systemctl start libvirtd-tls.socket",
        "systemctl enable libvirtd-tls.socket",
    ]


def test_kvm_host_sysctl_dropin_with_bridge_module(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "kvm_sysctl": {
            "net.ipv4.ip_forward": 1,
            "net.bridge.bridge-nf-call-iptables": 0,
            "net.ipv4.tcp_rmem": "4096 87380 33554432",
            "net.ipv4.tcp_timestamps": 1,
        }
    }
    result = kvm_plan(monkeypatch, hypervisor("debian12"), data)
    uploads = result.uploads("sm-01")
    assert uploads["/etc/sysctl.d/90-kvm-qemu.conf"].splitlines()[1:] == [
        "net.bridge.bridge-nf-call-iptables = 0",
        "net.ipv4.ip_forward = 1",
        "net.ipv4.tcp_rmem = 4096 87380 33554432",
        "net.ipv4.tcp_timestamps = 1",
    ]
    assert uploads["/etc/modules-load.d/kvm-qemu.conf"].splitlines()[-1] == "br_netfilter"
    assert result.step("sm-01", "KVM host | Load br_netfilter (net.bridge.* sysctls)").commands == [
        "modprobe -a br_netfilter"
    ]
    apply = result.step("sm-01", "KVM host | Apply sysctl settings (file changed)")
    assert apply.commands == ["sysctl -p /etc/sysctl.d/90-kvm-qemu.conf"]
    assert apply.conditional
    # Never the global /etc/sysctl.conf (the original scripts overwrote it).
    assert not any("/etc/sysctl.conf" in command for command in result.commands("sm-01"))


def test_kvm_host_sysctl_rejects_the_original_scripts_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HostDataError, match="did you mean 'net.ipv4.tcp_timestamps'"):
        kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_sysctl": {"net.ipv4.tcp_timestamp": 1}})
    with pytest.raises(HostDataError, match="not a valid sysctl"):
        kvm_plan(monkeypatch, hypervisor("debian12"), {"kvm_sysctl": '{"vm.swappiness": "1; reboot"}'})


def test_kvm_host_sysctl_removed_when_no_longer_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    host = hypervisor("debian12", files={"/etc/sysctl.d/90-kvm-qemu.conf": "vm.swappiness = 1\n"})
    result = kvm_plan(monkeypatch, host)
    assert result.step(
        "sm-01", "KVM host | No sysctl settings: remove /etc/sysctl.d/90-kvm-qemu.conf"
    ).commands == ["rm -f /etc/sysctl.d/90-kvm-qemu.conf"]


def test_kvm_host_apparmor_paths_on_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    host = hypervisor(
        "ubuntu2404", dirs={"/etc/apparmor.d", "/sys/kernel/security/apparmor"}, running={"apparmor.service"}
    )
    result = kvm_plan(monkeypatch, host, {"kvm_secondary_storage": "/mnt/secondary"})
    name = "KVM host | AppArmor: qemu may use the storage paths (/etc/apparmor.d/local/abstractions/libvirt-qemu)"
    assert name in result.names("sm-01")
    rules = result.uploads("sm-01")["/etc/apparmor.d/local/abstractions/libvirt-qemu"].splitlines()[2:]
    assert rules == [
        '"/data01/primary/" r,',
        '"/data01/primary/**" rwk,',
        '"/mnt/secondary/" r,',
        '"/mnt/secondary/**" rwk,',
    ]
    reload = result.step("sm-01", "KVM host | Reload AppArmor (storage paths changed)")
    assert reload.conditional
    assert reload.commands == ["systemctl reload apparmor.service"]


def test_kvm_host_apparmor_skipped_without_apparmor_dir_or_when_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_dir = kvm_plan(monkeypatch, hypervisor("debian12"))
    disabled = kvm_plan(
        monkeypatch, hypervisor("debian12", dirs={"/etc/apparmor.d"}), {"kvm_apparmor": "false"}
    )
    for result in (no_dir, disabled):
        assert not any("AppArmor" in name for name in result.names("sm-01"))
    # AppArmor files but no AppArmor in the kernel (a container): write the file, no reload.
    no_kernel = kvm_plan(monkeypatch, hypervisor("debian12", dirs={"/etc/apparmor.d"}))
    names = no_kernel.names("sm-01")
    assert any(name.startswith("KVM host | AppArmor:") for name in names)
    assert "KVM host | Reload AppArmor (storage paths changed)" not in names


# --- NFS ----------------------------------------------------------------------------------------


def nfs_plan(
    monkeypatch: pytest.MonkeyPatch,
    deploy: str,
    distro: str = "debian12",
    data: dict[str, Any] | None = None,
    groups: dict[str, list[str]] | None = None,
    sims: dict[str, SimHost] | None = None,
) -> Plan:
    sims = sims or {name: sim(distro) for name in ("sm-01", "sm-02", "mgmt-01")}
    host_data = {name: {**HOST_DATA.get(name, {}), **(data or {})} for name in sims}
    return plan(deploy, sims, host_data, groups or GROUPS, monkeypatch=monkeypatch)


def test_nfs_server_debian_exports_to_cluster_hosts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    result = nfs_plan(monkeypatch, "deploys/nfs_server.py")
    assert result.steps["sm-01"] == [] and result.steps["sm-02"] == []
    assert [(step.name, step.commands, step.conditional) for step in result.steps["mgmt-01"]] == [
        (
            "NFS server | Refresh apt package lists",
            ["apt-get update", "touch /var/lib/apt/periodic/update-success-stamp"],
            False,
        ),
        ("NFS server | Install NFS server packages", [f"{APT_INSTALL} nfs-kernel-server"], False),
        (
            "NFS server | Export directory /secondary",
            ["mkdir -p /secondary", "chmod 1777 /secondary", "chown root:root /secondary"],
            False,
        ),
        ("NFS server | /etc/exports.d", ["mkdir -p /etc/exports.d", "chmod 755 /etc/exports.d"], False),
        (
            "NFS server | Export /secondary to the cluster (/etc/exports.d/kvm-qemu.exports)",
            [
                "mkdir -p /etc/exports.d",
                "upload /etc/exports.d/kvm-qemu.exports",
                "chmod 644 /etc/exports.d/kvm-qemu.exports",
            ],
            False,
        ),
        (
            "NFS server | nfs-server enabled and running",
            ["systemctl start nfs-server.service", "systemctl enable nfs-server.service"],
            False,
        ),
        ("NFS server | Re-export (exports changed)", ["exportfs -ra"], True),
    ]
    exports = result.uploads("mgmt-01")["/etc/exports.d/kvm-qemu.exports"].splitlines()
    assert exports[1:] == [
        "/secondary 10.0.0.11(rw,sync,no_subtree_check,root_squash) 10.0.0.12(rw,sync,no_subtree_check,root_squash)"
    ]


@pytest.mark.parametrize("distro", RHEL_LIKE)
def test_nfs_server_rhel_packages(monkeypatch: pytest.MonkeyPatch, distro: str) -> None:
    result = nfs_plan(monkeypatch, "deploys/nfs_server.py", distro)
    commands = result.commands("mgmt-01")
    assert commands[0] == "dnf install -y nfs-utils"
    assert "systemctl enable nfs-server.service" in commands


def test_nfs_server_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "nfs_export": "/export/secondary",
        "nfs_clients": ["10.0.0.0/24", "hv9.lab"],
        "nfs_no_root_squash": True,
        "nfs_export_options": "rw,async,no_subtree_check,root_squash",
    }
    result = nfs_plan(monkeypatch, "deploys/nfs_server.py", data=data)
    exports = result.uploads("mgmt-01")["/etc/exports.d/kvm-qemu.exports"].splitlines()[1]
    assert exports == (
        "/export/secondary 10.0.0.0/24(rw,async,no_subtree_check,no_root_squash) "
        "hv9.lab(rw,async,no_subtree_check,no_root_squash)"
    )
    assert "chmod 755 /export/secondary" in result.commands("mgmt-01")


def test_nfs_server_group_picks_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = {**GROUPS, "nfs_server": ["sm-02"]}
    result = nfs_plan(monkeypatch, "deploys/nfs_server.py", groups=groups)
    assert result.steps["mgmt-01"] == []
    assert "NFS server | Install NFS server packages" in result.names("sm-02")


def test_nfs_server_without_systemd_writes_exports_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sims = {name: sim("debian12", systemd=False) for name in ("sm-01", "sm-02", "mgmt-01")}
    with caplog.at_level(logging.WARNING):
        result = nfs_plan(monkeypatch, "deploys/nfs_server.py", sims=sims)
    assert "/etc/exports.d/kvm-qemu.exports" in result.uploads("mgmt-01")
    assert not any("exportfs" in c or c.startswith("systemctl") for c in result.commands("mgmt-01"))
    assert "nfs-server (and exportfs -ra) not enabled" in caplog.text


def test_nfs_server_exports_unchanged_means_no_reexport(monkeypatch: pytest.MonkeyPatch) -> None:
    first = nfs_plan(monkeypatch, "deploys/nfs_server.py")
    converged = sim(
        "debian12",
        packages={"nfs-kernel-server"},
        files=first.uploads("mgmt-01"),
        dirs={"/secondary", "/etc/exports.d"},
        meta={"/secondary": {"mode": 1777}},
        running={"nfs-server.service"},
        enabled={"nfs-server.service"},
    )
    second = nfs_plan(
        monkeypatch,
        "deploys/nfs_server.py",
        sims={"sm-01": sim("debian12"), "sm-02": sim("debian12"), "mgmt-01": converged},
    )
    assert [s.name for s in second.steps["mgmt-01"] if s.commands and not s.conditional] == []
    assert [s.name for s in second.steps["mgmt-01"] if s.conditional] == [
        "NFS server | Re-export (exports changed)"
    ]


def test_nfs_client_debian_mounts_secondary(monkeypatch: pytest.MonkeyPatch) -> None:
    result = nfs_plan(monkeypatch, "deploys/nfs_client.py")
    assert result.steps["mgmt-01"] == []
    assert [(step.name, step.commands) for step in result.steps["sm-01"]] == [
        (
            "NFS client | Refresh apt package lists",
            ["apt-get update", "touch /var/lib/apt/periodic/update-success-stamp"],
        ),
        ("NFS client | Install NFS client packages", [f"{APT_INSTALL} nfs-common"]),
        ("NFS client | Mount point /secondary", ["mkdir -p /secondary"]),
        (
            "NFS client | /etc/fstab: 10.0.0.2:/secondary on /secondary",
            ["echo '10.0.0.2:/secondary /secondary nfs defaults,_netdev 0 0' >> /etc/fstab"],
        ),
        (
            "NFS client | Mount 10.0.0.2:/secondary on /secondary",
            ["mount -t nfs 10.0.0.2:/secondary /secondary"],
        ),
    ]


@pytest.mark.parametrize("distro", RHEL_LIKE)
def test_nfs_client_rhel_installs_nfs_utils_and_starts_no_server(
    monkeypatch: pytest.MonkeyPatch, distro: str
) -> None:
    result = nfs_plan(monkeypatch, "deploys/nfs_client.py", distro)
    commands = result.commands("sm-02")
    assert commands[0] == "dnf install -y nfs-utils"
    # The original scripts started the NFS server on RHEL clients.
    assert not any("systemctl" in command or "nfs-server" in command for command in commands)


def test_nfs_client_existing_fstab_entry_is_replaced_and_mounted_share_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fstab = "UUID=1 / ext4 defaults 0 1\nold:/secondary /secondary nfs defaults 0 0\n"
    mounts = {"/secondary": {"device": "nfs.lab:/secondary", "type": "nfs4", "options": ["rw", "hard"]}}
    hv = sim(
        "debian12", files={"/etc/fstab": fstab}, dirs={"/secondary"}, mounts=mounts, packages={"nfs-common"}
    )
    sims = {"sm-01": hv, "sm-02": sim("debian12"), "mgmt-01": sim("debian12")}
    result = nfs_plan(monkeypatch, "deploys/nfs_client.py", data={"nfs_server": "nfs.lab"}, sims=sims)
    fstab_step = result.step("sm-01", "NFS client | /etc/fstab: nfs.lab:/secondary on /secondary")
    [sed] = fstab_step.commands
    assert normalized(sed) == (
        "sed -E -i.TS 's/^[^#[:space:]]+[[:space:]]+\\/secondary[[:space:]].*$/"
        "nfs.lab:\\/secondary \\/secondary nfs defaults,_netdev 0 0/' /etc/fstab && rm -f /etc/fstab.TS"
    )
    assert result.step("sm-01", "NFS client | Mount nfs.lab:/secondary on /secondary").commands == []
    assert result.step("sm-01", "NFS client | Install NFS client packages").commands == []


def test_nfs_client_needs_a_server_address(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = {name: sim("debian12") for name in ("sm-01", "@local")}
    with pytest.raises(HostDataError, match="set nfs_server"):
        plan(
            "deploys/nfs_client.py",
            sims,
            {"sm-01": HOST_DATA["sm-01"]},
            {"kvm_hosts": ["sm-01"], "mgmt": ["@local"]},
            monkeypatch=monkeypatch,
        )
    with pytest.raises(HostDataError, match="nfs_server"):
        nfs_plan(monkeypatch, "deploys/nfs_client.py", data={"nfs_server": "nfs.lab; reboot"})


# --- mgmt_server --------------------------------------------------------------------------------


def mgmt_plan(monkeypatch: pytest.MonkeyPatch, mgmt: SimHost, data: dict[str, Any] | None = None) -> Plan:
    sims = {"sm-01": sim("debian12"), "mgmt-01": mgmt}
    host_data = {"sm-01": HOST_DATA["sm-01"], "mgmt-01": {**HOST_DATA["mgmt-01"], **(data or {})}}
    return plan(
        "deploys/mgmt_server.py",
        sims,
        host_data,
        {"kvm_hosts": ["sm-01"], "mgmt": ["mgmt-01"]},
        monkeypatch=monkeypatch,
    )


SANDBOX_DNS = {"dns_listen_address": "127.0.2.1", "dns_domain": "sandbox.internal"}


def test_mgmt_server_debian_exact_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    result = mgmt_plan(monkeypatch, sim("debian12", dirs={"/etc"}), SANDBOX_DNS)
    assert result.steps["sm-01"] == []
    assert [(step.name, step.commands, step.conditional) for step in result.steps["mgmt-01"]] == [
        (
            "Management node | Refresh apt package lists",
            ["apt-get update", "touch /var/lib/apt/periodic/update-success-stamp"],
            False,
        ),
        ("Management node | Install dnsmasq packages", [f"{APT_INSTALL} dnsmasq dnsmasq-utils"], False),
        ("Management node | /etc/dnsmasq.d", ["mkdir -p /etc/dnsmasq.d", "chmod 755 /etc/dnsmasq.d"], False),
        (
            "Management node | Directory /etc/kvm-qemu/dnsmasq",
            ["mkdir -p /etc/kvm-qemu/dnsmasq", "chmod 755 /etc/kvm-qemu/dnsmasq"],
            False,
        ),
        (
            "Management node | /etc/kvm-qemu/dnsmasq/dhcp-hosts exists",
            ["mkdir -p /etc/kvm-qemu/dnsmasq", "touch /etc/kvm-qemu/dnsmasq/dhcp-hosts"],
            False,
        ),
        (
            "Management node | /etc/kvm-qemu/dnsmasq/hosts exists",
            ["mkdir -p /etc/kvm-qemu/dnsmasq", "touch /etc/kvm-qemu/dnsmasq/hosts"],
            False,
        ),
        (
            "Management node | dnsmasq configuration /etc/dnsmasq.conf",
            ["upload /etc/dnsmasq.conf", "chown root:root /etc/dnsmasq.conf", "chmod 644 /etc/dnsmasq.conf"],
            False,
        ),
        (
            "Management node | Validate dnsmasq configuration (dnsmasq --test)",
            ["dnsmasq --test --conf-file=/etc/dnsmasq.conf"],
            True,
        ),
        (
            "Management node | dnsmasq enabled and running",
            ["systemctl start dnsmasq.service", "systemctl enable dnsmasq.service"],
            False,
        ),
        (
            "Management node | Restart dnsmasq (configuration changed)",
            ["systemctl start dnsmasq.service"],
            True,
        ),
    ]
    assert result.uploads("mgmt-01")["/etc/dnsmasq.conf"].splitlines() == [
        "# Managed by kvm-qemu (deploys/mgmt_server.py). Local changes are overwritten.",
        "domain-needed",
        "bogus-priv",
        "no-resolv",
        "no-poll",
        "listen-address=127.0.2.1",
        "bind-interfaces",
        "domain=sandbox.internal",
        "local=/sandbox.internal/",
        "expand-hosts",
        "pid-file=/run/dnsmasq/dnsmasq.pid",
        "# Reservations and names written by the dhcp_reservations operation; re-read on SIGHUP.",
        "dhcp-hostsfile=/etc/kvm-qemu/dnsmasq/dhcp-hosts",
        "addn-hosts=/etc/kvm-qemu/dnsmasq/hosts",
        "conf-dir=/etc/dnsmasq.d/,*.conf",
    ]


def test_mgmt_server_dhcp_and_tftp_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        **SANDBOX_DNS,
        "dns_upstream_servers": ["192.0.2.53", "192.0.2.54"],
        "dhcp_range": "10.10.5.100,10.10.5.200,255.255.255.0,12h",
        "dhcp_router": "10.10.5.1",
        "dhcp_lease_max": 500,
        "tftp_root": "/srv/tftp",
    }
    result = mgmt_plan(monkeypatch, sim("rocky9"), data)
    conf = result.uploads("mgmt-01")["/etc/dnsmasq.conf"].splitlines()
    for line in (
        "server=192.0.2.53",
        "server=192.0.2.54",
        "dhcp-range=10.10.5.100,10.10.5.200,255.255.255.0,12h",
        "dhcp-lease-max=500",
        "dhcp-option=option:router,10.10.5.1",
        "dhcp-boot=pxelinux.0",
        "enable-tftp",
        "tftp-root=/srv/tftp",
        "tftp-secure",
    ):
        assert line in conf
    assert "mkdir -p /srv/tftp" in result.commands("mgmt-01")
    # RHEL: dnf, and /run/dnsmasq for the pid-file recreated at boot by tmpfiles.d.
    assert result.commands("mgmt-01")[0] == "dnf install -y dnsmasq dnsmasq-utils"
    assert (
        result.uploads("mgmt-01")["/etc/tmpfiles.d/kvm-qemu-dnsmasq.conf"]
        == "d /run/dnsmasq 0755 root root -\n"
    )

    default = mgmt_plan(monkeypatch, sim("debian12"))
    conf = default.uploads("mgmt-01")["/etc/dnsmasq.conf"]
    for absent in ("dhcp-range", "dhcp-option", "enable-tftp", "dhcp-boot", "server="):
        assert absent not in conf
    assert "/etc/tmpfiles.d/kvm-qemu-dnsmasq.conf" not in default.uploads("mgmt-01")


def test_mgmt_server_never_truncates_reservation_files(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {
        "/etc/kvm-qemu/dnsmasq/dhcp-hosts": "52:54:00:00:00:01,10.10.5.11,kvmhost01\n",
        "/etc/kvm-qemu/dnsmasq/hosts": "10.10.5.11 kvmhost01.lab kvmhost01\n",
    }
    result = mgmt_plan(monkeypatch, sim("debian12", files=files, dirs={"/etc/kvm-qemu/dnsmasq"}))
    assert result.step("mgmt-01", "Management node | /etc/kvm-qemu/dnsmasq/dhcp-hosts exists").commands == []
    assert result.step("mgmt-01", "Management node | /etc/kvm-qemu/dnsmasq/hosts exists").commands == []
    assert not any("/etc/kvm-qemu/dnsmasq/" in dest for dest in result.uploads("mgmt-01"))


def test_mgmt_server_converged_and_without_systemd(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = mgmt_plan(monkeypatch, sim("debian12"), SANDBOX_DNS)
    converged = sim(
        "debian12",
        systemd=False,
        packages={"dnsmasq", "dnsmasq-utils"},
        files={
            **first.uploads("mgmt-01"),
            "/etc/kvm-qemu/dnsmasq/dhcp-hosts": "",
            "/etc/kvm-qemu/dnsmasq/hosts": "",
        },
        dirs={"/etc", "/etc/dnsmasq.d", "/etc/kvm-qemu/dnsmasq"},
    )
    with caplog.at_level(logging.WARNING):
        second = mgmt_plan(monkeypatch, converged, SANDBOX_DNS)
    assert [s.name for s in second.steps["mgmt-01"] if s.commands and not s.conditional] == []
    assert [s.name for s in second.steps["mgmt-01"] if s.conditional] == [
        "Management node | Validate dnsmasq configuration (dnsmasq --test)"
    ]
    assert "dnsmasq not enabled, started or restarted" in caplog.text


def test_mgmt_server_rejects_unsafe_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (
        ("dns_domain", "lab\nserver=6.6.6.6"),
        ("dhcp_range", "10.0.0.1,10.0.0.9\nenable-tftp"),
        ("tftp_root", "/srv/tftp\ntftp-no-blocksize"),
        ("dns_upstream_servers", ["1.1.1.1 #"]),
    ):
        with pytest.raises(HostDataError, match=key):
            mgmt_plan(monkeypatch, sim("debian12"), {key: value})


def test_mgmt_server_refuses_a_dhcp_range_the_reservations_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    # One rule for dhcp_range: what dnsmasq.conf gets is what dhcp_reservations checks addresses against.
    for value, message in (
        ("everything", "does not start with two IPv4 addresses"),
        ("10.0.0.9,10.0.0.1", "the start address is after the end address"),
    ):
        with pytest.raises(HostDataError, match=f"^dhcp_range='{value}'.*{message}"):
            mgmt_plan(monkeypatch, sim("debian12"), {"dhcp_range": value})


def test_dnsmasq_template_renders_with_only_its_documented_variables() -> None:
    """The sandbox renders the same template with exactly these names (and a plain environment)."""
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        (REPO / "templates" / "dnsmasq.conf.j2").read_text()
    )
    text = template.render(
        listen_address=None,
        domain=None,
        upstream_servers=[],
        dhcp_range="10.0.0.10,10.0.0.20,12h",
        dhcp_lease_max=150,
        router=None,
        tftp_root=None,
        pid_file="/run/dnsmasq/dnsmasq.pid",
        dhcp_hostsfile="/etc/kvm-qemu/dnsmasq/dhcp-hosts",
        addn_hosts="/etc/kvm-qemu/dnsmasq/hosts",
    )
    assert "dhcp-range=10.0.0.10,10.0.0.20,12h" in text
    assert "dhcp-lease-max=150" in text


def test_values_with_a_final_newline_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (
        ("dns_domain", "lab\n"),
        ("dns_listen_address", "10.10.5.1\n"),
        ("dhcp_range", "10.0.0.1,10.0.0.9\n"),
        ("tftp_root", "/srv/tftp\n"),
        ("dnsmasq_conf", "/etc/dnsmasq.conf\n"),
        ("dns_upstream_servers", ["1.1.1.1\n"]),
    ):
        with pytest.raises(HostDataError, match=key):
            mgmt_plan(monkeypatch, sim("debian12"), {**SANDBOX_DNS, key: value})
    for key, value in (
        ("kvm_primary_storage", "/data01/primary\n"),
        ("libvirt_service", "libvirtd\n"),
        ("kvm_sysctl", {"vm.swappiness\n": "1"}),
        ("kvm_sysctl", {"vm.swappiness": "1\n"}),
    ):
        with pytest.raises(HostDataError, match=key):
            kvm_plan(monkeypatch, hypervisor("debian12"), {key: value})
    for deploy, key, value in (
        ("deploys/nfs_server.py", "nfs_export", "/secondary\n"),
        ("deploys/nfs_server.py", "nfs_clients", ["sm-01\n"]),
        ("deploys/nfs_server.py", "nfs_export_options", ["rw\n"]),
        ("deploys/nfs_server.py", "nfs_export_mode", "1777\n"),
        ("deploys/nfs_server.py", "nfs_export_owner", "root\n"),
        ("deploys/nfs_server.py", "nfs_export_group", "root; reboot"),
        ("deploys/nfs_client.py", "nfs_server", "10.0.0.5\n"),
        ("deploys/nfs_client.py", "nfs_mount_options", ["vers=4.2\n"]),
    ):
        with pytest.raises(HostDataError, match=key):
            nfs_plan(monkeypatch, deploy, data={"nfs_server": "10.0.0.5", key: value})


def test_mgmt_server_never_serves_every_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without dns_listen_address: the management node's own address (its ssh_hostname) is bound.
    default = mgmt_plan(monkeypatch, sim("debian12"))
    conf = default.uploads("mgmt-01")["/etc/dnsmasq.conf"].splitlines()
    assert "listen-address=10.0.0.2" in conf and "bind-interfaces" in conf
    # No address to derive it from: a clear error naming the setting, before any host changes.
    sims = {"sm-01": sim("debian12"), "mgmt-01": sim("debian12")}
    for mgmt_data in ({}, {"ssh_hostname": "mgmt.example.internal"}):
        with pytest.raises(HostDataError, match="set dns_listen_address to the management node's cluster"):
            plan(
                "deploys/mgmt_server.py",
                sims,
                {"sm-01": HOST_DATA["sm-01"], "mgmt-01": mgmt_data},
                {"kvm_hosts": ["sm-01"], "mgmt": ["mgmt-01"]},
                monkeypatch=monkeypatch,
            )
    for bad in ("0.0.0.0", "::", "eth0", "10.0.0.300"):
        with pytest.raises(HostDataError, match="dns_listen_address"):
            mgmt_plan(monkeypatch, sim("debian12"), {"dns_listen_address": bad})
