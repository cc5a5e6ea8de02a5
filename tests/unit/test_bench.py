"""The bench's own arithmetic and log parsing (sandbox/bench.py), without a sandbox."""

from __future__ import annotations

import pytest

from sandbox import bench

LOG = "\n".join(
    [
        "\x1b[1m[sm-01]\x1b[0m   Loaded fact \x1b[1mfacts.libvirt.Hypervisor\x1b[0m",
        "[sm-01] Loaded fact server.Os",
        "[sm-02] Loaded fact facts.libvirt.Hypervisor",
        "[sm-01] nested Loaded fact facts.libvirt.Hypervisor",
        "[mgmt-01] Loaded fact facts.dnsmasq.Reservations",
        "--> Running command on sm-01: virsh list",
        "--> Running command on sm-01: virsh define",
        "--> Running command on sm-02: virsh list",
        "--> Running command on mgmt-01: true",
    ]
)


def test_count_log_counts_commands_fact_and_state_reads_per_host() -> None:
    counts = bench.count_log(LOG, ["sm-01", "sm-02"])
    assert counts["commands"] == 3
    assert counts["commands_per_host"] == 1.5
    assert counts["fact_reads_per_host"] == 2.0  # (3 + 1) / 2; mgmt's read is not a hypervisor's
    assert counts["state_reads_per_host_max"] == 2  # sm-01 read the libvirt state twice
    assert counts["facts_by_name"] == {"facts.libvirt.Hypervisor": 3, "server.Os": 1}


def test_runtime_dependencies_ignore_test_extras_and_order() -> None:
    a = '[project]\ndependencies = ["b", "a"]\n[project.optional-dependencies]\ntest = ["x"]\n'
    b = '[project]\ndependencies = ["a", "b"]\n[project.optional-dependencies]\ntest = ["y", "z"]\n'
    c = '[project]\ndependencies = ["a", "b>=2"]\n'
    assert bench.runtime_dependencies(a) == bench.runtime_dependencies(b) == ["a", "b"]
    assert bench.runtime_dependencies(c) != bench.runtime_dependencies(a)


def _runs(*seconds: float) -> list[dict]:
    return [
        {"seconds": s, "rss_mib": 60.0 + i, "commands": 6, "commands_per_host": 2.0, "commands_per_vm": 0.5,
         "fact_reads_per_host": 1.0, "state_reads_per_host_max": 1, "facts_by_name": {}}
        for i, s in enumerate(seconds)
    ]  # fmt: skip


def test_ratio_is_the_median_of_pairwise_ratios_not_of_medians() -> None:
    head = _runs(2.0, 10.0, 3.0)
    base = _runs(1.0, 20.0, 3.0)  # pairwise ratios 2.0, 0.5, 1.0 -> median 1.0
    row = bench.summarise("rerun12", {"HEAD": head, "baseline": base}, None)
    assert row["ratios"] == [2.0, 0.5, 1.0]
    assert row["ratio"] == 1.0
    assert row["head"]["median_s"] == 3.0 and row["baseline"]["median_s"] == 3.0
    assert row["head"]["rss_mib_max"] == 62.0


def test_full3_target_is_the_floor_plus_one_and_a_half_seconds_and_ratio() -> None:
    rows = {
        "floor": bench.summarise("floor", {"HEAD": _runs(1.4, 1.5, 1.6)}, None),
        "full3": bench.summarise(
            "full3", {"HEAD": _runs(3.2, 3.0, 3.1), "baseline": _runs(3.0, 3.0, 3.0)}, None
        ),
    }
    bench.judge(rows)
    assert rows["full3"]["target_s"] == 3.0
    assert rows["full3"]["met"] is False  # 3.1 s > 1.5 s + 1.5 s, and the ratio is above 1.0
    rows["full3"] = bench.summarise("full3", {"HEAD": _runs(2.9, 2.8), "baseline": _runs(3.0, 3.0)}, None)
    bench.judge(rows)
    assert rows["full3"]["met"] is True


def test_render_shows_ratio_and_both_trees() -> None:
    rows = {"rerun12": bench.summarise("rerun12", {"HEAD": _runs(1.0), "baseline": _runs(0.8)}, None)}
    bench.judge(rows)
    info = {"cpus": 2, "memory_gib": 23.5, "virt": "TCG", "python": "3.11", "pyinfra": "3.10.0"}
    text = bench.render(rows, info)
    line = next(x for x in text.splitlines() if x.startswith("| no-op re-run"))
    assert "| 1.0 | 0.8 | 1.25 |" in line and "**no**" in line


def test_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--scenarios", "full3,nope"])
    assert "unknown scenario(s) nope" in capsys.readouterr().err


def test_one_run_of_several_deploy_files_times_each_stage_from_its_log(tmp_path) -> None:
    fake = tmp_path / "pyinfra"
    fake.write_text(
        '#!/bin/sh\necho "args: $*"\nsleep 0.3\n'
        "echo \"    [pyinfra.api.operations] Starting operation {'Start VMs | Start VMs'} on sm-01\"\n"
        "sleep 0.3\necho \"Starting operation {'Readiness | Wait until every VM holds its lease'} on mgmt-01\"\n"
        "sleep 0.3\n"
    )
    fake.chmod(0o755)
    tree = bench.Tree("HEAD", "HEAD", "0" * 40, tmp_path, str(fake))
    runner = bench.Runner(tmp_path / "inventory.json", "mgmt-01", tmp_path)
    spec = bench.ready_manifest(1, 1, seeds=True)
    assert spec[0]["vmspecs"][0]["cloudInit"] is True
    run = runner.run(tree, spec, "build+start+wait", marks=bench.READY_MARKS)
    assert "deploys/build.py deploys/start.py deploys/wait.py" in run["output"]
    marks = run["marks"]
    assert 0.25 <= marks["start"] < marks["wait"] - 0.25 < run["seconds"] - 0.5


def test_ready_stages_of_one_run_add_up_to_the_run_plus_the_check(monkeypatch) -> None:
    table = "".join(f"[mgmt-01] bench{n:04d}  10.10.5.{100 + n}  {n}.0 s  {n}.5 s\n" for n in range(1, 13))

    class FakeRunner:
        inventory_data = None

        def run(self, tree, spec, deploy, *extra, inventory="manifest", marks=None):
            if deploy == "delete":
                return {}
            assert deploy == "build+start+wait" and marks == bench.READY_MARKS
            return {"output": table, "seconds": 20.0, "marks": {"start": 1.5, "wait": 4.0}, "rss_mib": 60.0,
                    "commands": 30, "commands_per_host": 10.0, "commands_per_vm": 2.5,
                    "fact_reads_per_host": 2.0, "state_reads_per_host_max": 1}  # fmt: skip

    names = {f"bench{n:04d}": f"bench{n:04d}.bench.internal" for n in range(1, 13)}
    monkeypatch.setattr(bench, "hostnames_by_ssh", lambda data, spec: (0.8, names))
    tree = bench.Tree("HEAD", "HEAD", "0" * 40, bench.REPO, "pyinfra")
    rows = bench.ready_scenario("ready")(FakeRunner(), tree)  # type: ignore[arg-type]
    assert [rows[f"ready.{s}"]["seconds"] for s in ("build", "start", "wait", "check")] == [
        1.5,
        2.5,
        16.0,
        0.8,
    ]
    assert rows["ready"]["seconds"] == 20.8 and rows["ready"]["commands"] == 42  # 30 + one hostname per VM
    assert bench.READY_DETAILS["ready, HEAD"]["ssh_s_max"] == 12.5
    names["bench0007"] = "centos7"
    with pytest.raises(SystemExit, match="bench0007"):
        bench.ready_scenario("ready")(FakeRunner(), tree)  # type: ignore[arg-type]


def test_each_tree_runs_first_in_every_other_round(tmp_path) -> None:
    head = bench.Tree("HEAD", "HEAD", "0" * 40, tmp_path, "pyinfra")
    base = bench.Tree("baseline", "c4a7aba", "1" * 40, tmp_path, "pyinfra")
    rounds = [[t.label for t in bench.run_order([head, base], i)] for i in range(4)]
    assert rounds == [["HEAD", "baseline"], ["baseline", "HEAD"], ["HEAD", "baseline"], ["baseline", "HEAD"]]


def test_each_run_has_an_operators_python_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path / "elsewhere"))
    fake = tmp_path / "pyinfra"
    fake.write_text(
        '#!/bin/sh\necho "nowrite=${PYTHONDONTWRITEBYTECODE:-unset} prefix=${PYTHONPYCACHEPREFIX:-unset}"\n'
    )
    fake.chmod(0o755)
    tree = bench.Tree("HEAD", "HEAD", "0" * 40, tmp_path / "tree", str(fake))
    tree.root.mkdir()
    runner = bench.Runner(tmp_path / "inventory.json", "mgmt-01", tmp_path / "work")
    runner.workdir.mkdir()
    run = runner.run(tree, bench.manifest(1, 0, "full", 0), "build")
    assert "nowrite=unset prefix=unset" in run["output"]


def test_compared_scenarios_warm_up_once_and_the_floor_does_not(tmp_path) -> None:
    head = bench.Tree("HEAD", "HEAD", "0" * 40, tmp_path, "pyinfra")
    base = bench.Tree("baseline", "c4a7aba", "1" * 40, tmp_path, "pyinfra")
    assert [bench.warms_up(s, [head, base]) for s in ("full3", "small", "linked", "floor", "ready")] == [
        True, True, True, False, False
    ]  # fmt: skip
    assert not bench.warms_up("small", [head])
