"""Bridge networking: rendering per backend (exact files and commands), data validation, the fact, the
deploy per distribution through the host deploy harness (no host contacted), and verification over a
new connection against a real local connector."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State

from deploys._settings import SettingError
from facts.bridge import BridgeState
from facts.util.script_files import read_script
from operations.bridge import verify_and_commit
from operations.util.bridge_backend import choose_backend
from operations.util.bridge_diff import differences
from operations.util.bridge_family import family
from operations.util.bridge_render_ifcfg import render_ifcfg
from operations.util.bridge_render_iproute2 import render_iproute2
from operations.util.bridge_render_netplan import render_netplan
from operations.util.bridge_render_nmcli import render_nmcli
from operations.util.bridge_spec import BridgeSpec, BridgeSpecError
from operations.util.bridge_switch import switch_script
from operations.util.bridge_validate import parse_spec
from tests.unit.host_deploy_harness import SimHost, plan

FIXTURES = Path(__file__).parent / "fixtures" / "host_deploys"
DISTROS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "distributions.json").read_text())
DISTROS["centos7"] = {
    "name": "CentOS",
    "major": 7,
    "minor": 9,
    "release_meta": {"ID": "centos", "ID_LIKE": "rhel fedora", "VERSION_ID": "7"},
}

# The original scripts' br0 over an 802.3ad bond (kvm-qemu-ansible README), as data.
ORIGINAL_BRIDGE_DATA: dict[str, Any] = {
    "kvm_bond": {
        "name": "bond0",
        "mode": "802.3ad",
        "members": ["eno1", "eno2"],
        "xmit_hash_policy": "layer3+4",
    },
    "kvm_bridge_address": "172.30.10.41/24",
    "kvm_bridge_gateway": "172.30.10.1",
    "kvm_bridge_dns": ["172.30.10.11", "172.30.10.12"],
    "kvm_bridge_dns_search": "chnet.internal",
}
SIMPLE_DATA: dict[str, Any] = {"kvm_bridge_ports": "eth0", "kvm_bridge_address": "dhcp"}
ORIGINAL_BRIDGE = parse_spec(ORIGINAL_BRIDGE_DATA)
SIMPLE = parse_spec(SIMPLE_DATA)
HEADER = "# Managed by kvm-qemu (deploys/bridge.py); a re-run rewrites this file."


# --- rendering ----------------------------------------------------------------------------------


def test_netplan_original_bridge_over_bond() -> None:
    assert render_netplan(ORIGINAL_BRIDGE) == (
        f"{HEADER}\n"
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        '    "eno1":\n'
        "      dhcp4: false\n"
        "      dhcp6: false\n"
        '    "eno2":\n'
        "      dhcp4: false\n"
        "      dhcp6: false\n"
        "  bonds:\n"
        '    "bond0":\n'
        '      interfaces: ["eno1", "eno2"]\n'
        "      dhcp4: false\n"
        "      dhcp6: false\n"
        "      parameters:\n"
        '        mode: "802.3ad"\n'
        "        mii-monitor-interval: 100\n"
        '        transmit-hash-policy: "layer3+4"\n'
        "  bridges:\n"
        '    "br0":\n'
        '      interfaces: ["bond0"]\n'
        "      dhcp4: false\n"
        "      dhcp6: false\n"
        '      addresses: ["172.30.10.41/24"]\n'
        "      routes:\n"
        '        - to: "default"\n'
        '          via: "172.30.10.1"\n'
        "      nameservers:\n"
        '        addresses: ["172.30.10.11", "172.30.10.12"]\n'
        '        search: ["chnet.internal"]\n'
        "      parameters:\n"
        "        stp: false\n"
        "        forward-delay: 0\n"
    )


def test_netplan_single_port_dhcp() -> None:
    assert render_netplan(SIMPLE) == (
        f"{HEADER}\n"
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        '    "eth0":\n'
        "      dhcp4: false\n"
        "      dhcp6: false\n"
        "  bridges:\n"
        '    "br0":\n'
        '      interfaces: ["eth0"]\n'
        "      dhcp4: true\n"
        "      dhcp6: false\n"
        "      parameters:\n"
        "        stp: false\n"
        "        forward-delay: 0\n"
    )


def test_netplan_is_yaml_with_the_meaning_we_want() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(render_netplan(ORIGINAL_BRIDGE))["network"]
    assert doc["bridges"]["br0"]["interfaces"] == ["bond0"]
    assert doc["bonds"]["bond0"]["parameters"]["mode"] == "802.3ad"
    assert doc["bridges"]["br0"]["routes"] == [{"to": "default", "via": "172.30.10.1"}]


def test_ifcfg_original_bridge_files() -> None:
    d = "/etc/sysconfig/network-scripts"
    member = "TYPE=Ethernet\nONBOOT=yes\nNM_CONTROLLED=no\nBOOTPROTO=none\nMASTER=bond0\nSLAVE=yes\n"
    assert render_ifcfg(ORIGINAL_BRIDGE) == {
        f"{d}/ifcfg-br0": (
            f"{HEADER}\nDEVICE=br0\nNAME=br0\nTYPE=Bridge\nONBOOT=yes\nNM_CONTROLLED=no\nBOOTPROTO=none\n"
            "STP=no\nDELAY=0\nIPADDR=172.30.10.41\nPREFIX=24\nGATEWAY=172.30.10.1\n"
            "DNS1=172.30.10.11\nDNS2=172.30.10.12\nDOMAIN=chnet.internal\n"
        ),
        f"{d}/ifcfg-bond0": (
            f"{HEADER}\nDEVICE=bond0\nNAME=bond0\nTYPE=Bond\nBONDING_MASTER=yes\n"
            'BONDING_OPTS="mode=802.3ad miimon=100 xmit_hash_policy=layer3+4"\n'
            "ONBOOT=yes\nNM_CONTROLLED=no\nBOOTPROTO=none\nBRIDGE=br0\n"
        ),
        f"{d}/ifcfg-eno1": f"{HEADER}\nDEVICE=eno1\nNAME=eno1\n{member}",
        f"{d}/ifcfg-eno2": f"{HEADER}\nDEVICE=eno2\nNAME=eno2\n{member}",
    }


def test_ifcfg_single_port_dhcp() -> None:
    d = "/etc/sysconfig/network-scripts"
    assert render_ifcfg(SIMPLE) == {
        f"{d}/ifcfg-br0": (
            f"{HEADER}\nDEVICE=br0\nNAME=br0\nTYPE=Bridge\nONBOOT=yes\nNM_CONTROLLED=no\nBOOTPROTO=dhcp\n"
            "STP=no\nDELAY=0\n"
        ),
        f"{d}/ifcfg-eth0": (
            f"{HEADER}\nDEVICE=eth0\nNAME=eth0\nTYPE=Ethernet\nONBOOT=yes\nNM_CONTROLLED=no\nBOOTPROTO=none\n"
            "BRIDGE=br0\n"
        ),
    }


def test_nmcli_original_bridge_commands() -> None:
    member = ["connection.master", "bond0", "connection.slave-type", "bond", "connection.autoconnect", "yes"]
    assert render_nmcli(ORIGINAL_BRIDGE) == [
        ["nmcli", "connection", "add", "save", "yes", "type", "bridge", "con-name", "kvm-br0", "ifname", "br0",
         "connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes",
         "bridge.stp", "no", "bridge.forward-delay", "0",
         "ipv4.method", "manual", "ipv4.addresses", "172.30.10.41/24", "ipv4.gateway", "172.30.10.1",
         "ipv4.dns", "172.30.10.11,172.30.10.12", "ipv4.dns-search", "chnet.internal", "ipv6.method", "ignore"],
        ["nmcli", "connection", "add", "save", "yes", "type", "bond", "con-name", "kvm-bond0", "ifname", "bond0",
         "bond.options", "mode=802.3ad,miimon=100,xmit_hash_policy=layer3+4",
         "connection.master", "br0", "connection.slave-type", "bridge",
         "connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes"],
        ["nmcli", "connection", "add", "save", "yes", "type", "ethernet", "con-name", "kvm-bond0-eno1",
         "ifname", "eno1", *member, "connection.autoconnect-priority", "10"],
        ["nmcli", "connection", "add", "save", "yes", "type", "ethernet", "con-name", "kvm-bond0-eno2",
         "ifname", "eno2", *member, "connection.autoconnect-priority", "10"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "kvm-br0"],
    ]  # fmt: skip


def test_nmcli_single_port_dhcp() -> None:
    assert render_nmcli(SIMPLE) == [
        ["nmcli", "connection", "add", "save", "yes", "type", "bridge", "con-name", "kvm-br0", "ifname", "br0",
         "connection.autoconnect", "yes", "connection.autoconnect-slaves", "yes",
         "bridge.stp", "no", "bridge.forward-delay", "0", "ipv4.method", "auto", "ipv6.method", "ignore"],
        ["nmcli", "connection", "add", "save", "yes", "type", "ethernet", "con-name", "kvm-br0-eth0",
         "ifname", "eth0", "connection.master", "br0", "connection.slave-type", "bridge",
         "connection.autoconnect", "yes", "connection.autoconnect-priority", "10"],
        ["nmcli", "--wait", "60", "connection", "up", "id", "kvm-br0"],
    ]  # fmt: skip


def test_networkmanager_apply_and_rollback_lines() -> None:
    fam = family(ORIGINAL_BRIDGE, "networkmanager")
    delete = (
        "for c in kvm-br0 kvm-bond0 kvm-bond0-eno1 kvm-bond0-eno2; do if nmcli -g NAME connection show "
        '| grep -qxF -- "$c"; then timeout 60 nmcli connection delete id "$c"; fi; done'
    )
    assert fam.files == {}
    assert fam.snapshot == [
        "/etc/NetworkManager/system-connections/*",
        "/etc/sysconfig/network-scripts/ifcfg-*",
    ]
    assert fam.apply[0] == delete
    assert fam.apply[1:] == ["timeout 120 " + " ".join(args) for args in render_nmcli(ORIGINAL_BRIDGE)]
    assert fam.unapply == [delete]
    assert fam.reapply == [
        "timeout 60 nmcli connection reload",
        'while IFS= read -r u; do timeout 90 nmcli --wait 60 connection up uuid "$u"; done < "$D/old/nm-active"',
    ]
    assert fam.save_extra == [
        "nmcli -g UUID,DEVICE connection show --active | while IFS=: read -r u d; do "
        'for l in br0 bond0 eno1 eno2; do [ "$d" = "$l" ] && printf \'%s\\n\' "$u"; done; done '
        '> "$D/old/nm-active"'
    ]


def test_netplan_and_ifcfg_apply_lines() -> None:
    netplan = family(SIMPLE, "netplan")
    assert netplan.files == {"/etc/netplan/60-kvm-qemu-bridge.yaml": (render_netplan(SIMPLE), "600")}
    assert netplan.snapshot == ["/etc/netplan/60-kvm-qemu-bridge.yaml"]
    assert netplan.apply == ["timeout 120 netplan generate", "timeout 120 netplan apply"]
    assert netplan.reapply == ["timeout 120 netplan apply"]
    ifcfg = family(SIMPLE, "ifcfg")
    restart = (
        "if [ -d /run/systemd/system ]; then timeout 120 systemctl restart network.service; "
        "else timeout 120 /etc/init.d/network restart; fi"
    )
    assert ifcfg.apply == ifcfg.reapply == [restart]
    assert ifcfg.snapshot == [
        "/etc/sysconfig/network-scripts/ifcfg-br0",
        "/etc/sysconfig/network-scripts/ifcfg-eth0",
    ]
    assert {path: content for path, (content, _mode) in ifcfg.files.items()} == render_ifcfg(SIMPLE)


def test_iproute2_lines() -> None:
    spec = parse_spec(
        {**SIMPLE_DATA, "kvm_bridge_address": "10.10.5.2/24", "kvm_bridge_gateway": "10.10.5.1"}
    )
    assert render_iproute2(spec) == [
        "ip link show dev br0 >/dev/null 2>&1 || ip link add name br0 type bridge",
        "ip link set dev br0 type bridge stp_state 0 forward_delay 0",
        "ip -4 addr flush dev eth0 scope global",
        "ip link set dev eth0 master br0",
        "ip link set dev eth0 up",
        "ip -4 addr flush dev br0 scope global",
        "ip addr add 10.10.5.2/24 dev br0",
        "ip link set dev br0 up",
        "ip route replace default via 10.10.5.1 dev br0",
    ]


@pytest.mark.parametrize("backend", ["netplan", "networkmanager", "ifcfg", "iproute2"])
def test_switch_script_is_valid_sh_and_carries_the_backend_steps(backend: str) -> None:
    script = switch_script(ORIGINAL_BRIDGE, backend)
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    fam = family(ORIGINAL_BRIDGE, backend)
    for line in fam.apply:
        assert f"  {line} || return 1\n" in script
    for line in fam.unapply + fam.reapply + fam.save_extra:
        assert f"  {line}\n" in script
    assert "D=/run/kvm-qemu-bridge\n" in script
    assert "STAMP=/etc/kvm-qemu/bridge.json\n" in script
    assert "ROLLBACK_SECONDS=120\n" in script
    assert "LINKS='br0 bond0 eno1 eno2'\n" in script
    assert "VIRTUAL='br0 bond0'\n" in script


def test_switch_script_timer_choice() -> None:
    assert "TIMER=auto\n" in switch_script(SIMPLE, "netplan")
    assert "TIMER=process\n" in switch_script(SIMPLE, "netplan", timer="process")
    with pytest.raises(ValueError, match="timer='cron'"):
        switch_script(SIMPLE, "netplan", timer="cron")


def test_switch_script_quotes_paths() -> None:
    script = switch_script(SIMPLE, "netplan", state_dir="/run/a b", stamp="/etc/x'y.json")
    assert "D='/run/a b'\n" in script
    assert "STAMP='/etc/x'\"'\"'y.json'\n" in script


SHELLCHECK = shutil.which("shellcheck")
SWITCH_FILE = Path(__file__).resolve().parents[2] / "operations" / "scripts" / "bridge-switch.sh"


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (make system-packages)")
@pytest.mark.parametrize("backend", ["netplan", "networkmanager", "ifcfg", "iproute2"])
@pytest.mark.parametrize("spec", [ORIGINAL_BRIDGE, SIMPLE], ids=["original", "simple"])
def test_rendered_switch_script_passes_shellcheck(backend: str, spec: BridgeSpec) -> None:
    # The file alone is checked by `make lint`; this checks it with a prelude for every backend.
    script = switch_script(spec, backend, state_dir="/run/a b", root="/tmp/r o")
    assert SHELLCHECK is not None
    result = subprocess.run(
        [SHELLCHECK, "--shell=sh", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_switch_script_is_the_file_verbatim_after_the_prelude() -> None:
    text = SWITCH_FILE.read_text()
    shebang, shared = text.split("\n", 1)
    script = switch_script(ORIGINAL_BRIDGE, "networkmanager")
    assert script.startswith(shebang + "\n")
    assert script.endswith(shared)
    # Nothing of the host is written into the file itself: its values come from the prelude.
    assert "br0" not in text and "/run/kvm-qemu-bridge" not in text


def test_switch_file_refuses_to_run_without_its_prelude(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(SWITCH_FILE), "stage"], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=10
    )
    assert result.returncode != 0
    assert "D" in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("filename", ["", "../bridge.py", "scripts/bridge-switch.sh", ".hidden"])
def test_read_script_takes_only_a_file_name(filename: str) -> None:
    with pytest.raises(ValueError, match="expected a file name inside operations/scripts"):
        read_script(filename)


def test_stamp_ignores_timers_but_not_network_settings() -> None:
    slower = parse_spec({**SIMPLE_DATA, "kvm_bridge_rollback_seconds": 300})
    assert slower.stamp("netplan") == SIMPLE.stamp("netplan")
    assert SIMPLE.stamp("netplan") != SIMPLE.stamp("ifcfg")
    assert parse_spec({**SIMPLE_DATA, "kvm_bridge_stp": "yes"}).stamp("netplan") != SIMPLE.stamp("netplan")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kvm_bridge_address": "dhcp"}, "kvm_bridge_ports: the bridge needs at least one port"),
        ({"kvm_bridge_ports": "eth0"}, "kvm_bridge_address: required"),
        ({**SIMPLE_DATA, "kvm_bridge": "br0;reboot"}, "kvm_bridge='br0;reboot': not an interface name"),
        ({**SIMPLE_DATA, "kvm_bridge": "br0\n"}, "kvm_bridge='br0\\\\n': not an interface name"),
        ({**SIMPLE_DATA, "kvm_bridge": "a-very-long-name0"}, "kvm_bridge='a-very-long-name0'"),
        ({**SIMPLE_DATA, "kvm_bridge_ports": ["eth0", "$(id)"]}, "kvm_bridge_ports='\\$\\(id\\)'"),
        ({**SIMPLE_DATA, "kvm_bridge_ports": "eth0,eth0"}, "interface 'eth0' is used twice"),
        ({**SIMPLE_DATA, "kvm_bridge_ports": "br0"}, "interface 'br0' is used twice"),
        ({**SIMPLE_DATA, "kvm_bridge_address": "10.0.0.5/24\n"}, "kvm_bridge_address='10.0.0.5/24\\\\n'"),
        ({**SIMPLE_DATA, "kvm_bridge_address": "10.0.0.5"}, "expected 'dhcp' or address/prefix"),
        ({**SIMPLE_DATA, "kvm_bridge_address": "10.0.0.300/24"}, "not a valid IPv4 address/prefix"),
        ({**SIMPLE_DATA, "kvm_bridge_address": "10.0.0.0/24"}, "not a host address"),
        ({**SIMPLE_DATA, "kvm_bridge_gateway": "10.0.0.1"}, "kvm_bridge_gateway: only with a static"),
        (
            {**SIMPLE_DATA, "kvm_bridge_address": "10.0.0.5/24", "kvm_bridge_gateway": "10.0.1.1"},
            "kvm_bridge_gateway=10.0.1.1: not inside 10.0.0.0/24",
        ),
        ({**SIMPLE_DATA, "kvm_bridge_dns": "8.8.8.8,x"}, "kvm_bridge_dns='x': expected an IPv4 address"),
        ({**SIMPLE_DATA, "kvm_bridge_dns_search": "a b"}, "kvm_bridge_dns_search: 'a b' is not a domain"),
        ({**SIMPLE_DATA, "kvm_bridge_stp": "maybe"}, "kvm_bridge_stp='maybe': expected true or false"),
        (
            {**SIMPLE_DATA, "kvm_bridge_rollback_seconds": "5"},
            "kvm_bridge_rollback_seconds=5: must be between",
        ),
        ({**SIMPLE_DATA, "kvm_bridge_rollback_seconds": "2m"}, "kvm_bridge_rollback_seconds='2m'"),
        (
            {**SIMPLE_DATA, "kvm_bridge_rollback_seconds": 40, "kvm_bridge_verify_seconds": 30},
            "kvm_bridge_rollback_seconds=40: must be at least kvm_bridge_verify_seconds",
        ),
        ({**SIMPLE_DATA, "kvm_bond": "{"}, "kvm_bond: expected a JSON object"),
        (
            {**SIMPLE_DATA, "kvm_bond": {"members": ["eth1"], "speed": 1}},
            "kvm_bond: unknown key\\(s\\) speed",
        ),
        ({**SIMPLE_DATA, "kvm_bond": {"members": ["eth1"], "mode": "lacp"}}, "kvm_bond.mode='lacp'"),
        ({**SIMPLE_DATA, "kvm_bond": {"members": []}}, "kvm_bond.members: a bond needs at least one"),
        ({**SIMPLE_DATA, "kvm_bond": {"members": ["eth0"]}}, "interface 'eth0' is used twice"),
        (
            {**SIMPLE_DATA, "kvm_bond": {"members": ["eth1"], "xmit_hash_policy": "layer3+4"}},
            "kvm_bond.xmit_hash_policy: not used by mode active-backup",
        ),
        (
            {**SIMPLE_DATA, "kvm_bond": {"members": ["eth1"], "mode": "802.3ad", "lacp_rate": "turbo"}},
            "kvm_bond.lacp_rate='turbo'",
        ),
    ],
)
def test_bad_data_is_rejected_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BridgeSpecError, match=message):
        parse_spec(data)


def test_data_from_the_command_line_as_strings() -> None:
    spec = parse_spec(
        {
            "kvm_bridge_ports": "eth2",
            "kvm_bond": '{"members": ["eth0", "eth1"], "mode": "802.3ad", "lacp_rate": "fast"}',
            "kvm_bridge_address": "10.10.5.2/24",
            "kvm_bridge_dns": "10.10.5.1",
            "kvm_bridge_stp": "true",
            "kvm_bridge_rollback_seconds": "90",
        }
    )
    assert spec.bridge_ports == ("bond0", "eth2")
    assert spec.links == ("br0", "bond0", "eth2", "eth0", "eth1")
    assert (
        spec.bond is not None and spec.bond.lacp_rate == "fast" and spec.stp and spec.rollback_seconds == 90
    )


@pytest.mark.parametrize(
    ("distro", "tools", "backend"),
    [
        ("ubuntu2404", [], "netplan"),
        ("popos2204", [], "netplan"),
        ("debian12", ["netplan"], "netplan"),
        ("debian12", [], None),
        ("rocky9", [], "networkmanager"),
        ("alma8", [], "networkmanager"),
        ("rhel9", [], "networkmanager"),
        ("centos_stream9", [], "networkmanager"),
        ("centos7", [], "ifcfg"),
        ("arch", [], None),
    ],
)
def test_backend_per_distribution(distro: str, tools: list[str], backend: str | None) -> None:
    assert choose_backend("auto", DISTROS[distro], lambda: tools)[0] == backend


def test_backend_override_and_bad_backend() -> None:
    assert choose_backend("ifcfg", DISTROS["rocky9"], lambda: []) == ("ifcfg", "kvm_bridge_backend")
    with pytest.raises(BridgeSpecError, match="kvm_bridge_backend='systemd-networkd'"):
        choose_backend("systemd-networkd", DISTROS["rocky9"], lambda: [])


# --- the fact and the comparison ----------------------------------------------------------------

LINKS_CONVERGED = [
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\"
    "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
    "2: eth0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP mode DEFAULT "
    "group default qlen 1000\\    link/ether 52:54:00:aa:bb:cc brd ff:ff:ff:ff:ff:ff link-netnsid 0",
    "4: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default "
    "qlen 1000\\    link/ether 52:54:00:aa:bb:cc brd ff:ff:ff:ff:ff:ff",
]
ADDRS_CONVERGED = [
    "4: br0    inet 10.10.5.2/24 scope global br0\\       valid_lft forever preferred_lft forever",
]


def fact_output(
    stamp: dict[str, Any] | None, state: str | None, links: list[str], addrs: list[str]
) -> list[str]:
    return [
        "@@stamp",
        *([json.dumps(stamp)] if stamp else []),
        "",
        "@@state",
        *([state] if state else []),
        "@@links",
        *links,
        "@@addrs",
        *addrs,
        "@@tools",
        "/usr/sbin/netplan",
        "systemd",
    ]


def test_fact_command_and_parse() -> None:
    assert BridgeState().command().get_raw_value() == (
        "echo @@stamp; cat /etc/kvm-qemu/bridge.json 2>/dev/null; echo; echo @@state; cat "
        "/run/kvm-qemu-bridge/state 2>/dev/null; echo @@links; ip -o link show 2>/dev/null; "
        "echo @@addrs; ip -o -4 addr show scope global 2>/dev/null; "
        "echo @@tools; for t in netplan nmcli systemd-run; do command -v $t; done; "
        "[ -d /run/systemd/system ] && echo systemd; true"
    )
    stamp = {"backend": "netplan"}
    assert BridgeState().process(fact_output(stamp, "committed", LINKS_CONVERGED, ADDRS_CONVERGED)) == {
        "stamp": stamp,
        "switch_state": "committed",
        "links": {
            "lo": {"up": True, "master": None},
            "eth0": {"up": True, "master": "br0"},
            "br0": {"up": True, "master": None},
        },
        "addrs": {"br0": ["10.10.5.2/24"]},
        "tools": ["netplan"],
        "systemd": True,
    }


def test_differences() -> None:
    spec = parse_spec({"kvm_bridge_ports": "eth0", "kvm_bridge_address": "10.10.5.2/24"})
    converged = BridgeState().process(
        fact_output(spec.stamp("netplan"), "committed", LINKS_CONVERGED, ADDRS_CONVERGED)
    )
    assert differences(spec, "netplan", converged) == []
    assert differences(spec, "ifcfg", converged) == ["configuration differs from the last committed one"]
    fresh = BridgeState().process(fact_output(None, None, LINKS_CONVERGED[:1], []))
    assert differences(spec, "netplan", fresh) == [
        "not configured yet",
        "br0 does not exist",
        "eth0 does not exist",
        "br0 lacks 10.10.5.2/24",
    ]
    # Someone took eth0 out of the bridge and dropped its address: the change runs again.
    unplugged_links = [LINKS_CONVERGED[0], LINKS_CONVERGED[1].replace("master br0 ", ""), LINKS_CONVERGED[2]]
    unplugged = BridgeState().process(fact_output(spec.stamp("netplan"), "committed", unplugged_links, []))
    assert differences(spec, "netplan", unplugged) == ["eth0 is not in br0", "br0 lacks 10.10.5.2/24"]
    down = BridgeState().process(
        fact_output(
            spec.stamp("netplan"),
            "committed",
            [
                LINKS_CONVERGED[1],
                LINKS_CONVERGED[2].replace("<BROADCAST,MULTICAST,UP,LOWER_UP>", "<BROADCAST>"),
            ],
            ADDRS_CONVERGED,
        )
    )
    assert differences(spec, "netplan", down) == ["br0 is down"]


# --- the deploy per distribution ----------------------------------------------------------------


@dataclass
class BridgeSim(SimHost):
    bridge_state: list[str] = field(default_factory=lambda: fact_output(None, None, LINKS_CONVERGED[:1], []))

    def fact(self, key: str, kwargs: dict[str, Any]) -> Any:
        if key == "bridge.BridgeState":
            self.fact_calls.append(key)
            output = self.bridge_state
            if "netplan" not in self.packages:
                output = [line for line in output if line != "/usr/sbin/netplan"]
            return BridgeState().process(output)
        return super().fact(key, kwargs)


def bridge_plan(monkeypatch: pytest.MonkeyPatch, sims: dict[str, BridgeSim], data: dict[str, Any]) -> Any:
    return plan(
        "deploys/bridge.py",
        sims,
        {name: dict(data) for name in sims},
        {"kvm_hosts": list(sims)},
        monkeypatch=monkeypatch,
    )


STEPS = [
    "[ ! -L /run/kvm-qemu-bridge ] && mkdir -p -m 755 /run/kvm-qemu-bridge && [ -d /run/kvm-qemu-bridge ] "
    "&& [ ! -L /run/kvm-qemu-bridge ]",
    "upload /run/kvm-qemu-bridge/switch.sh",
    "timeout 60 sh /run/kvm-qemu-bridge/switch.sh stage",
    "timeout 30 sh /run/kvm-qemu-bridge/switch.sh arm",
    "call apply_change",
    "call verify_and_commit",
]


@pytest.mark.parametrize(
    ("distro", "backend"),
    [
        ("ubuntu2404", "netplan"),
        ("rocky9", "networkmanager"),
        ("alma8", "networkmanager"),
        ("centos7", "ifcfg"),
    ],
)
def test_deploy_runs_the_five_steps_with_the_family_tool(
    monkeypatch: pytest.MonkeyPatch, distro: str, backend: str
) -> None:
    result = bridge_plan(monkeypatch, {"sm-01": BridgeSim(DISTROS[distro])}, ORIGINAL_BRIDGE_DATA)
    [step] = result.steps["sm-01"]
    assert step.name == f"Bridge networking | Bridge br0 ({backend}) behind a 120 s rollback"
    assert step.commands == STEPS
    assert step.uploads == {"/run/kvm-qemu-bridge/switch.sh": switch_script(ORIGINAL_BRIDGE, backend)}


def test_deploy_converged_host_has_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"kvm_bridge_ports": "eth0", "kvm_bridge_address": "10.10.5.2/24"}
    spec = parse_spec(data)
    converged = BridgeSim(
        DISTROS["ubuntu2404"],
        bridge_state=fact_output(spec.stamp("netplan"), "committed", LINKS_CONVERGED, ADDRS_CONVERGED),
    )
    changed = BridgeSim(
        DISTROS["ubuntu2404"],
        bridge_state=fact_output(spec.stamp("netplan"), "committed", LINKS_CONVERGED, ADDRS_CONVERGED),
    )
    result = bridge_plan(monkeypatch, {"sm-01": converged}, data)
    assert [step.commands for step in result.steps["sm-01"]] == [[]]
    # The same host with a new address: the whole switch runs again.
    result = bridge_plan(monkeypatch, {"sm-01": changed}, {**data, "kvm_bridge_address": "10.10.5.3/24"})
    assert result.steps["sm-01"][0].commands == STEPS


def test_deploy_refuses_while_a_rollback_is_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    pending = BridgeSim(DISTROS["rocky9"], bridge_state=fact_output(None, "applied", LINKS_CONVERGED, []))
    result = bridge_plan(monkeypatch, {"sm-01": pending}, SIMPLE_DATA)
    assert result.steps["sm-01"][0].commands == [
        "echo 'kvm-qemu: a bridge change on sm-01 is still pending (/run/kvm-qemu-bridge/state: applied); "
        "wait for its rollback or commit, nothing was changed' >&2 && exit 1"
    ]


def test_deploy_unsupported_host_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = {"sm-01": BridgeSim(DISTROS["debian12"]), "sm-02": BridgeSim(DISTROS["ubuntu2404"])}
    result = bridge_plan(monkeypatch, sims, SIMPLE_DATA)
    assert result.steps["sm-01"][0].commands == [
        "echo 'kvm-qemu: sm-01: Debian without netplan (ifupdown is not managed); install netplan.io or set "
        "kvm_bridge_backend' >&2 && exit 1"
    ]
    assert result.steps["sm-02"][0].commands == STEPS
    with_netplan = {"sm-01": BridgeSim(DISTROS["debian12"], packages={"netplan"})}
    assert (
        bridge_plan(monkeypatch, with_netplan, SIMPLE_DATA)
        .steps["sm-01"][0]
        .name.endswith("Bridge br0 (netplan) behind a 120 s rollback")
    )


def test_deploy_bad_data_stops_before_any_host(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = {"sm-01": BridgeSim(DISTROS["ubuntu2404"]), "sm-02": BridgeSim(DISTROS["ubuntu2404"])}
    with pytest.raises(SettingError, match="sm-01: kvm_bridge_gateway=10.9.9.1: not inside 10.10.5.0/24"):
        bridge_plan(
            monkeypatch,
            sims,
            {
                "kvm_bridge_ports": "eth0",
                "kvm_bridge_address": "10.10.5.2/24",
                "kvm_bridge_gateway": "10.9.9.1",
            },
        )
    assert sims["sm-01"].fact_calls == []


def test_deploy_only_on_kvm_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    result = plan(
        "deploys/bridge.py",
        {"mgmt-01": BridgeSim(DISTROS["ubuntu2404"])},
        {"mgmt-01": SIMPLE_DATA},
        {"mgmt": ["mgmt-01"]},
        monkeypatch=monkeypatch,
    )
    assert result.steps["mgmt-01"] == []


# --- verification over a new connection (real local connector) ----------------------------------


def local_host() -> tuple[State, Any]:
    inventory = Inventory((["@local"], {}))
    return State(inventory=inventory, config=Config()), inventory.get_host("@local")


def test_verify_and_commit_commits_an_applied_change(tmp_path: Path) -> None:
    stamp = tmp_path / "etc" / "bridge.json"
    (tmp_path / "switch.sh").write_text(switch_script(SIMPLE, "iproute2", str(tmp_path), str(stamp)))
    (tmp_path / "stamp").write_text(json.dumps(SIMPLE.stamp("iproute2")))
    (tmp_path / "state").write_text("applied\n")
    assert verify_and_commit(*local_host(), str(tmp_path), 5, {}) is True
    assert (tmp_path / "state").read_text() == "committed\n"
    assert json.loads(stamp.read_text()) == SIMPLE.stamp("iproute2")


@pytest.mark.parametrize("state", ["rolledback", "failed"])
def test_verify_and_commit_stops_when_the_host_rolled_back(tmp_path: Path, state: str) -> None:
    (tmp_path / "state").write_text(f"{state}\n")
    started = time.monotonic()
    assert verify_and_commit(*local_host(), str(tmp_path), 20, {}) is False
    assert time.monotonic() - started < 5
    assert (tmp_path / "state").read_text() == f"{state}\n"


def test_verify_and_commit_gives_up_after_its_deadline(tmp_path: Path) -> None:
    # No state file: the host never answers "applied".
    started = time.monotonic()
    assert verify_and_commit(*local_host(), str(tmp_path / "missing"), 1, {}) is False
    assert time.monotonic() - started < 5


def test_bridge_spec_links_order() -> None:
    assert ORIGINAL_BRIDGE.links == ("br0", "bond0", "eno1", "eno2")
    assert ORIGINAL_BRIDGE.virtual == ("br0", "bond0")
    assert isinstance(ORIGINAL_BRIDGE, BridgeSpec)
