"""Snapshot plans (create, revert, delete), the fact's snapshot list, status, schema and ownership."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deploys._status import snapshot_cell
from facts.util.host_state import Domain
from facts.util.libvirt_parse import snapshots_from
from inventories.manifest_model import parse, validate
from operations.util.snapshot_plan import create_plan, delete_plan, overlay_path, revert_plan
from operations.util.storage_ownership import owned_volumes
from tests.unit.fact_builders import typed, typed_domain
from tests.unit.vmspec_builders import vm1_diskless as spec

URI = "qemu:///system"
IMG = "/data01/primary/vm1-vda.img"
OVL = "/data01/primary/vm1-vda@before-upgrade.qcow2"


def step(label: str, command: str) -> str:
    """A step as operations/util/virsh.py bounds it (60 s)."""
    return (
        f"{{ timeout -k 5 60 {command} || {{ rc=$?; if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "
        f"'kvm-qemu: timed out after 60 s: {label}' >&2; fi; (exit $rc); }}; }}"
    )


SNAPSHOT_XML = f"""<domainsnapshot><name>before-upgrade</name><state>disk-snapshot</state>
<creationTime>1764100000</creationTime>
<disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='{OVL}'/></disk>
<disk name='hdc' snapshot='no'/></disks>
<domain type='kvm'><name>vm1</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{IMG}'/><target dev='vda'/></disk>
</devices></domain></domainsnapshot>"""

SECOND_XML = (
    SNAPSHOT_XML.replace("<name>before-upgrade</name>", "<name>second</name>")
    .replace("1764100000", "1764100100")
    .replace("<state>", "<parent><name>before-upgrade</name></parent><state>")
)


def domain_data(on_overlay: bool = False, state: str = "shut off") -> dict[str, Any]:
    path, fmt = (OVL, "qcow2") if on_overlay else (IMG, "raw")
    return {
        "state": state,
        "persistent": True,
        "disks": [
            {"target": "vda", "device": "disk", "path": path, "format": fmt},
            {"target": "hdc", "device": "cdrom", "path": None, "format": "raw"},
        ],
        "xml": "<domain><name>vm1</name><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='{fmt}'/><source file='{path}'/><backingStore/><target dev='vda'/>"
        "</disk></devices></domain>",
        "snapshots": snapshots_from({"name": "vm1", "snapshots": [{"xml": SNAPSHOT_XML, "current": True}]})
        if on_overlay
        else [],
    }


def domain(on_overlay: bool = False, state: str = "shut off") -> Domain:
    return typed_domain(domain_data(on_overlay, state), "vm1")


def test_fact_lists_snapshots_oldest_first_with_the_files_below_their_overlays() -> None:
    found = [
        s.to_dict()
        for s in snapshots_from(
            {"name": "vm1", "snapshots": [{"xml": SECOND_XML, "current": True}, {"xml": SNAPSHOT_XML}]}
        )
    ]
    assert [(s["name"], s["parent"], s["current"]) for s in found] == [
        ("before-upgrade", None, False),
        ("second", "before-upgrade", True),
    ]
    assert found[0]["disks"] == [
        {"target": "vda", "snapshot": "external", "path": OVL},
        {"target": "hdc", "snapshot": "no", "path": None},
    ]
    assert [(d["target"], d["path"], d["format"]) for d in found[0]["domain_disks"]] == [("vda", IMG, "raw")]
    assert snapshots_from({"name": "old probe"}) == []


def test_create_makes_a_private_overlay_then_records_the_snapshot() -> None:
    plan = create_plan("vm1", ["before-upgrade"], domain(), URI)
    assert plan is not None and plan.error is None
    command = plan.command.get_raw_value()
    assert command.startswith(
        f'( umask 077; out=0; in=; t=; cleanup() {{ if [ -n "$in" ]; then for f in {OVL} ;'
    )
    # Filled in the private directory (./<name>), linked into place, then recorded.
    create = step(
        f"create {OVL}", f"qemu-img create -q -f qcow2 -F raw -b {IMG} ./vm1-vda@before-upgrade.qcow2"
    )
    record = step(
        "virsh snapshot-create-as vm1",
        "virsh -q -c qemu:///system snapshot-create-as vm1 before-upgrade --disk-only --atomic --reuse-external "
        f"--diskspec vda,snapshot=external,file={OVL},driver=qcow2 --diskspec hdc,snapshot=no",
    )
    assert f"if {create} && for f in {OVL} ; do [ -e" in command
    assert f"done && for f in {OVL} ; do if ! ln -T" in command
    assert f'[ 1 -eq "$out" ] && {record} >/dev/null ; then trap - EXIT;' in command
    assert plan.actions == [f"create snapshot before-upgrade (new overlay(s) {OVL})"]


def test_create_stacks_several_missing_snapshots_in_order_and_quotes_names() -> None:
    plan = create_plan("vm1", ["a", "b;x"], domain(), URI)
    command = plan.command.get_raw_value()
    first = "/data01/primary/vm1-vda@a.qcow2"
    assert f"qemu-img create -q -f qcow2 -F raw -b {IMG} ./vm1-vda@a.qcow2 ||" in command
    # The second overlay is made on the first one's final path, once that is in place and recorded.
    assert f"qemu-img create -q -f qcow2 -F qcow2 -b {first} './vm1-vda@b;x.qcow2' ||" in command
    assert (
        command.index('ln -T -- "./${f##*/}"')
        < command.index("snapshot-create-as vm1 a ")
        < command.index("./vm1-vda@b;x.qcow2")
        < command.index("snapshot-create-as vm1 'b;x' ")
    )


def test_create_is_a_no_op_when_the_snapshot_exists() -> None:
    assert create_plan("vm1", ["before-upgrade"], domain(on_overlay=True), URI) is None


@pytest.mark.parametrize("make", [create_plan, revert_plan])
def test_a_running_vm_is_refused(make: Any) -> None:
    names: Any = ["new"] if make is create_plan else "before-upgrade"
    plan = make("vm1", names, domain(on_overlay=True, state="running"), URI)
    assert plan.command is None
    assert (
        plan.error
        == "is running: snapshots are "
        + ("taken" if make is create_plan else "reverted")
        + " offline only; stop it first (deploys/stop.py)"
    )


def test_revert_empties_the_overlay_over_the_file_below_it() -> None:
    plan = revert_plan("vm1", "before-upgrade", domain(on_overlay=True), URI)
    assert plan.command.get_raw_value() == (
        f'umask 077; {{ for f in {OVL} ; do if [ -L "$f" ] || [ ! -f "$f" ]; then echo "kvm-qemu: $f is not '
        'a plain file; refusing to change the snapshots of vm1 " >&2; exit 1; fi; done; } && '
        + step(f"reset {OVL}", f"qemu-img create -q -f qcow2 -F raw -b {IMG} {OVL}")
    )


def test_revert_of_an_unknown_snapshot_names_the_ones_there() -> None:
    plan = revert_plan("vm1", "nope", domain(on_overlay=True), URI)
    assert plan.error == "has no snapshot nope (snapshots: before-upgrade)"


def test_only_the_newest_snapshot_can_be_reverted_to_or_deleted() -> None:
    data = domain_data(on_overlay=True)
    data["snapshots"] = snapshots_from(
        {"name": "vm1", "snapshots": [{"xml": SNAPSHOT_XML}, {"xml": SECOND_XML}]}
    )
    dom = typed_domain(data, "vm1")
    message = (
        "snapshot before-upgrade has later snapshot(s) second: only the newest one can be reverted to or "
        "deleted (delete the later ones first, newest first)"
    )
    assert revert_plan("vm1", "before-upgrade", dom, URI).error == message
    assert delete_plan("vm1", "before-upgrade", dom, typed({"domains": {"vm1": dom}}), URI).error == message


def test_revert_refuses_a_disk_that_moved_off_the_overlay() -> None:
    data = domain_data(on_overlay=True)
    data["disks"][0]["path"] = "/elsewhere/x.qcow2"
    dom = typed_domain(data, "vm1")
    assert (
        "disk vda is now /elsewhere/x.qcow2, not the snapshot's overlay"
        in revert_plan("vm1", "before-upgrade", dom, URI).error
    )


def test_delete_commits_then_points_the_domain_below_then_removes_metadata_and_overlay() -> None:
    dom = domain(on_overlay=True)
    plan = delete_plan("vm1", "before-upgrade", dom, typed({"domains": {"vm1": dom}}), URI)
    command = plan.command.get_raw_value()
    plain = (
        f'{{ for f in {OVL} ; do if [ -L "$f" ] || [ ! -f "$f" ]; then echo "kvm-qemu: $f is not a plain '
        'file; refusing to change the snapshots of vm1 " >&2; exit 1; fi; done; } && '
    )
    # The header check (tests/unit/test_snapshot_commit.py runs it) comes right before the commit.
    check = '{ timeout -k 5 60 sh -c \'qemu-img info -U --output=json -f qcow2 -- "$1" | python3 -c'
    commit = step(f"commit of {OVL}", f"qemu-img commit -q -f qcow2 -b {IMG} {OVL}")
    rest = " && ".join(
        [
            commit,
            step("virsh define /dev/stdin", "virsh -q -c qemu:///system define /dev/stdin") + " >/dev/null",
            *FORGET,
        ]
    )
    assert command.startswith(plain + check), command
    assert command.endswith(" && " + rest), command
    assert f"sh {OVL} {IMG} " in command[len(plain) : -len(rest)]
    assert plan.stdin == (
        '<domain><name>vm1</name><devices><disk type="file" device="disk"><driver name="qemu" type="raw" />'
        f'<source file="{IMG}" /><target dev="vda" /></disk></devices></domain>'
    )


FORGET = [
    f'{{ for f in {OVL} ; do if [ -L "$f" ] || {{ [ -e "$f" ] && [ ! -f "$f" ]; }}; then echo "kvm-qemu: $f is '
    'not a plain file; refusing to delete it for vm1 " >&2; exit 1; fi; done; }',
    step("removal of the overlays of before-upgrade", f"rm -f -- {OVL}"),
    step(
        "virsh snapshot-delete vm1",
        "virsh -q -c qemu:///system snapshot-delete vm1 before-upgrade --metadata",
    )
    + " >/dev/null",
]


def test_a_delete_that_stopped_after_its_define_is_finished_by_a_re_run() -> None:
    data = domain_data(on_overlay=True)
    data["disks"][0].update(path=IMG, format="raw")  # back on the file below; overlay and metadata left
    dom = typed_domain(data, "vm1")
    plan = delete_plan("vm1", "before-upgrade", dom, typed({"domains": {"vm1": dom}}), URI)
    assert plan.error is None and plan.stdin is None
    assert plan.command.get_raw_value() == " && ".join(FORGET)
    assert plan.actions == [f"finish deleting snapshot before-upgrade: remove {OVL}"]


def test_delete_never_commits_into_a_file_another_domain_uses() -> None:
    dom = domain(on_overlay=True)
    other = {"state": "shut off", "disks": [{"target": "vda", "device": "disk", "path": IMG}]}
    plan = delete_plan("vm1", "before-upgrade", dom, typed({"domains": {"vm1": dom, "vm2": other}}), URI)
    assert plan.command is None
    assert plan.error == f"snapshot before-upgrade: refusing to commit into {IMG} (disk of domain vm2)"


def test_delete_of_an_absent_snapshot_or_domain_is_a_no_op() -> None:
    assert delete_plan("vm1", "nope", domain(on_overlay=True), typed({}), URI) is None
    assert delete_plan("vm1", "before-upgrade", None, typed({}), URI) is None


def test_overlays_are_owned_by_their_vm_only() -> None:
    # A VM deleted halfway left its disk and a snapshot overlay: both are its files to remove.
    files = {IMG: {"kind": "file", "backing": None}, OVL: {"kind": "file", "backing": IMG}}
    fact = {
        "pools": {"default": {"path": "/data01/primary", "state": "running"}},
        "domains": {},
        "files": files,
    }
    owned, _ = owned_volumes("vm1", None, typed(fact))
    assert owned == [("default", "vm1-vda.img"), ("default", "vm1-vda@before-upgrade.qcow2")]
    assert owned_volumes("vm", None, typed(fact))[0] == []
    assert overlay_path(IMG, "vm1", "vda", "s1") == "/data01/primary/vm1-vda@s1.qcow2"


def test_status_cell_marks_the_current_snapshot_and_missing_manifest_ones() -> None:
    dom = domain(on_overlay=True)
    assert snapshot_cell(spec(snapshots=("before-upgrade", "later")), dom) == "before-upgrade*,later!"
    assert snapshot_cell(spec(), domain()) == "-"


MANIFEST = [
    {
        "host": "sm-01",
        "vmspecs": [
            {
                "name": "vm1", "hostname": "vm1.x.internal", "ipaddress": "10.10.5.11", "vcpus": 1,
                "memoryGb": 1, "maxMemoryGb": 1, "numDisks": 0, "diskSize": 0,
                "snapshots": ["before-upgrade"],
            }
        ],
    }
]  # fmt: skip


def test_manifest_snapshots_key() -> None:
    assert parse(MANIFEST)[0].vmspecs[0].snapshots == ("before-upgrade",)
    bad = copy.deepcopy(MANIFEST)
    bad[0]["vmspecs"][0]["snapshots"] = ["ok", "a/b", "x\n", "ok"]
    problems = validate(bad)
    assert any(
        p.startswith("[0].vmspecs[0].snapshots[1]: 'a/b' is not valid: a snapshot name") for p in problems
    )
    assert any(p.startswith("[0].vmspecs[0].snapshots[2]: 'x\\n' is not valid") for p in problems)
    assert any("non-unique" in p for p in problems), problems


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"snapshot_action": "rollback"},
            "snapshot_action='rollback': expected one of create, revert, delete",
        ),
        ({"snapshot_action": "revert"}, "snapshot_action=revert: needs --data snapshot=NAME"),
        ({"snapshot": "../x", "snapshot_action": "delete"}, "snapshot='../x': a snapshot name uses letters"),
    ],
)
def test_workflow_settings_are_checked_naming_the_key(data: dict[str, Any], message: str) -> None:
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.util import FakeState, create_host

    from deploys._settings import SettingError
    from deploys._snapshot import _choice

    state = FakeState()
    host = create_host(state, name="sm-01", facts={}, data=data)
    with ctx_state.use(state), ctx_host.use(host), pytest.raises(SettingError) as raised:
        _choice()
    assert str(raised.value).startswith(message)
