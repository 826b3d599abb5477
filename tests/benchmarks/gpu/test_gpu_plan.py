"""benchmarks.gpu.plan: the GPU window as device calls that fit it, each call's parts within
its budget, every part planned once, and what a call brings back (two files) and skips (what
a committed summary says ran ok on that GPU)."""
import json
import tarfile

import pytest

from benchmarks.gpu import check as G
from benchmarks.gpu import plan as P

BOXES = {p.name: p.timeout_s for p in G.PARTS}


@pytest.mark.parametrize("call", P.CALLS, ids=lambda c: c.name)
def test_each_calls_time_boxes_fit_its_budget(call):
    total = sum(BOXES[name] for name in call.parts)
    assert total <= call.timeout_s - call.stage_s - P.PACK_S, (call.name, total)
    assert call.timeout_s <= P.CALL_MAX_S <= 300


def test_the_required_calls_fit_one_window_and_dali_comes_last():
    required = [c for c in P.CALLS if not c.optional]
    assert [c.name for c in required] == ["core", "ffcv", "dinov2"]
    worst = P.START_S + sum(c.timeout_s + P.CALL_OVERHEAD_S for c in required)
    assert worst <= P.WINDOW_S == 900
    names = [c.name for c in P.CALLS]
    assert names.index("dali-1") > names.index("ffcv")
    assert all(c.optional for c in P.CALLS if c.name.startswith("dali"))
    assert P.dali_fits(P.WINDOW_S - P.DALI_MIN_LEFT_S) and not P.dali_fits(P.WINDOW_S - 299)


def test_every_part_is_in_exactly_one_call_and_the_plan_checks_clean():
    planned = [name for c in P.CALLS for name in c.parts]
    assert sorted(planned) == sorted(BOXES)
    assert P.problems() == []


def test_a_part_over_its_calls_budget_is_a_problem(monkeypatch):
    fat = tuple(G.Part(p.name, p.what, p.argv, 999 if p.name == "loss" else p.timeout_s,
                       p.needs, p.group) for p in G.PARTS)
    monkeypatch.setattr(G, "PARTS", fat)
    assert any("call core" in problem and "over its check budget" in problem
               for problem in P.problems())


@pytest.mark.parametrize("call", P.CALLS, ids=lambda c: c.name)
def test_each_call_is_a_valid_device_run(call):
    """The device tool takes a command of <= 2000 characters and <= 8 carried paths; the
    check's own options must parse (a typo would cost a GPU call)."""
    command = call.command()
    assert len(command) <= 2000 and len(call.carry) <= 8
    if call.parts:
        argv = command.split("tools/gpu_check.sh ", 1)[1].replace('"$OUT"', "/out").split()
        args = G.build_parser().parse_args(argv)
        assert args.parts == list(call.parts) and args.budget_s == call.check_budget_s
        assert str(args.skip_done) == "benchmarks/results" and args.pack_name == call.name


def fake(name: str) -> G.Part:
    return G.Part(name, f"fake {name}", ("{py}", "-c", f"print('{name} ran')"), 30, needs=())


def test_a_later_window_skips_what_a_committed_summary_says_ran_ok(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    summary = {"parts": [{"name": "env", "status": "ok"}, {"name": "loss", "status": "ok"},
                         {"name": "step", "status": "failed (rc 1)"}]}
    (results / "h100_202612_gpu_summary.json").write_text(json.dumps(summary))
    (results / "h200_202612_gpu_summary.json").write_text(json.dumps(
        {"parts": [{"name": "step", "status": "ok"}]}))
    done = G.done_parts(results, "h100")
    assert done == {"env": "h100_202612_gpu_summary.json",
                    "loss": "h100_202612_gpu_summary.json"}
    outcomes = G.run_check(tmp_path / "out", [fake("env"), fake("loss"), fake("step")], 60,
                           done)
    status = {o.name: (o.status, o.detail) for o in outcomes}
    assert status["env"] == ("ok", "env ran")  # always runs
    assert status["loss"][0] == "skipped" and "h100_202612_gpu_summary.json" in status["loss"][1]
    assert status["step"] == ("ok", "step ran")  # failed before: runs again


def test_pack_brings_back_two_files_with_every_log_and_result(tmp_path):
    out = tmp_path / "check"
    G.run_check(out, [fake("loss")], 60)
    (out / "results" / "h100_loss.json").write_text("{}")
    archive = G.pack(out, tmp_path / "OUT", "core")
    assert sorted(p.name for p in (tmp_path / "OUT").iterdir()) == ["core-summary.md",
                                                                     "core.tgz"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {"core/summary.md", "core/summary.json", "core/logs/loss.log",
            "core/results/h100_loss.json"} <= set(names)
    assert "| loss | ok |" in (tmp_path / "OUT" / "core-summary.md").read_text()
