"""dino-bench step / patch on the CPU: bounded timing, both recipes' rows, and one failing
configuration recorded in its row while the rest still runs. No timing is asserted."""
import time

import pytest
import torch

from benchmarks.model import patch as patch_bench
from benchmarks.model import step as step_bench
from benchmarks.model.trainstep import failure_status, time_within

CPU = torch.device("cpu")


def test_time_within_bounds_the_timed_calls():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    b = time_within(fn, CPU, warmup=2, max_iters=50, seconds=0.05)
    assert 3 <= len(b.timing.samples) <= 5        # 0.05 s / (>= 0.01 s per call), at least 3
    assert len(calls) == 2 + 1 + len(b.timing.samples)
    assert b.probe_s >= 0.01 and b.warmup_s >= 0.03
    assert len(time_within(fn, CPU, warmup=0, max_iters=4, seconds=None).timing.samples) == 4
    assert len(time_within(fn, CPU, warmup=0, max_iters=4, seconds=60).timing.samples) == 4


def test_failure_status_names_the_part_and_the_reason():
    assert failure_status("train", torch.OutOfMemoryError("CUDA out of memory. Tried")) == \
        "train: out of memory"
    assert failure_status("ours", ValueError("bad\nmore")) == "ours: ValueError: bad"


def test_step_quick_rows_and_a_failing_implementation(tmp_path, monkeypatch):
    r = step_bench.run_step_benchmark("cpu", quick=True, iters=2, output_dir=str(tmp_path))
    ref, ours, v2 = r.rows
    assert [(x["recipe"], x["impl"]) for x in r.rows] == [
        ("dino", "reference"), ("dino", "ours"), ("dinov2", "ours")]
    for row in r.rows:
        assert row["status"] == "ok" and row["images_per_s"] > 0 and row["mfu"] > 0
        assert row["peak_mem_mb"] > 0 and row["step_s_n"] == 2
    assert ref["speedup_vs_reference"] == 1.0 and ours["speedup_vs_reference"] > 0
    assert v2["loss_impl"].startswith("DINOv2 (sinkhorn_knopp): dino fused, ibot fused")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(step_bench, "build_train_step", broken)
    r = step_bench.run_step_benchmark("cpu", quick=True, iters=1, output_dir=str(tmp_path),
                                      recipes=("dino",))
    ref, ours = r.rows
    assert ref["status"] == "ok" and ref["images_per_s"] > 0
    assert ours["status"] == "ours: RuntimeError: no kernel image is available for execution " \
        "on the device"
    assert "images_per_s" not in ours
    assert (tmp_path / f"{r.stem}.json").is_file()


def test_patch_sweep_goes_on_after_a_failing_configuration(monkeypatch):
    real = patch_bench.measure_train

    def train_fails_at_8(arch, patch, cfg, device):
        if patch == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        return real(arch, patch, cfg, device)

    monkeypatch.setattr(patch_bench, "measure_train", train_fails_at_8)
    cfg = patch_bench.PatchBenchConfig.quick()
    cfg = type(cfg)(**{**cfg.__dict__, "patches": (16, 8), "iters": 1, "warmup": 0,
                       "train_batch": 2, "infer_batch": 2})
    rows = patch_bench.run_patch_benchmark(cfg, CPU).rows
    p16, p8 = [r for r in rows if r["device"] == "cpu"]
    assert p16["status"] == "ok" and p16["train_im_s"] > 0
    assert p8["status"] == "train: out of memory"
    assert p8["forward_im_s"] > 0 and "train_im_s" not in p8


def test_gpu_defaults_are_vit_s_and_b_at_patch_16_14_8():
    cfg = patch_bench.PatchBenchConfig()
    assert cfg.archs == ("vit_small", "vit_base") and cfg.patches == (16, 14, 8)
    assert cfg.seconds and cfg.train_batch == 64
