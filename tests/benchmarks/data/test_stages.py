"""dino-bench stages on a tiny folder: every stage has a row, floors where promised, the op
total and the results file with its command. Asserts no timing."""
import json

import pytest

pytest.importorskip("ffcv", reason="ffcv is not installed")
pytest.importorskip("cv2", reason="OpenCV (the floors' resize and decode) is not installed")

from benchmarks import cli  # noqa: E402
from benchmarks.data.pipeline import make_image_folder  # noqa: E402
from benchmarks.data.stages import StagesBenchConfig, measure_stages  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=2,
                             size=(160, 120))


@pytest.mark.slow  # ~20 s: compiles and times every stage of the FFCV op
def test_every_stage_has_a_row(folder):
    cfg = StagesBenchConfig(images=4, repeats=1, local_crops=2)
    rows = measure_stages(folder, cfg, log=lambda *_: None)
    stages = [r["stage"].strip() for r in rows]
    assert stages[0].startswith("decode") and stages[-1].startswith("op total")
    for part in ("draw parameters", "crop+resize 224", "crop+resize 96", "photometric 224",
                 "photometric 96", "normalise only 96", "blur 96", "solarize 96",
                 "grayscale 96", "colour jitter", "brightness", "contrast", "saturation",
                 "hue", "collate+copy, fresh", "collate+copy, recycled"):
        assert any(s.startswith(part) for s in stages), part
    for r in rows:
        if r["stage"].startswith(("decode", "crop+resize", "photometric", "collate", "op")):
            assert r["floor"] and r["floor_ms_per_image"] > 0, r["stage"]
            assert r["x_floor"] == pytest.approx(r["ms_per_image"] / r["floor_ms_per_image"],
                                                 rel=0.05, abs=0.02)


def test_cli_writes_results_with_the_command(folder, tmp_path):
    rc = cli.main(["stages", "--device", "cpu", "--no-tensorboard", "--data", str(folder),
                   "--images", "2", "--repeats", "1", "--local-crops", "1",
                   "--output-dir", str(tmp_path)])
    assert rc == 0
    (js,) = tmp_path.glob("*_stages.json")
    data = json.loads(js.read_text())
    assert data["machine"]["command"].startswith("dino-bench stages --device cpu")
    assert data["rows"][-1]["stage"].startswith("op total")
