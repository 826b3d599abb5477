"""dino-bench step --parallel: the strategies' rows side by side on 2 CPU ranks (slow: it
starts 2 processes per configuration), and a configuration that fails recorded in its row.
No timing is asserted."""
import pytest

from benchmarks.cli import build_parser
from benchmarks.model import parallel_step


def test_parallel_list_is_parsed_and_checked():
    assert parallel_step.parse_parallel("ddp, fsdp") == ("ddp", "fsdp")
    with pytest.raises(ValueError, match="comma list of ddp, fsdp"):
        parallel_step.parse_parallel("ddp,zero3")
    args = build_parser().parse_args(["step", "--parallel", "ddp,fsdp",
                                      "--activation-checkpointing", "--world-size", "2"])
    assert (args.parallel, args.activation_checkpointing, args.world_size) == (
        "ddp,fsdp", True, 2)


@pytest.mark.slow
def test_rows_side_by_side_and_a_failing_configuration(tmp_path, monkeypatch):
    r = parallel_step.run_parallel_step_benchmark(("ddp", "fsdp"), device="cpu", quick=True,
                                                  iters=1, output_dir=str(tmp_path))
    ddp, fsdp = r.rows
    assert (ddp["config"], fsdp["config"]) == ("ddp", "fsdp")
    for row in r.rows:
        assert row["status"] == "ok" and row["images_per_s"] > 0 and row["world_size"] == 2
        assert row["peak_mem_mb_per_rank"] > 0 and row["step_tensors_mb_per_rank"] > 0
    # measured from the tensors: the shards of 2 ranks are half of the whole (+ rounding)
    assert 0.45 < fsdp["held_mb_per_rank"] / ddp["held_mb_per_rank"] < 0.55
    assert (tmp_path / f"{r.stem}.json").is_file()
    # a configuration whose ranks fail: its reason in the row
    r = parallel_step.run_parallel_step_benchmark(("fsdp",), device="cpu", quick=True,
                                                  iters=1, archs=("vit_nonexistent",),
                                                  output_dir=str(tmp_path))
    [row] = r.rows
    assert row["status"].startswith("fsdp: ") and "images_per_s" not in row
