"""``dino-bench photometric``: the CPU smoke run writes its rows, and the byte counts the
GPU figures are quoted against are those of the goal's batch. No timing is asserted."""
import json

import pytest
import torch

from benchmarks import cli
from benchmarks.data.photometric import PhotometricBenchConfig, byte_counts, make_batch
from pipelines.spec import AugmentationSpec


@pytest.mark.slow  # ~12 s: builds and runs every implementation
def test_quick_cpu_run_writes_every_implementation(tmp_path):
    pytest.importorskip("numba")
    rc = cli.main(["photometric", "--quick", "--device", "cpu", "--threads", "1",
                   "--no-tensorboard", "--output-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads(next(tmp_path.glob("*_photometric.json")).read_text())
    assert data["machine"]["command"].startswith("dino-bench photometric")
    rows = {r["impl"]: r for r in data["rows"]}
    assert {"host twin", "numba cpu_kernel", "torch_ops"} <= set(rows)
    for r in rows.values():
        assert r["status"] == "no GPU: CPU smoke test" and r["time_median_ms"] > 0
        assert r["max_abs_diff_vs_torch"] <= 0.03  # bfloat16 rounding of values up to ~2.7
    assert any("not the kernel's" in n for n in data["notes"])


def test_bytes_of_the_goal_batch():
    spec = AugmentationSpec(output_dtype="bfloat16")
    batches = make_batch(PhotometricBenchConfig(), torch.device("cpu"), spec)
    assert [tuple(c.shape) for c, _ in batches] == [(128, 224, 224, 3), (640, 96, 96, 3)]
    floor, design = byte_counts(batches, out_bytes=2)
    pixels = 64 * (2 * 224 ** 2 + 10 * 96 ** 2)
    assert floor == pixels * (3 + 3 * 2)  # crops in once, bf16 outputs out once
    assert floor < design < floor + pixels * 3 + 2 * 10 ** 6  # + jittered crops, rows, sums
