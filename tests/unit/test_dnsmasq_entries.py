"""Pure reservation logic: field checks, parsing both files, conflicts, rendering and the /etc/hosts block."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventories.manifest_model import VmSpec
from operations.util.dnsmasq_entries import (
    ADDN_HOSTS_HEADER,
    BLOCK_BEGIN,
    BLOCK_END,
    DHCP_HOSTS_HEADER,
    Entry,
    EntryError,
    entries_from,
    macs_from,
    make_entry,
    parse_addn_hosts,
    parse_dhcp_hosts,
    parse_dhcp_range,
    parse_reservations,
    plan,
    render_addn_hosts,
    render_dhcp_hosts,
    render_test_conf,
    reservation,
    splice_hosts_block,
    unified_diff,
)

FIXTURES = Path(__file__).parent / "fixtures" / "dnsmasq"

E13 = Entry("52:54:00:00:00:13", "10.10.5.13", "vm13.example.internal", "vm13")
E130 = Entry("52:54:00:00:01:30", "10.10.5.130", "vm130.example.internal", "vm130")
INFRA = Entry("52:54:00:aa:bb:cc", "10.10.5.2", "infra.example.internal", "infra")


def by_mac(*entries: Entry) -> dict[str, Entry]:
    return {entry.mac: entry for entry in entries}


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8", "surrogateescape")


# --- field checks ------------------------------------------------------------------------------


def test_make_entry_normalises_mac_and_ip() -> None:
    entry = make_entry("52:54:00:AA:BB:CC", "10.10.5.2", "infra.example.internal", "infra")
    assert entry == INFRA


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mac", "52:54:00:aa:bb", "not a MAC address"),
        ("mac", "52-54-00-aa-bb-cc", "not a MAC address"),
        ("mac", "01:00:5e:00:00:01", "multicast MAC"),
        ("ip", "10.10.5.013", "not an IPv4 address"),
        ("ip", "10.10.5.256", "not an IPv4 address"),
        ("ip", "10.10.5.13 ", "not an IPv4 address"),
        ("ip", "127.0.0.1", "cannot be reserved"),
        ("hostname", "vm13", "fully qualified"),
        ("hostname", "vm_13.example.internal", "fully qualified"),
        ("hostname", "vm13.example.internal.", "fully qualified"),
        ("short", "vm13.example", "short host name"),
        ("short", "-vm13", "short host name"),
    ],
)
def test_make_entry_rejects_bad_fields(field: str, value: str, message: str) -> None:
    values = E13.to_dict() | {field: value}
    with pytest.raises(EntryError, match=message):
        make_entry(**values)


def test_make_entry_lists_every_bad_field() -> None:
    with pytest.raises(EntryError) as info:
        make_entry("nope", "10.10.5.300", "x", "y.z")
    assert len(info.value.problems) == 4


def test_entries_from_accepts_plain_dicts_and_vmspecs_but_not_vmspec_dicts() -> None:
    spec = VmSpec(
        name="vm130",
        hostname="vm130.example.internal",
        ipaddress="10.10.5.130",
        vcpus=1,
        memory_gib=1,
        max_memory_gib=1,
        num_disks=0,
        disk_size_gib=0,
        mac="52:54:00:00:01:30",
    )
    assert entries_from([E13.to_dict(), spec, spec]) == [E13, E130]
    assert reservation(spec) == E130
    with pytest.raises(EntryError, match="vm130.example.internal: None is not an IPv4 address"):
        entries_from([spec.to_json()])


def test_entries_from_explicit_short_name_wins() -> None:
    (entry,) = entries_from([E13.to_dict() | {"short": "thirteen"}])
    assert entry.short == "thirteen"


def test_entries_from_reports_the_entry() -> None:
    with pytest.raises(EntryError, match=r"vm13\.example\.internal: '10\.10\.5\.1300' is not an IPv4"):
        entries_from([E13.to_dict() | {"ip": "10.10.5.1300"}])


def test_entries_from_duplicates_within_entries() -> None:
    twin = E130.to_dict() | {"ip": "10.10.5.13"}
    with pytest.raises(
        EntryError, match=r"IP address 10\.10\.5\.13 of 52:54:00:00:01:30 .* also given in entries"
    ):
        entries_from([E13.to_dict(), twin])
    with pytest.raises(EntryError, match="MAC 52:54:00:00:00:13 is given twice"):
        entries_from([E13.to_dict(), E13.to_dict() | {"ip": "10.10.5.14"}])
    same_name = E130.to_dict() | {"hostname": "VM13.example.internal", "short": "other"}
    with pytest.raises(EntryError, match="name VM13.example.internal of 52:54:00:00:01:30"):
        entries_from([E13.to_dict(), same_name])


def test_identical_repeats_collapse() -> None:
    assert entries_from([E13.to_dict(), E13.to_dict()]) == [E13]


def test_macs_from_needs_only_the_mac() -> None:
    assert macs_from([{"mac": "52:54:00:00:00:13"}, E13.to_dict(), {"mac": "52:54:00:00:01:30"}]) == [
        E13.mac,
        E130.mac,
    ]
    with pytest.raises(EntryError):
        macs_from([{"hostname": "vm13.example.internal"}])


# --- reading the files -------------------------------------------------------------------------


def test_parse_fixture_files() -> None:
    entries = parse_reservations(fixture_text("dhcp-hosts"), fixture_text("hosts"))
    assert entries == by_mac(E13, E130, INFRA)


def test_missing_files_are_empty() -> None:
    assert parse_reservations(None, None) == {}
    assert parse_reservations(render_dhcp_hosts([]), None) == {}


def test_thirteen_and_one_hundred_thirty_are_different() -> None:
    dhcp = "52:54:00:00:01:30,10.10.5.130,vm130\n52:54:00:00:00:13,10.10.5.13,vm13\n"
    hosts = "10.10.5.13 vm13.example.internal vm13\n10.10.5.130 vm130.example.internal vm130\n"
    assert parse_reservations(dhcp, hosts) == by_mac(E13, E130)
    # Removing .13 leaves .130 alone, and the other way round.
    assert plan(by_mac(E13, E130), [E13.mac], present=False) == by_mac(E130)
    assert plan(by_mac(E13, E130), [E130.mac], present=False) == by_mac(E13)
    # Adding .13 next to .130 (and .1 next to both) is no conflict.
    e1 = Entry("52:54:00:00:00:01", "10.10.5.1", "vm1.example.internal", "vm1")
    assert plan(by_mac(E130), [E13, e1], present=True) == by_mac(E130, E13, e1)


@pytest.mark.parametrize(
    ("dhcp", "hosts", "message"),
    [
        ("52:54:00:00:00:13,10.10.5.13\n", "", r"dhcp-hosts line 1 .*found 2 field"),
        ("52:54:00:00:00:13,10.10.5.13,vm13,infinite\n", "", "found 4 field"),
        ("52:54:00:00:00:13,10.10.5.013,vm13\n", "", r"'10\.10\.5\.013' is not an IPv4"),
        ("", "10.10.5.13 vm13.example.internal vm13 extra\n", r"hosts line 1 .*found 4 field"),
        (
            "",
            "10.10.5.13 vm13.example.internal vm13\n",
            r"hosts line 1: 10\.10\.5\.13 has no line in dhcp-hosts",
        ),
        ("52:54:00:00:00:13,10.10.5.13,vm13\n", "", r"dhcp-hosts line 1: 10\.10\.5\.13 has no line in hosts"),
        (
            "52:54:00:00:00:13,10.10.5.13,vm13\n52:54:00:00:00:13,10.10.5.14,vm14\n",
            "10.10.5.13 vm13.example.internal vm13\n10.10.5.14 vm14.example.internal vm14\n",
            "MAC 52:54:00:00:00:13 is listed twice",
        ),
        (
            "52:54:00:00:00:13,10.10.5.13,vm13\n52:54:00:00:00:14,10.10.5.13,vm14\n",
            "10.10.5.13 vm13.example.internal vm13\n",
            r"line 2: 10\.10\.5\.13 is already reserved on line 1",
        ),
        (
            "52:54:00:00:00:13,10.10.5.13,vm13\n",
            "10.10.5.13 vm13.example.internal other\n",
            "short name 'vm13' differs from 'other'",
        ),
    ],
)
def test_garbage_and_disagreement_are_errors(dhcp: str, hosts: str, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        parse_reservations(dhcp, hosts)


def test_parsers_report_line_numbers() -> None:
    assert parse_dhcp_hosts("# x\n\n52:54:00:00:00:13,10.10.5.13,vm13\n") == [(3, E13.mac, E13.ip, E13.short)]
    # Lines written with id:* (the client identifier is ignored) parse to the same reservation.
    assert parse_dhcp_hosts("52:54:00:00:00:13,id:*,10.10.5.13,vm13\n") == [(1, E13.mac, E13.ip, E13.short)]
    assert parse_addn_hosts("\n  10.10.5.13\tvm13.example.internal  vm13  \n") == [
        (2, E13.ip, E13.hostname, E13.short)
    ]


# --- rendering ---------------------------------------------------------------------------------


def test_render_is_sorted_numerically_and_round_trips() -> None:
    dhcp, hosts = render_dhcp_hosts([E130, INFRA, E13]), render_addn_hosts([E130, INFRA, E13])
    assert dhcp == (
        f"{DHCP_HOSTS_HEADER}\n"
        "52:54:00:aa:bb:cc,id:*,10.10.5.2,infra\n"
        "52:54:00:00:00:13,id:*,10.10.5.13,vm13\n"
        "52:54:00:00:01:30,id:*,10.10.5.130,vm130\n"
    )
    assert hosts == (
        f"{ADDN_HOSTS_HEADER}\n"
        "10.10.5.2 infra.example.internal infra\n"
        "10.10.5.13 vm13.example.internal vm13\n"
        "10.10.5.130 vm130.example.internal vm130\n"
    )
    assert parse_reservations(dhcp, hosts) == by_mac(E13, E130, INFRA)


def test_render_test_conf() -> None:
    assert render_test_conf([E130, E13]) == (
        "dhcp-host=52:54:00:00:00:13,id:*,10.10.5.13,vm13\n"
        "dhcp-host=52:54:00:00:01:30,id:*,10.10.5.130,vm130\n"
    )
    assert render_test_conf([]) == ""


def test_unified_diff_shows_changed_lines_only() -> None:
    old, new = render_addn_hosts([E13, E130]), render_addn_hosts([E13])
    assert unified_diff(old, new, "hosts") == ["-10.10.5.130 vm130.example.internal vm130"]
    assert unified_diff(None, "a\n", "x") == ["+a"]


# --- planning ----------------------------------------------------------------------------------


def test_plan_adds_and_keeps_identical_entries() -> None:
    assert plan(by_mac(E130), [E13], present=True) == by_mac(E13, E130)
    same = Entry(E13.mac, E13.ip, E13.hostname.upper(), E13.short)
    assert plan(by_mac(E13), [same], present=True) == by_mac(E13)


@pytest.mark.parametrize(
    "other",
    [
        Entry(E13.mac, "10.10.5.14", "vm13.example.internal", "vm13"),
        Entry(E13.mac, E13.ip, "thirteen.example.internal", "thirteen"),
        Entry(E13.mac, "10.10.6.13", "vm13.other.internal", "vm13"),
    ],
)
def test_same_mac_with_another_ip_or_name_is_a_conflict_naming_both(other: Entry) -> None:
    # A VM of the same name in another manifest derives the same MAC: never a silent takeover.
    with pytest.raises(EntryError) as info:
        plan(by_mac(E13, E130), [other], present=True, source="the files")
    message = str(info.value)
    assert (
        f"MAC {E13.mac} of {other.hostname} ({other.ip}) is already reserved in the files for "
        f"{E13.hostname} ({E13.ip})" in message
    )


def test_plan_remove_ignores_unknown_macs() -> None:
    assert plan(by_mac(E13), ["52:54:00:ff:ff:ff"], present=False) == by_mac(E13)


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (
            Entry("52:54:00:00:00:99", "10.10.5.13", "vm99.example.internal", "vm99"),
            r"IP address 10\.10\.5\.13 of 52:54:00:00:00:99 \(vm99\.example\.internal\) is already reserved "
            r"in FILES for 52:54:00:00:00:13 \(vm13\.example\.internal\)",
        ),
        (
            Entry("52:54:00:00:00:99", "10.10.5.99", "VM13.Example.Internal", "vm99"),
            r"name VM13\.Example\.Internal of 52:54:00:00:00:99 is already reserved in FILES for 52:54:00:00:00:13",
        ),
        (
            Entry("52:54:00:00:00:99", "10.10.5.99", "vm99.example.internal", "vm13"),
            r"name vm13 of 52:54:00:00:00:99 is already reserved in FILES for 52:54:00:00:00:13",
        ),
    ],
)
def test_plan_conflicts_with_other_macs(new: Entry, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        plan(by_mac(E13, E130), [new], present=True, source="FILES")


def test_plan_conflict_lists_every_problem() -> None:
    new = Entry("52:54:00:00:00:99", "10.10.5.13", "vm130.example.internal", "vm130")
    with pytest.raises(EntryError) as info:
        plan(by_mac(E13, E130), [new], present=True, dhcp_range="10.10.5.100,10.10.5.200")
    assert len(info.value.problems) == 4  # IP, FQDN, short name, range


def test_plan_released_values_are_reusable() -> None:
    # Once vm13 is removed, its address and names are free for another MAC.
    new = Entry("52:54:00:00:00:99", "10.10.5.13", "vm13.example.internal", "vm13")
    removed = plan(by_mac(E13, E130), [E13.mac], present=False)
    assert plan(removed, [new], present=True) == by_mac(new, E130)


@pytest.mark.parametrize(
    ("dhcp_range", "ok"),
    [
        ("10.10.5.10,10.10.5.200", True),
        ("10.10.5.10,10.10.5.200,255.255.255.0,12h", True),
        ("set:vms,10.10.5.13,10.10.5.130", True),
        ("10.10.5.14,10.10.5.200", False),
        ("10.10.5.10,10.10.5.129,255.255.255.0", False),
    ],
)
def test_plan_dhcp_range(dhcp_range: str, ok: bool) -> None:
    if ok:
        assert plan({}, [E13, E130], present=True, dhcp_range=dhcp_range) == by_mac(E13, E130)
    else:
        with pytest.raises(EntryError, match="is outside dhcp_range"):
            plan({}, [E13, E130], present=True, dhcp_range=dhcp_range)


@pytest.mark.parametrize("bad", ["10.10.5.10", "10.10.5.10,static", "10.10.5.200,10.10.5.10", ""])
def test_parse_dhcp_range_rejects(bad: str) -> None:
    with pytest.raises(EntryError, match="dhcp_range"):
        parse_dhcp_range(bad)


# --- /etc/hosts block --------------------------------------------------------------------------


def test_splice_replaces_block_keeping_every_other_byte() -> None:
    text = fixture_text("etc-hosts")
    before, rest = text.split(f"{BLOCK_BEGIN}\n")
    after = rest.split(f"{BLOCK_END}\n")[1]
    new = splice_hosts_block(text, [E13.hosts_line()])
    assert new == f"{before}{BLOCK_BEGIN}\n{E13.hosts_line()}\n{BLOCK_END}\n{after}"
    raw = new.encode("utf-8", "surrogateescape")
    original = (FIXTURES / "etc-hosts").read_bytes()
    assert raw.startswith(b"127.0.0.1\tlocalhost\r\n# caf\xe9 (latin-1 byte)   \n")
    assert raw.endswith(b"\n192.168.1.1 after.block")  # no newline added to the last line
    assert raw.replace(f"{E13.hosts_line()}\n".encode(), b"") == original.replace(
        b"10.10.5.99 old.example.internal old\n", b""
    )


def test_splice_removes_block_when_empty() -> None:
    text = fixture_text("etc-hosts")
    new = splice_hosts_block(text, [])
    assert BLOCK_BEGIN not in new and "old.example.internal" not in new
    assert new == text.replace(f"{BLOCK_BEGIN}\n10.10.5.99 old.example.internal old\n{BLOCK_END}\n", "")


def test_splice_appends_block_after_missing_newline() -> None:
    assert splice_hosts_block("127.0.0.1 localhost", ["a"]) == (
        f"127.0.0.1 localhost\n{BLOCK_BEGIN}\na\n{BLOCK_END}\n"
    )
    assert splice_hosts_block("x\n", ["a"]) == f"x\n{BLOCK_BEGIN}\na\n{BLOCK_END}\n"


def test_splice_without_changes_is_identity() -> None:
    text = "1.1.1.1 one\r\n\n  \t\n"
    assert splice_hosts_block(text, []) == text
    block = splice_hosts_block(text, ["a"])
    assert splice_hosts_block(block, ["a"]) == block


def test_splice_missing_file() -> None:
    assert splice_hosts_block(None, []) is None
    assert splice_hosts_block(None, ["a"]) == f"{BLOCK_BEGIN}\na\n{BLOCK_END}\n"


def test_splice_tolerates_trailing_whitespace_and_cr_on_markers() -> None:
    text = f"x\n{BLOCK_BEGIN}  \r\nold\n{BLOCK_END}\r\ny\n"
    assert splice_hosts_block(text, ["new"]) == f"x\n{BLOCK_BEGIN}\nnew\n{BLOCK_END}\ny\n"


@pytest.mark.parametrize(
    "text",
    [
        f"{BLOCK_BEGIN}\na\n",
        f"{BLOCK_END}\na\n{BLOCK_BEGIN}\n",
        f"{BLOCK_BEGIN}\n{BLOCK_END}\n{BLOCK_BEGIN}\n{BLOCK_END}\n",
    ],
)
def test_splice_refuses_malformed_blocks(text: str) -> None:
    with pytest.raises(EntryError, match="malformed kvm-qemu block"):
        splice_hosts_block(text, ["a"])


@pytest.mark.parametrize(
    ("mac", "ip", "hostname", "short"),
    [
        ("52:54:00:12:34:56\n", "10.10.5.11", "vm.example.internal", "vm"),
        ("52:54:00:12:34:56", "10.10.5.11\n", "vm.example.internal", "vm"),
        ("52:54:00:12:34:56", "10.10.5.11", "vm.example.internal\n", "vm"),
        ("52:54:00:12:34:56", "10.10.5.11", "vm.example.internal", "vm\n"),
        ("00:00:00:00:00:00", "10.10.5.11", "vm.example.internal", "vm"),
        ("52:54:00:12:34:56", "127.0.0.1", "vm.example.internal", "vm"),
        ("52:54:00:12:34:56", "10.10.5.11", "vm", "vm"),
    ],
)
def test_values_are_full_matches(mac: str, ip: str, hostname: str, short: str) -> None:
    with pytest.raises(EntryError):
        make_entry(mac, ip, hostname, short)


def test_network_and_broadcast_looking_addresses_are_reservable() -> None:
    assert make_entry("52:54:00:12:34:56", "10.10.5.255", "vm.example.internal", "vm").ip == "10.10.5.255"
    assert make_entry("52:54:00:12:34:56", "10.10.6.0", "vm.example.internal", "vm").ip == "10.10.6.0"
