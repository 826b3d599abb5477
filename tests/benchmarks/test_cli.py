"""Smoke tests of ``dino-bench``: every sub-command runs --quick on the CPU and writes its
files. These check the harness end to end; they assert no timing."""
import json

import pytest
import torch

from benchmarks import cli, commands
from benchmarks.data.pipeline import make_image_folder

QUICK = ["--quick", "--device", "cpu", "--threads", "1", "--no-tensorboard"]


def _rows(out_dir, what):
    files = {p.suffix: p for p in out_dir.iterdir() if p.name.endswith(f"_{what}" + p.suffix)}
    assert {".json", ".csv", ".md"} <= set(files), sorted(p.name for p in out_dir.iterdir())
    data = json.loads(files[".json"].read_text())
    assert data["machine"]["command"].startswith(f"dino-bench {what}")
    assert data["baseline"] and data["what"] == what
    return data["rows"], files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=6,
                             size=(96, 72))


def test_help_teaches_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("patch", "pipeline", "loss", "step", "e2e", "feed", "--quick", "Read:"):
        assert name in text


def test_patch_quick(tmp_path):
    rc = cli.main(["patch", *QUICK, "--patches", "16", "8", "--iters", "1", "--warmup", "0",
                   "--batch", "2", "--infer-batch", "2", "--output-dir", str(tmp_path)])
    assert rc == 0
    rows, files = _rows(tmp_path, "patch")
    measured = [r for r in rows if r["device"] == "cpu"]
    assert [(r["arch"], r["patch"]) for r in measured] == [("vit_tiny", 16), ("vit_tiny", 8)]
    for r in measured:
        assert r["forward_im_s"] > 0 and r["train_im_s"] > 0 and r["train_mfu"] > 0
        assert r["train_gflop_per_img"] > 0 and r["status"] == "ok"
    # patch 8 costs more FLOPs per image than patch 16 at the same resolution
    assert measured[1]["train_gflop_per_img"] > measured[0]["train_gflop_per_img"]
    gpu = [r for r in rows if r["device"] == "cuda"]
    assert gpu and all(r["train_im_s"] is None and "not measured yet" in r["status"] for r in gpu)
    assert {(r["arch"], r["patch"], r["paper_v100_im_s"]) for r in gpu} >= {
        ("vit_small", 16, 1007), ("vit_small", 8, 180), ("vit_base", 16, 312),
        ("vit_base", 8, 63), ("vit_small", 14, None)}
    assert (tmp_path / files[".json"].name.replace(".json", ".png")).exists()


def test_pipeline_quick_reference_and_skips(tmp_path, folder):
    rc = cli.main(["pipeline", *QUICK, "--data", str(folder), "--batch-size", "2",
                   "--batches", "2", "--warmup-batches", "1", "--workers", "0",
                   "--backends", "reference", "nope", "--output-dir", str(tmp_path)])
    assert rc == 0
    rows, _ = _rows(tmp_path, "pipeline")
    assert [r["backend"] for r in rows] == ["reference", "nope"]
    ref = rows[0]
    assert ref["status"] == "ok" and ref["images"] == 4 and ref["views"] == 12
    assert ref["images_per_s"] > 0 and ref["images_per_core_s"] > 0 and ref["speedup"] == 1.0
    assert rows[1]["status"].startswith("skipped: ValueError: unknown backend 'nope'")


def test_pipeline_quick_defaults_to_the_imagenet_like_corpus(tmp_path):
    pytest.importorskip("skimage", reason="the corpus is made from the embedded photos")
    out = tmp_path / "out"
    rc = cli.main(["pipeline", *QUICK, "--corpus-dir", str(tmp_path / "cache"),
                   "--corpus-images", "24", "--batch-size", "2", "--batches", "1",
                   "--workers", "0", "--backends", "reference", "--output-dir", str(out)])
    assert rc == 0
    rows, files = _rows(out, "pipeline")
    assert rows[0]["status"] == "ok"
    data = json.loads(files[".json"].read_text())
    assert data["data"].startswith("imagenet-like benchmark corpus")
    assert data["data_stats"]["kind"] == "imagenet-like" and data["data_stats"]["images"] == 24
    md = files[".md"].read_text()
    assert "- data: imagenet-like benchmark corpus" in md and "median" in md
    assert "Figures only count on ImageNet-like data" in md


def test_pipeline_embedded_photos_are_labelled(tmp_path, monkeypatch):
    pytest.importorskip("skimage", reason="the embedded photos ship with scikit-image")
    monkeypatch.setenv("DINO_FAST_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["pipeline", *QUICK, "--corpus", "embedded", "--batch-size", "2",
                   "--batches", "1", "--workers", "0", "--backends", "reference",
                   "--in-process", "--output-dir", str(tmp_path)])
    assert rc == 0
    _, files = _rows(tmp_path, "pipeline")
    md = files[".md"].read_text()
    assert "NOT ImageNet-like" in md and "These figures do not count" in md


@pytest.mark.parametrize("engine,steps,images,recipes", [("trainer", 3, 6, ["dino"]),
                                                        ("loop", 2, 4, ["dino", "dinov2"])])
def test_e2e_quick(tmp_path, folder, engine, steps, images, recipes):
    rc = cli.main(["e2e", *QUICK, "--data", str(folder), "--steps", "2", "--warmup-steps", "1",
                   "--batch-size", "2", "--workers", "0", "--engine", engine,
                   "--recipes", *recipes, "--output-dir", str(tmp_path)])
    assert rc == 0
    rows, _ = _rows(tmp_path, "e2e")
    assert [r["recipe"] for r in rows] == recipes  # one backend each: the reference
    for row in rows:
        assert row["status"] == "ok" and row["backend"] == "reference"
        assert row["steps"] == steps and row["images"] == images  # the trainer counts warm-up
        assert 0.0 <= row["data_wait_share"] <= 1.0 and row["images_per_s"] > 0
        assert row["speedup"] == 1.0


def test_loss_and_step_are_wired_to_their_modules(tmp_path, monkeypatch):
    """``dino-bench loss`` writes what ``python3 -m benchmarks.model.loss`` writes (its columns,
    notes and plot), with the same defaults; ``dino-bench step`` hands its options over."""
    from benchmarks.model import loss, step
    from benchmarks.harness.timing import BenchmarkResult, describe_machine
    seen = {}

    def run_loss_benchmark(device, batch, views, out_dim, iters, dtype):
        seen["loss"] = (device.type, batch, views, out_dim, iters, str(dtype))
        return [{"impl": "reference", "time_median_ms": 2.0, "peak_extra_mib": 8.0},
                {"impl": "fused", "time_median_ms": 1.0, "peak_extra_mib": 1.0}]

    def run_step_benchmark(device, output_dir, argv, **kw):
        seen["step"] = (device.type, kw)
        return BenchmarkResult(what="step", title="t", machine=describe_machine(device, argv),
                               baseline="b", rows=[{"impl": "ours"}])

    monkeypatch.setattr(loss, "run_loss_benchmark", run_loss_benchmark)
    monkeypatch.setattr(step, "run_step_benchmark", run_step_benchmark)
    assert cli.main(["loss", *QUICK, "--views", "6", "--output-dir", str(tmp_path)]) == 0
    quick = loss.LossBenchShape.resolve(torch.device("cpu"), quick=True)
    assert seen["loss"] == ("cpu", quick.batch, 6, quick.out_dim, quick.iters, "torch.float32")
    rows, files = _rows(tmp_path, "loss")
    assert [(r["impl"], r["threads"]) for r in rows] == [("reference", 1), ("fused", 1)]
    data = json.loads(files[".json"].read_text())
    assert any("model_mb" in note for note in data["notes"]) and ".png" in files
    assert cli.main(["step", *QUICK, "--iters", "2", "--output-dir", str(tmp_path)]) == 0
    assert seen["step"] == ("cpu", {"quick": True, "iters": 2})


def test_bad_arguments(capsys):
    assert cli.main(["patch", "--threads", "0"]) == 2
    with pytest.raises(SystemExit, match="BACKEND=PATH"):
        cli.main(["pipeline", "--quick", "--backend-data", "ffcv", "--device", "cpu"])


def test_e2e_trainer_stopped_by_seconds(tmp_path, folder):
    rc = cli.main(["e2e", *QUICK, "--data", str(folder), "--seconds", "1", "--batch-size", "2",
                   "--workers", "0", "--time-budget", "240", "--recipes", "dino",
                   "--output-dir", str(tmp_path)])
    assert rc == 0
    (row,) = _rows(tmp_path, "e2e")[0]
    assert row["status"] == "ok" and row["engine"] == "dino_core.train.loop.train"
    assert row["stopped"].startswith("after") and row["wall_s"] >= 1
    assert row["steps"] >= 4 and row["steps"] % 2 == 0  # logged every 2 steps (quick)
    assert 0.0 <= row["data_wait_share"] <= 1.0 and row["cores_used"] > 0


def test_cuda_defaults_and_time_budget_options():
    """On a CUDA device: >= 10 s pipeline windows after 3 s, 40 s e2e runs, each backend
    bounded by a time budget; --time-budget and --in-process override it."""
    import torch

    from benchmarks.data.e2e import E2EConfig
    from benchmarks.data.pipeline import PipelineBenchConfig

    def config(cls, *argv):
        args = cli.build_parser().parse_args(list(argv))
        return commands._data_bench_config(cls, args, torch.device("cuda"),
                                      {"seconds": "seconds", "engine": "engine"})
    pipe = config(PipelineBenchConfig, "pipeline")
    assert (pipe.seconds, pipe.warmup_seconds, pipe.batch_size) == (10.0, 3.0, 128)
    assert pipe.limits.isolate and pipe.limits.time_budget == 73.0
    assert pipe.num_workers <= 8 and pipe.source.corpus == "imagenet-like"
    assert config(PipelineBenchConfig, "pipeline", "--seconds", "20").limits.time_budget == 83.0
    assert config(PipelineBenchConfig, "pipeline", "--time-budget", "30").limits.time_budget == 30
    e2e = config(E2EConfig, "e2e", "--seconds", "60")
    assert e2e.seconds == 60 and e2e.limits.time_budget == 120.0 and e2e.engine == "trainer"
    assert not config(E2EConfig, "e2e", "--in-process", "--engine", "loop").limits.isolate
    with pytest.raises(ValueError, match="needs isolated runs"):
        config(E2EConfig, "e2e", "--in-process")
    quick = config(PipelineBenchConfig, "pipeline", "--quick")
    assert quick.seconds == 0 and quick.limits.time_budget is None
    assert quick.source.corpus_images == 1024
