"""benchmarks.gpu.check: every part time-boxed, skipped with its reason when it cannot run,
and a summary that says what happened; on this GPU-less machine the real check is a dry run."""
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest
import torch

from benchmarks.gpu import check as G

ROOT = Path(__file__).resolve().parents[3]


def fake(name: str, code: str, timeout_s: int = 30) -> G.Part:
    return G.Part(name, f"fake {name}", ("{py}", "-c", code), timeout_s, needs=())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a dry run needs a machine without a GPU")
def test_dry_run_skips_every_part_and_says_why(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu.check", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == [p.name for p in G.PARTS]
    assert all(p["status"] == "skipped" and p["detail"] == "no CUDA GPU on this machine"
               for p in summary["parts"])
    assert f"0 ok, 0 failed, {len(G.PARTS)} skipped" in out.stdout  # the summary is printed


def test_a_hanging_part_is_killed_at_its_time_box_and_the_next_still_runs(tmp_path):
    pid_file = tmp_path / "child.pid"  # a process the part started: the whole group must die
    hang = fake("hang", "import subprocess, time; child = subprocess.Popen(['sleep', '600']); "
                f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(600)",
                timeout_s=5)
    outcomes = G.run_check(tmp_path, [hang, fake("after", "print('still ran')")], budget_s=600)
    # the statuses, not a clock, say that the box ended the hang
    assert [o.status for o in outcomes] == ["timed out", "ok"]
    assert outcomes[1].detail == "still ran"
    assert "killed after its time box" in (tmp_path / "logs" / "hang.log").read_text()
    assert pid_file.exists(), "the part did not start its child within its 5 s box"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60  # a hang guard only: the child would sleep 600 s
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the part's child outlived its time box"
        time.sleep(0.05)


def test_failure_is_reported_with_its_last_line_and_the_exit_status(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "PARTS", (fake("bad", "import sys; print('boom: no kernel'); "
                                             "sys.exit(3)"), fake("good", "print('fine')")))
    rc = G.main([str(tmp_path)])
    assert rc == 1
    summary = json.loads((tmp_path / "summary.json").read_text())["parts"]
    assert summary[0]["status"] == "failed (rc 3)" and summary[0]["detail"] == "boom: no kernel"
    assert summary[1]["status"] == "ok"
    assert "| bad | failed (rc 3) |" in (tmp_path / "summary.md").read_text()


def test_parts_after_the_budget_are_skipped_with_the_reason(tmp_path, monkeypatch):
    """The check's clock is the test's: a part "takes" 1.5 s of it, whatever the load."""
    now = [0.0]

    def run_part(part, out, timeout_s):
        now[0] += 1.5
        return G.Outcome(part.name, part.what, "ok", 1.5, "")
    monkeypatch.setattr(G, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(G, "run_part", run_part)
    outcomes = G.run_check(tmp_path, [fake("slow", "pass"), fake("late", "pass")], budget_s=11)
    assert outcomes[0].status == "ok"
    assert outcomes[1].status == "skipped" and "budget of 11 s" in outcomes[1].detail
    outcomes = G.run_check(tmp_path, [fake("a", "pass"), fake("b", "pass")], budget_s=12)
    assert [o.status for o in outcomes] == ["ok", "ok"]  # 10.5 s left: enough for a part


def test_missing_prerequisites_name_the_package(monkeypatch):
    monkeypatch.setattr(G.importlib.util, "find_spec", lambda name: None)
    assert G.missing(("dali",)) == "nvidia-dali is not installed"
    assert G.missing(("ffcv",)) == "ffcv is not installed"
    assert G.missing(()) is None


def test_part_selection():
    assert [p.group for p in G.select(None, "dali")] == ["dali"] * 4
    assert [p.name for p in G.select(["loss", "env"], None)] == ["loss", "env"]
    with pytest.raises(SystemExit, match="unknown part"):
        G.select(["lossy"], None)


def test_every_benchmark_part_parses_with_dino_bench():
    """A typo in a part's options would cost a GPU run: parse each one here."""
    from benchmarks.cli import build_parser
    parser = build_parser()
    for part in G.PARTS:
        if "benchmarks.cli" in part.argv:
            argv = [a.format(py="python3", out="/o", results="/o/results")
                    for a in part.argv[part.argv.index("benchmarks.cli") + 1:]]
            args = parser.parse_args(argv)
            assert args.command == argv[0] and args.device == "cuda", part.name


def test_corpus_parts_parse():
    from benchmarks.harness.corpus import build_parser
    for part in G.PARTS:
        if "benchmarks.harness.corpus" in part.argv:
            build_parser().parse_args(list(part.argv[part.argv.index("benchmarks.harness.corpus") + 1:]))


def test_rehearsal_runs_the_same_commands_small_on_the_cpu():
    parts = {p.name: G.rehearsal(p) for p in G.PARTS}
    for name in ("env", "kernels"):  # nothing to rehearse: they need a GPU still
        assert parts[name] == next(p for p in G.PARTS if p.name == name)
    assert parts["sanitize"].argv[-1] == "--dry-run"
    for name, part in parts.items():
        original = next(p for p in G.PARTS if p.name == name)
        if name in ("env", "kernels"):
            continue
        assert "cuda" not in part.needs and set(part.needs) <= set(original.needs), name
        assert part.timeout_s == G.REHEARSAL_BOX_S, name  # not the GPU's box: a hang guard
        assert "cuda" not in part.argv, name
        if "benchmarks.cli" in part.argv:
            assert part.argv[part.argv.index("--device") + 1] == "cpu" and "--quick" in part.argv
            # apart from the device and --quick, the very command of the GPU run
            assert [a for a in part.argv if a not in ("cpu", "--quick")] == \
                [a for a in original.argv if a != "cuda"], name
    assert "--collect-only" in parts["tests"].argv and "--collect-only" in parts["dali-tests"].argv
    assert parts["corpus"].argv[-2:] == ("--images", str(G.REHEARSAL_CORPUS_IMAGES))


def test_rehearse_runs_a_part_here_and_reports_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu.check", str(tmp_path),
                          "--rehearse", "--parts", "photometric"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(p["name"], p["status"]) for p in summary["parts"]] == [("photometric", "ok")]
    assert list((tmp_path / "results").glob("*_photometric.json"))
