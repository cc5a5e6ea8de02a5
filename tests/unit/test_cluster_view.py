"""The one view of the cluster in a run (deploys/cluster_state.py), as placement and the drift report
see it: each hypervisor read once, the management node's reservations read only when a plan needs them
and then once, and the same words when something could not be read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.host import Host
from pyinfra.context import ctx_host, ctx_state

from deploys.cluster_drift import drift_report
from deploys.placement import placement
from facts.util.host_state import HostState
from tests.unit.fact_builders import placed_domain_data, placed_host_data, typed
from tests.unit.vmspec_builders import vmspec

OWNER = "cluster-a"
VM1, VM2, VM3 = vmspec("vm1", "10.10.5.11"), vmspec("vm2", "10.10.5.12"), vmspec("vm3", "10.10.5.13")
VM2_RESERVED = {"ip": VM2.ipaddress, "hostname": VM2.hostname, "short": "vm2", "owner": OWNER}
STALE = "52:54:00:aa:bb:cc"
RESERVATIONS = {
    VM2.mac: VM2_RESERVED,
    STALE: {"ip": "10.10.5.99", "hostname": "gone.example.internal", "short": "gone", "owner": OWNER},
}


class Run:
    """One run over sm-01 (vm1, defined there), sm-02 (vm2, defined nowhere), sm-03 (vm3) and the
    management node ``mgmt``, with the hosts of ``limit`` read; every fact read is counted."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        limit: tuple[str, ...] = ("sm-01", "sm-02", "mgmt"),
        mgmt: bool = True,
        reservations: Callable[[], Any] = lambda: dict(RESERVATIONS),
    ) -> None:
        hosts: list[tuple[str, dict[str, Any]]] = [
            ("sm-01", {"kvm_vmspecs": [VM1]}), ("sm-02", {"kvm_vmspecs": [VM2]}), ("sm-03", {"kvm_vmspecs": [VM3]}),
        ]  # fmt: skip
        groups: dict[str, Any] = {"kvm_hosts": (["sm-01", "sm-02", "sm-03"], {})}
        if mgmt:
            hosts.append(("mgmt", {"dhcp_owner": OWNER}))
            groups["mgmt"] = (["mgmt"], {"kvm_all_vmspecs": [VM1, VM2, VM3]})
        self.inventory = Inventory((hosts, {}), **groups)
        limited = [self.inventory.get_host(name) for name in limit if self.inventory.get_host(name, None)]
        self.state = State(self.inventory, Config(), initial_limit=limited)
        for member in limited:
            self.state.activate_host(member)
        self.reads: list[tuple[str, str]] = []
        domain = placed_domain_data([("/secondary/vm1-vda.qcow2", None)])
        answers: dict[str, Callable[[Host], Any]] = {
            "Hypervisor": lambda member: (
                typed(placed_host_data({"vm1": domain})) if member.name == "sm-01" else HostState()
            ),
            "DnsmasqReservations": lambda member: reservations(),
        }

        def get_fact(member: Host, cls: Any, *args: Any, **kwargs: Any) -> Any:
            self.reads.append((member.name, cls.__name__))
            return answers[cls.__name__](member)

        monkeypatch.setattr(Host, "get_fact", get_fact)

    def on(self, name: str, func: Callable[[], Any]) -> Any:
        with ctx_state.use(self.state), ctx_host.use(self.inventory.get_host(name)):
            return func()

    def count(self, fact: str) -> dict[str, int]:
        counted: dict[str, int] = {}
        for name, what in self.reads:
            if what == fact:
                counted[name] = counted.get(name, 0) + 1
        return counted


def _held(run: Run) -> list[str]:
    """What placement holds back on sm-02, as sm-01 and sm-02 see it (one plan for the run)."""
    first, second = (run.on(name, placement) for name in ("sm-01", "sm-02"))
    assert first is second
    return first.held.get("sm-02", [])


def test_each_hypervisor_is_read_once_for_every_host_and_every_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, limit=("sm-01", "sm-02", "sm-03", "mgmt"))
    plans = {id(run.on(name, placement)) for name in ("sm-01", "sm-02", "sm-03", "mgmt")}
    assert len(plans) == 1  # one plan for the whole run
    run.on("mgmt", drift_report)
    assert run.count("Hypervisor") == {"sm-01": 1, "sm-02": 1, "sm-03": 1}


def test_with_every_hypervisor_read_placement_does_not_read_the_reservations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch, limit=("sm-01", "sm-02", "sm-03", "mgmt"))
    plan = run.on("sm-02", placement)
    assert plan.held == {} and plan.not_cloned("sm-02") == set()  # vm2 is provably new: built
    assert run.count("DnsmasqReservations") == {}


def test_an_unread_hypervisor_makes_placement_read_the_reservations_once_shared_with_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch)
    assert _held(run) == [
        "vm2: not built on sm-02: it may already be defined on sm-03, which is outside --limit: run "
        "without --limit, or include sm-03 in it; the management node holds a reservation for it "
        f"(vm2 {VM2.ipaddress} {VM2.mac})"
    ]
    run.on("mgmt", drift_report)
    assert run.count("DnsmasqReservations") == {"mgmt": 1}
    assert run.count("Hypervisor") == {"sm-01": 1, "sm-02": 1}


def test_placement_says_why_the_reservations_were_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    outside = Run(monkeypatch, limit=("sm-01", "sm-02"))
    assert _held(outside)[0].endswith(
        "; the DHCP reservations on mgmt, which could prove it new, were not read (mgmt is outside "
        "--limit: run without --limit, or include mgmt in it)"
    )
    assert outside.count("DnsmasqReservations") == {}
    alone = Run(monkeypatch, limit=("sm-01", "sm-02"), mgmt=False)
    assert _held(alone)[0].endswith(
        "; there is no management node whose DHCP reservations could prove it new"
    )

    def unreachable() -> Any:
        raise OSError("connection reset")

    failing = Run(monkeypatch, reservations=unreachable)
    assert _held(failing)[0].endswith(
        "; the DHCP reservations on mgmt, which could prove it new, were not read"
    )
    assert failing.count("DnsmasqReservations") == {"mgmt": 1}


def _report(run: Run, reporter: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        for name in ("mgmt", "sm-01", "sm-02", "sm-03"):
            if run.inventory.get_host(name, None) in run.state.active_hosts:
                run.on(name, drift_report)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{reporter}]")]
    return [line.split("] ", 1)[1].strip() if "] " in line else line for line in lines]


def test_the_drift_report_reads_the_management_node_when_it_is_in_the_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    report = _report(Run(monkeypatch), "mgmt", caplog)
    assert any(line.startswith("stale-reservation: 52:54:00:aa:bb:cc on mgmt") for line in report), report
    assert any(line.startswith("unread-host: sm-03") for line in report), report


@pytest.mark.parametrize(
    ("limit", "mgmt"), [(("sm-01", "sm-02"), True), (("sm-01", "sm-02"), False)], ids=["outside", "none"]
)
def test_without_the_management_node_the_first_hypervisor_reports_no_reservation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limit: tuple[str, ...], mgmt: bool
) -> None:
    run = Run(monkeypatch, limit=limit, mgmt=mgmt)
    report = _report(run, "sm-01", caplog)
    assert any(line.startswith("unread-host: sm-03") for line in report), report
    assert not any("reservation" in line for line in report), report
    assert run.count("DnsmasqReservations") == {}
