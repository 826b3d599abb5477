"""benchmarks/model/loss.py: rows, agreement checks, the CPU memory method, the standalone entry."""
import json

import pytest
import torch

from benchmarks.model import loss as loss_bench


def test_rows_cover_every_implementation_and_agree_with_the_reference():
    rows = loss_bench.run_loss_benchmark("cpu", batch=2, views=4, out_dim=256, iters=2,
                                         dtype=torch.float32, rounds=1, warmup=0, memory=False)
    by_impl = {r["impl"]: r for r in rows}
    assert list(by_impl) == [*loss_bench.IMPLS, loss_bench.FLOOR]
    assert by_impl["cuda"]["status"] == "not run: needs a CUDA device"
    assert by_impl["cuda (overwrite logits)"]["status"] == "not run: needs a CUDA device"
    for impl in ("reference", "einsum", "fused", "fused (overwrite logits)"):
        row = by_impl[impl]
        assert row["status"] == "ok" and row["time_n"] == 2 and row["time_median_ms"] > 0
        assert row["loss_rel_diff"] < 1e-6 and row["grad_rel_diff"] < 1e-5
        assert row["model_mb"] >= row["floor_mb"] > 0 and row["model_vs_floor"] >= 1
        assert row["achieved_gb_per_s"] == pytest.approx(
            row["model_mb"] / row["time_median_ms"])  # MB per ms = GB/s
    assert by_impl["reference"]["speedup_vs_reference"] == 1.0


@pytest.mark.gpu
def test_gpu_rows_time_cuda_graph_replays_of_every_implementation():
    rows = loss_bench.run_loss_benchmark("cuda", batch=4, views=12, out_dim=4096, iters=20,
                                         dtype=torch.bfloat16, rounds=2, warmup=1,
                                         memory=True)
    by_impl = {r["impl"]: r for r in rows}
    for impl in loss_bench.IMPLS:
        row = by_impl[impl]
        assert row["status"] == "ok", (impl, row["status"])
        assert row["time_n"] == 20 and row["time_median_ms"] > 0
        assert row["loss_rel_diff"] < 1e-4 and row["grad_rel_diff"] < 2.0 ** -6, impl
        assert row["peak_extra_mib"] >= 0
    assert by_impl["cuda"]["model_vs_floor"] <= 1.3


def test_cpu_peak_memory_sees_the_pair_tensors_of_the_reference():
    """Fresh-subprocess peak RSS: the fused call holds at least the gradient it returns; the
    pair loop holds several [B, K] tensors per pair on top; the in-place call writes the
    gradient over its logits and holds about four [B, K] blocks (teacher probabilities and
    one two-view chunk), a third of the gradient here."""
    batch, views, out_dim = 4, 12, 65536
    grad_bytes = views * batch * out_dim * 4
    fused = loss_bench.cpu_peak_extra_bytes("fused", batch, views, out_dim, torch.float32)
    inplace = loss_bench.cpu_peak_extra_bytes("fused (overwrite logits)", batch, views,
                                              out_dim, torch.float32)
    reference = loss_bench.cpu_peak_extra_bytes("reference", batch, views, out_dim,
                                                torch.float32)
    assert grad_bytes <= fused < 2 * grad_bytes
    assert inplace < grad_bytes / 2
    assert reference > 2 * fused


def test_standalone_entry_writes_json_and_markdown(tmp_path, capsys):
    loss_bench.main(["--device", "cpu", "--quick", "--no-memory", "--iters", "1",
                     "--views", "3", "--output-dir", str(tmp_path)])
    written = {p.suffix for p in tmp_path.iterdir()}
    assert {".json", ".md"} <= written
    result = json.loads(next(tmp_path.glob("*_loss.json")).read_text())
    assert result["what"] == "loss" and result["config"]["views"] == 3
    assert [r["impl"] for r in result["rows"]] == [*loss_bench.IMPLS, loss_bench.FLOOR]
    assert (tmp_path / next(tmp_path.glob("*_loss.md")).name.replace(".md", ".png")).is_file()
    out = capsys.readouterr().out
    assert "| fused | ok |" in out and "| fused (overwrite logits) | ok |" in out
