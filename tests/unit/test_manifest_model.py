"""Validation rules of the manifest: the original scripts' format, extension keys, and every rejection with its path."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inventories.manifest_model import ManifestError, VmSpec, load, mac_for, parse, validate

REPO = Path(__file__).resolve().parents[2]

ORIGINAL_EXAMPLE = [
    {
        "host": "sm-01",
        "vmspecs": [
            {
                "name": "kvmhost01",
                "hostname": "kvmhost01.chnet.internal",
                "ipaddress": "10.10.5.11",
                "vcpus": 2,
                "memoryGb": 4,
                "maxMemoryGb": 8,
                "numDisks": 0,
                "diskSize": 0,
            }
        ],
    }
]


def vm(**overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(ORIGINAL_EXAMPLE[0]["vmspecs"][0])
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not ...}


def manifest(*vmspecs: dict[str, Any], host: str = "sm-01") -> list[dict[str, Any]]:
    return [{"host": host, "vmspecs": list(vmspecs)}]


def test_original_example_is_accepted_unchanged() -> None:
    (entry,) = parse(ORIGINAL_EXAMPLE)
    assert entry.host == "sm-01"
    (spec,) = entry.vmspecs
    assert spec == VmSpec(
        name="kvmhost01",
        hostname="kvmhost01.chnet.internal",
        ipaddress="10.10.5.11",
        vcpus=2,
        memory_gib=4,
        max_memory_gib=8,
        num_disks=0,
        disk_size_gib=0,
        mac=mac_for("kvmhost01"),
        ssh_host="10.10.5.11",
    )
    assert spec.short_name == "kvmhost01"
    assert spec.memory_kib == 4 * 1024 * 1024


def test_original_statedb_example_with_description_and_fqdn_host() -> None:
    data = [
        {
            "host": "sm-04.itc.internal",
            "vmspecs": [vm(name="itc-statedb03", description="state db", numDisks=1, diskSize=60)],
        }
    ]
    assert validate(data) == []


def test_extension_keys() -> None:
    spec = vm(
        macaddress="52:54:00:AB:CD:EF",
        srcvm="rocky9",
        pool="fast",
        clone="linked",
        autostart=True,
        sshHost="127.0.3.1",
    )
    data = [{"host": "sm-01", "ssh": {"ssh_hostname": "127.0.1.1", "ssh_port": 2222}, "vmspecs": [spec]}]
    (entry,) = parse(data)
    (parsed,) = entry.vmspecs
    assert (parsed.mac, parsed.srcvm, parsed.pool, parsed.clone, parsed.autostart, parsed.ssh_host) == (
        "52:54:00:ab:cd:ef",
        "rocky9",
        "fast",
        "linked",
        True,
        "127.0.3.1",
    )
    assert entry.ssh == {"ssh_hostname": "127.0.1.1", "ssh_port": 2222}


def test_mac_is_deterministic_and_qemu_prefixed() -> None:
    assert mac_for("kvmhost01") == mac_for("kvmhost01")
    assert mac_for("kvmhost01") != mac_for("kvmhost02")
    assert mac_for("kvmhost01").startswith("52:54:00:")
    assert len(mac_for("x").split(":")) == 6


BAD_MANIFESTS = [
    (manifest(vm(memoryGb=16)), "[0].vmspecs[0].memoryGb: 16 is greater than maxMemoryGb 8"),
    (
        manifest(vm(numDisks=2, diskSize=0)),
        "[0].vmspecs[0].diskSize: must be at least 1 (GiB) when numDisks is 2",
    ),
    (manifest(vm(vcpus=0)), "[0].vmspecs[0].vcpus: 0 is less than the minimum of 1"),
    (manifest(vm(vcpus="2")), "[0].vmspecs[0].vcpus: '2' is not of type integer"),
    (manifest(vm(vcpus=True)), "[0].vmspecs[0].vcpus: True is not of type integer"),
    (manifest(vm(memoryGb=-1)), "[0].vmspecs[0].memoryGb: -1 is less than the minimum of 1"),
    (manifest(vm(numDisks=-1)), "[0].vmspecs[0].numDisks: -1 is less than the minimum of 0"),
    (manifest(vm(vcpus=...)), "[0].vmspecs[0]: missing required field 'vcpus'"),
    (manifest(vm(colour="red")), "[0].vmspecs[0]: unknown field(s) 'colour'"),
    (manifest(vm(name="bad name")), "[0].vmspecs[0].name: 'bad name' is not valid: a VM name uses letters"),
    (manifest(vm(name="-x")), "[0].vmspecs[0].name: '-x' is not valid"),
    (manifest(vm(name="a" * 64)), "[0].vmspecs[0].name: '" + "a" * 64 + "' is not valid"),
    (manifest(vm(name="../etc")), "[0].vmspecs[0].name: '../etc' is not valid"),
    (
        manifest(vm(hostname="under_score.example")),
        "[0].vmspecs[0].hostname: 'under_score.example' is not valid",
    ),
    (manifest(vm(hostname="-bad.example")), "[0].vmspecs[0].hostname: '-bad.example' is not valid"),
    (manifest(vm(ipaddress="10.10.5.256")), "[0].vmspecs[0].ipaddress: '10.10.5.256' is not valid"),
    (manifest(vm(ipaddress="10.10.5")), "[0].vmspecs[0].ipaddress: '10.10.5' is not valid"),
    (manifest(vm(ipaddress="0.0.0.0")), "[0].vmspecs[0].ipaddress: '0.0.0.0' cannot be given to a VM"),
    (
        manifest(vm(macaddress="01:00:5e:00:00:01")),
        "[0].vmspecs[0].macaddress: '01:00:5e:00:00:01' is not valid",
    ),
    (
        manifest(vm(macaddress="52:54:00:zz:00:01")),
        "[0].vmspecs[0].macaddress: '52:54:00:zz:00:01' is not valid",
    ),
    (manifest(vm(clone="thin")), "[0].vmspecs[0].clone: 'thin' is not one of ['full', 'linked']"),
    (manifest(vm(autostart="yes")), "[0].vmspecs[0].autostart: 'yes' is not of type boolean"),
    (
        manifest(vm(), vm(ipaddress="10.10.5.12", hostname="b.example")),
        "[0].vmspecs[1].name: VM name 'kvmhost01' is already used at [0].vmspecs[0].name",
    ),
    (
        manifest(vm(), vm(name="b", hostname="b.example")),
        "[0].vmspecs[1].ipaddress: ipaddress '10.10.5.11' is already used at [0].vmspecs[0].ipaddress",
    ),
    (
        manifest(vm(), vm(name="b", ipaddress="10.10.5.12")),
        "[0].vmspecs[1].hostname: hostname 'kvmhost01.chnet.internal' is already used",
    ),
    (
        manifest(
            vm(macaddress="52:54:00:00:00:01"),
            vm(name="b", hostname="b.x", ipaddress="10.0.0.2", macaddress="52:54:00:00:00:01"),
        ),
        "[0].vmspecs[1].macaddress: macaddress '52:54:00:00:00:01' is already used",
    ),
    (
        manifest(vm(), vm(name="b", hostname="b.x", ipaddress="10.0.0.2", macaddress=mac_for("kvmhost01"))),
        f"[0].vmspecs[1].macaddress: macaddress '{mac_for('kvmhost01')}' is already used at [0].vmspecs[0] (derived)",
    ),
    (
        manifest(vm()) + manifest(vm(name="b", hostname="b.x", ipaddress="10.0.0.2")),
        "[1].host: host 'sm-01' is already used at [0].host",
    ),
    (
        manifest(vm()) + manifest(vm(hostname="b.x", ipaddress="10.0.0.2"), host="sm-02"),
        "[1].vmspecs[0].name: VM name 'kvmhost01' is already used at [0].vmspecs[0].name",
    ),
    ([{"host": "sm-01"}], "[0]: missing required field 'vmspecs'"),
    ([{"host": "sm 01", "vmspecs": []}], "[0].host: 'sm 01' is not valid"),
    (["sm-01"], "[0]: 'sm-01' is not of type object"),
    ({"host": "sm-01"}, "the manifest must be a JSON array of hosts, but its top level is an object"),
    ([], "the manifest is empty: it lists no hosts"),
]


@pytest.mark.parametrize(("data", "expected"), BAD_MANIFESTS, ids=[e[1][:60] for e in BAD_MANIFESTS])
def test_bad_manifest_is_rejected_with_its_path(data: Any, expected: str) -> None:
    problems = validate(data)
    assert any(p.startswith(expected) for p in problems), problems
    with pytest.raises(ManifestError):
        parse(data)


def test_every_problem_is_reported_at_once() -> None:
    data = manifest(vm(memoryGb=16), vm(name="b c", vcpus=0, ipaddress="10.10.5.11"))
    problems = validate(data)
    assert "[0].vmspecs[0].memoryGb: 16 is greater than maxMemoryGb 8" in problems
    assert any(p.startswith("[0].vmspecs[1].name:") for p in problems)
    assert any(p.startswith("[0].vmspecs[1].vcpus:") for p in problems)
    assert any(
        p.startswith("[0].vmspecs[1].ipaddress: ipaddress '10.10.5.11' is already used") for p in problems
    )


def test_load_file_errors_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found"):
        load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"host": "sm-01",\n  "vmspecs": []\n')
    with pytest.raises(ManifestError, match=r"not valid JSON: .* at line 4 column 1"):
        load(bad)


def _pyinfra(manifest_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "KVM_MANIFEST": str(manifest_file)}
    return subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inventory_groups_for_the_original_example(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(ORIGINAL_EXAMPLE))
    result = _pyinfra(path, "inventories/manifest.py", "debug-inventory")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Groups: kvm_hosts" in out
    assert "[@local]" in out and "mgmt" in out
    assert '"name": "kvmhost01"' in out
    guests = _pyinfra(path, "inventories/guests.py", "debug-inventory")
    out = guests.stdout + guests.stderr
    assert guests.returncode == 0, out
    assert "[kvmhost01]" in out and '"ssh_hostname": "10.10.5.11"' in out


def test_bad_manifest_stops_pyinfra_before_any_host_is_contacted(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    # The host is a loopback name that nothing listens on: a connection attempt would show "Connecting".
    path.write_text(json.dumps(manifest(vm(memoryGb=16), host="127.0.0.9")))
    result = _pyinfra(path, "-y", "inventories/manifest.py", "exec", "--", "true")
    assert result.returncode == 2
    assert "[0].vmspecs[0].memoryGb: 16 is greater than maxMemoryGb 8" in result.stderr
    assert "no host was contacted" in result.stderr
    assert "Connecting" not in result.stdout + result.stderr


def test_manifest_checker_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ORIGINAL_EXAMPLE))
    ok = subprocess.run(
        [sys.executable, "-m", "inventories.manifest_model", str(good)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "OK (1 host(s), 1 VM(s))" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "inventories.manifest_model", str(tmp_path / "none.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "manifest file not found" in bad.stderr
    example = subprocess.run(
        [sys.executable, "-m", "inventories.manifest_model", "manifest.example.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert example.returncode == 0, example.stderr


# --- values that must be refused exactly, before any host is contacted -------------------------

REFUSED_VALUES = [
    # full matches: a final newline is not part of a valid value
    (vm(name="web\n"), "[0].vmspecs[0].name: 'web\\n' is not valid"),
    (vm(ipaddress="10.10.5.11\n"), "[0].vmspecs[0].ipaddress: '10.10.5.11\\n' is not valid"),
    (
        vm(hostname="kvmhost01.chnet.internal\n"),
        "[0].vmspecs[0].hostname: 'kvmhost01.chnet.internal\\n' is not valid",
    ),
    (vm(macaddress="52:54:00:12:34:56\n"), "[0].vmspecs[0].macaddress: '52:54:00:12:34:56\\n' is not valid"),
    (vm(srcvm="centos7\n"), "[0].vmspecs[0].srcvm: 'centos7\\n' is not valid"),
    (vm(pool="default\n"), "[0].vmspecs[0].pool: 'default\\n' is not valid"),
    (vm(sshHost="10.10.5.11\n"), "[0].vmspecs[0].sshHost: '10.10.5.11\\n' is not valid"),
    # integers only, within the documented bounds
    (vm(memoryGb=16.0), "[0].vmspecs[0].memoryGb: 16.0 is not of type integer"),
    (vm(diskSize=4.0, numDisks=1), "[0].vmspecs[0].diskSize: 4.0 is not of type integer"),
    (vm(numDisks=True), "[0].vmspecs[0].numDisks: True is not of type integer"),
    (
        vm(memoryGb=4, maxMemoryGb=16385),
        "[0].vmspecs[0].maxMemoryGb: 16385 is greater than the maximum of 16384",
    ),
    (vm(numDisks=1, diskSize=65537), "[0].vmspecs[0].diskSize: 65537 is greater than the maximum of 65536"),
    (vm(vcpus=4097), "[0].vmspecs[0].vcpus: 4097 is greater than the maximum of 4096"),
    (vm(numDisks=21), "[0].vmspecs[0].numDisks: 21 is greater than the maximum of 20"),
    # what the DHCP step would refuse
    (
        vm(hostname="kvmhost01"),
        "[0].vmspecs[0].hostname: 'kvmhost01' is not valid: a hostname is a fully qualified",
    ),
    (vm(ipaddress="127.0.0.5"), "[0].vmspecs[0].ipaddress: '127.0.0.5' cannot be given to a VM"),
    (vm(ipaddress="224.0.0.1"), "[0].vmspecs[0].ipaddress: '224.0.0.1' cannot be given to a VM"),
    (vm(ipaddress="0.0.0.0"), "[0].vmspecs[0].ipaddress: '0.0.0.0' cannot be given to a VM"),
    (vm(macaddress="00:00:00:00:00:00"), "[0].vmspecs[0].macaddress: '00:00:00:00:00:00' is not valid"),
    # control characters in free text
    (
        vm(description="web\nserver"),
        "[0].vmspecs[0].description: 'web\\nserver' is not valid: control characters",
    ),
    (vm(description="bell\x07"), "[0].vmspecs[0].description: 'bell\\x07' is not valid: control characters"),
    # a VM cannot be its own base
    (vm(srcvm="kvmhost01"), "[0].vmspecs[0].srcvm: 'kvmhost01' is the VM's own name"),
    (vm(name="centos7"), "[0].vmspecs[0].name: 'centos7' is the VM's own base (srcvm defaults to 'centos7')"),
]


@pytest.mark.parametrize(("spec", "expected"), REFUSED_VALUES, ids=[e[1][:70] for e in REFUSED_VALUES])
def test_value_is_refused(spec: dict[str, Any], expected: str) -> None:
    problems = validate(manifest(spec))
    assert any(p.startswith(expected) for p in problems), problems


def test_host_description_with_control_characters_is_refused() -> None:
    data = [{"host": "sm-01", "description": "rack\r1", "vmspecs": [vm()]}]
    assert any(p.startswith("[0].description: 'rack\\r1' is not valid") for p in validate(data))


def test_two_fqdns_with_one_short_name_are_refused() -> None:
    data = manifest(vm(), vm(name="b", hostname="kvmhost01.other.internal", ipaddress="10.10.5.12"))
    assert (
        "[0].vmspecs[1].hostname: short name 'kvmhost01' of 'kvmhost01.other.internal' is already used at "
        "[0].vmspecs[0].hostname (both would answer to 'kvmhost01')" in validate(data)
    )


@pytest.mark.parametrize("address", ["10.10.5.255", "10.10.6.0", "192.168.0.255"])
def test_network_and_broadcast_looking_addresses_are_host_addresses(address: str) -> None:
    assert validate(manifest(vm(ipaddress=address))) == []


def test_upper_bounds_are_accepted() -> None:
    spec = vm(vcpus=4096, memoryGb=16384, maxMemoryGb=16384, numDisks=20, diskSize=65536)
    assert validate(manifest(spec)) == []


def test_validator_refuses_what_the_dhcp_step_refuses() -> None:
    from operations.util.dnsmasq_entries import EntryError, make_entry

    values = [
        ("ipaddress", "127.0.0.1"),
        ("ipaddress", "0.0.0.0"),
        ("ipaddress", "239.1.1.1"),
        ("ipaddress", "255.255.255.255"),
        ("ipaddress", "10.10.5.255"),
        ("ipaddress", "10.10.5.0"),
        ("macaddress", "00:00:00:00:00:00"),
        ("macaddress", "01:00:5e:00:00:01"),
        ("macaddress", "52:54:00:aa:bb:cc"),
        ("hostname", "single"),
        ("hostname", "a.b"),
        ("hostname", "x" * 64 + ".example"),
        ("hostname", "vm.example\n"),
        ("hostname", "vm\n.example"),
    ]
    for key, value in values:
        spec = vm(**{key: value})
        manifest_ok = validate(manifest(spec)) == []
        try:
            make_entry(
                spec.get("macaddress", mac_for(spec["name"])),
                spec["ipaddress"],
                spec["hostname"],
                spec["hostname"].split(".", 1)[0],
            )
            dhcp_ok = True
        except EntryError:
            dhcp_ok = False
        assert manifest_ok == dhcp_ok, (key, value, manifest_ok, dhcp_ok)


def test_binary_manifest_is_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ManifestError) as info:
        load(bad)
    assert (
        info.value.render()
        == f"{bad}: not a UTF-8 text file (byte 0x89 at offset 0): a manifest is JSON text"
    )


def test_binary_manifest_through_the_checker_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"[\xff]")
    result = subprocess.run(
        [sys.executable, "-m", "inventories.manifest_model", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "not a UTF-8 text file" in result.stderr
