"""``dino-bench feed``: the --quick smoke run writes its table with both whole-callback rows
measured, on an image folder and on converted wds shards, and the per-sample variant it
compares against gives exactly the shipped feed's output (so the two rows time the same
work). No timing is asserted."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba (the dali extra) is not installed")

from benchmarks import cli  # noqa: E402
from benchmarks.data.feed import FEED, FEED_COLUMNS, PER_SAMPLE, per_sample_feed_class  # noqa: E402
from benchmarks.data.pipeline import make_image_folder  # noqa: E402
from pipelines.convert.common import ConvertConfig  # noqa: E402
from pipelines.convert.wds import convert  # noqa: E402
from pipelines.dali_backend.feed import EpochFeed  # noqa: E402
from pipelines.order import EpochPlan  # noqa: E402
from pipelines.dali_backend.readers import open_dataset  # noqa: E402
from pipelines.spec import AugmentationSpec  # noqa: E402

QUICK = ["--quick", "--device", "cpu", "--threads", "1", "--no-tensorboard"]
PARTS = ["part: read + size", "part: draw", "part: boxes"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=6,
                             size=(96, 72))


def _feed_files(out_dir):
    files = {p.suffix: p for p in out_dir.iterdir() if p.name.endswith("_feed" + p.suffix)}
    assert {".json", ".csv", ".md", ".png"} <= set(files), sorted(p.name for p in out_dir.iterdir())
    return files


@pytest.mark.parametrize("layout", ["folder", "wds"])
def test_feed_quick_measures_both_callbacks(tmp_path, folder, layout):
    data = folder
    if layout == "wds":
        data = tmp_path / "wds"
        convert(ConvertConfig(src=folder, dst=data, shard_size=5, workers=1, progress=False,
                              max_side=4096))
    extra = [] if layout == "folder" else ["--no-parts"]
    out = tmp_path / "out"
    rc = cli.main(["feed", *QUICK, "--data", str(data), "--batch-size", "4", "--batches", "2",
                   "--rounds", "2", "--output-dir", str(out), *extra])
    assert rc == 0
    files = _feed_files(out)
    result = json.loads(files[".json"].read_text())
    assert result["what"] == "feed" and result["baseline"]
    assert result["machine"]["command"].startswith("dino-bench feed")
    assert result["config"]["reader"] == ("FolderDataset" if layout == "folder"
                                          else "ShardDataset")
    header = files[".md"].read_text().split("\n| variant |", 1)[1].split("\n", 1)[0]
    assert ["variant"] + [c.strip() for c in header.strip(" |").split("|")] == FEED_COLUMNS
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == [FEED, PER_SAMPLE] + (PARTS if layout == "folder" else [])
    for r in rows.values():
        assert r["status"] == "ok" and r["rounds"] == 2 and r["images_per_round"] == 8
        assert r["cpu_ms_per_image"] > 0 and r["cpu_ms_iqr"] >= 0
        assert r["cores_for_8000"] == pytest.approx(8000 / r["images_per_core_s"])
    assert rows[PER_SAMPLE]["speedup"] == 1.0
    assert rows[FEED]["speedup"] == pytest.approx(
        rows[PER_SAMPLE]["cpu_ms_per_image"] / rows[FEED]["cpu_ms_per_image"])
    for part in PARTS if layout == "folder" else []:
        assert rows[part]["share_of_feed"] > 0 and "speedup" not in rows[part]
    assert "NOT included" in " ".join(result["notes"])


def test_per_sample_variant_feeds_exactly_what_the_shipped_feed_does(folder):
    ds = open_dataset(folder)
    spec = AugmentationSpec(local_crops=3)
    plan = EpochPlan(len(ds), batch_size=5, seed=3, rank=0, world_size=1, mode="random",
                     drop_last=True)
    shipped = EpochFeed(ds, spec, plan, start_epoch=2, with_index=True)
    twin = per_sample_feed_class()(ds, spec, plan, start_epoch=2, with_index=True)
    assert type(twin).draw_params is not EpochFeed.draw_params
    for epoch_idx, t in [(0, 0), (0, 1), (1, 0)]:
        info = SimpleNamespace(epoch_idx=epoch_idx, iteration=t)
        a, b = shipped(info), twin(info)
        for got, want in zip(b, a):  # encoded, boxes, rows, labels, indices
            assert len(got) == len(want) == 5
            for x, y in zip(got, want):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
