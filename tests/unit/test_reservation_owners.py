"""Owner tags: several manifests share one management node; each acts only on its own reservations.

Manifest A (a1 on sm-01) and manifest B (b1 on sm-02) write their reservations on one node. A knows
nothing of sm-02, so B's reservation looks stale to A: no VM of A has its MAC, no domain A can see
carries it. Prune with A must keep it, and must not release its lease.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploys._owner import derived_owner
from deploys.cluster_drift import owned_findings
from facts.dnsmasq import DnsmasqReservations, read_files_command
from inventories.dnsmasq_format import Entry, EntryError, parse_reservations, render_test_conf
from inventories.manifest_model import mac_for
from operations.dnsmasq import apply_command
from operations.util.dnsmasq_entries import plan, request_lines
from operations.util.drift import find, prune_plan
from tests.unit.fact_builders import drift_host_data, drift_vm_data, states
from tests.unit.vmspec_builders import vmspec as spec

needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")

OWNER_A, OWNER_B = "cluster-a-11111111", "cluster-b-22222222"
A1 = spec("a1", "10.10.5.21")
B1 = spec("b1", "10.10.5.22")
EA = Entry(A1.mac, A1.ipaddress, A1.hostname, A1.short_name, OWNER_A)
EB = Entry(B1.mac, B1.ipaddress, B1.hostname, B1.short_name, OWNER_B)


def run(command: object, path: str) -> subprocess.CompletedProcess[str]:
    stdin = "".join(f"{line}\n" for line in command.connector_arguments.get("_stdin", []))  # type: ignore[attr-defined]
    return subprocess.run(
        ["sh", "-c", command.get_raw_value()],  # type: ignore[attr-defined]
        input=stdin,
        capture_output=True,
        text=True,
        env={"PATH": f"{path}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        timeout=60,
    )


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A management node's files plus a stand-in ``ip`` and ``dhcp_release`` that log their calls."""
    (tmp_path / "d").mkdir()
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("no-resolv\nlisten-address=192.0.2.1\ndhcp-range=10.10.5.10,10.10.5.200,12h\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    released = tmp_path / "released"
    (bin_dir / "ip").write_text("#!/bin/sh\necho '2: eth9    inet 192.0.2.1/24 scope global eth9'\n")
    (bin_dir / "dhcp_release").write_text(f'#!/bin/sh\necho "$@" >> {released}\n')
    for tool in ("ip", "dhcp_release"):
        (bin_dir / tool).chmod(0o755)
    return {
        "hosts": tmp_path / "d" / "dhcp-hosts",
        "addn": tmp_path / "d" / "hosts",
        "conf": conf,
        "bin": bin_dir,
        "released": released,
    }


def command(node: dict[str, Path], requests: list[str], release: str | None = None) -> object:
    return apply_command(
        requests, str(node["hosts"]), str(node["addn"]), str(node["conf"]), None, None, release
    )


def reservations(node: dict[str, Path]) -> dict[str, dict[str, str]]:
    out = subprocess.run(
        ["sh", "-c", read_files_command(str(node["hosts"]), str(node["addn"])).get_raw_value()],
        capture_output=True,
        text=True,
        check=True,
    )
    return DnsmasqReservations().process(out.stdout.splitlines())


@needs_dnsmasq
def test_prune_with_one_manifest_keeps_the_other_manifests_reservation_and_lease(
    node: dict[str, Path],
) -> None:
    for entry in (EA, EB):
        result = run(command(node, request_lines([entry], present=True)), str(node["bin"]))
        assert result.returncode == 0, result.stderr
    fact = reservations(node)
    assert {mac: e["owner"] for mac, e in fact.items()} == {A1.mac: OWNER_A, B1.mac: OWNER_B}
    # The owner tag is a comment of the addn-hosts line; the dhcp-host line carries nothing dnsmasq acts on.
    assert f"{B1.mac},id:*,{B1.ipaddress},b1\n" in node["hosts"].read_text()
    assert f"{B1.ipaddress} b1.example.internal b1 # kvmq-owner {OWNER_B}\n" in node["addn"].read_text()

    # Manifest A's view: its hypervisor only; a gone VM of A's own is stale too.
    gone = Entry(mac_for("a-gone"), "10.10.5.29", "a-gone.example.internal", "a-gone", OWNER_A)
    assert run(command(node, request_lines([gone], present=True)), str(node["bin"])).returncode == 0
    fact = reservations(node)
    placement = {"sm-01": [A1]}
    findings = find(
        placement, states({"sm-01": drift_host_data({"a1": drift_vm_data("a1")})}), fact, mgmt="mgmt01"
    )
    # What prune planned before owner tags: B's reservation with A's own stale one.
    assert {e["mac"] for e in prune_plan(findings, fact).reservations} == {B1.mac, gone.mac}

    owned = owned_findings(findings, placement, fact, OWNER_A, prune_untagged=False)
    planned = prune_plan(owned, fact)
    assert [e["mac"] for e in planned.reservations] == [gone.mac]
    lines = [f.line() for f in owned]
    assert any(
        B1.mac in line and f"belongs to another manifest (owner tag {OWNER_B}" in line for line in lines
    )

    # Even asked to remove B's MAC as well (a stale plan), the node keeps it: the tag is checked under the lock.
    macs = [e["mac"] for e in planned.reservations] + [B1.mac]
    result = run(
        command(node, request_lines(macs, False, owner=OWNER_A, untagged=False), "192.0.2.1"),
        str(node["bin"]),
    )
    assert result.returncode == 0, result.stderr
    assert f"kept {B1.hostname}" in result.stderr and "belongs to another manifest" in result.stderr
    assert set(reservations(node)) == {A1.mac, B1.mac}
    assert node["released"].read_text().split("\n")[:-1] == [f"eth9 {gone.ip} {gone.mac}"]


def test_build_adopts_an_identical_untagged_entry_and_refuses_another_owners() -> None:
    untagged = Entry(EA.mac, EA.ip, EA.hostname, EA.short)
    assert plan({EA.mac: untagged}, [EA], True, owner=OWNER_A) == {EA.mac: EA}
    assert plan({EA.mac: EA}, [EA], True, owner=OWNER_A) == {EA.mac: EA}
    theirs = Entry(EA.mac, EA.ip, EA.hostname, EA.short, OWNER_B)
    with pytest.raises(EntryError, match=f"by another manifest \\(owner tag {OWNER_B}.*dhcp_owner={OWNER_B}"):
        plan({EA.mac: theirs}, [EA], True, owner=OWNER_A)


def test_removal_keeps_untagged_entries_unless_allowed() -> None:
    untagged = Entry(EB.mac, EB.ip, EB.hostname, EB.short)
    current = {EA.mac: EA, EB.mac: untagged}
    assert plan(current, [EA.mac, EB.mac], False, owner=OWNER_A, untagged=False) == {EB.mac: untagged}
    assert plan(current, [EA.mac, EB.mac], False, owner=OWNER_A, untagged=True) == {}
    assert plan({EB.mac: EB}, [EB.mac], False, owner=OWNER_A, untagged=True) == {EB.mac: EB}


@needs_dnsmasq
def test_dnsmasq_accepts_the_owner_tag(tmp_path: Path) -> None:
    conf = tmp_path / "t.conf"
    conf.write_text(render_test_conf([EA, EB]))
    result = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tagged_and_untagged_lines_parse() -> None:
    dhcp = f"{EA.dhcp_line()}\n{EB.mac},id:*,{EB.ip},{EB.short}\n"
    hosts = f"{EA.hosts_line()}\n{EB.ip} {EB.hostname} {EB.short}\n"
    parsed = parse_reservations(dhcp, hosts)
    assert parsed[EA.mac].owner == OWNER_A and parsed[EB.mac].owner == ""
    with pytest.raises(EntryError, match="owner tag 'Bad_Tag'"):
        parse_reservations(f"{EA.dhcp_line()}\n", f"{EA.ip} {EA.hostname} {EA.short} # kvmq-owner Bad_Tag\n")
    # Lines written with the owner as a dnsmasq set: tag are still read.
    older = parse_reservations(
        f"{EA.mac},id:*,set:kvmq-{OWNER_A},{EA.ip},{EA.short}\n", f"{EA.ip} {EA.hostname} {EA.short}\n"
    )
    assert older[EA.mac].owner == OWNER_A


def test_derived_owner_is_stable_and_differs_by_path(tmp_path: Path) -> None:
    one, two = tmp_path / "x" / "Cluster A.json", tmp_path / "y" / "Cluster A.json"
    assert derived_owner(one) == derived_owner(one)
    assert derived_owner(one) != derived_owner(two)
    assert derived_owner(one).startswith("cluster-a-") and len(derived_owner(one)) == len("cluster-a-") + 8
