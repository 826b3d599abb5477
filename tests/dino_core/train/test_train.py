"""End-to-end training on CPU: checkpoint layout, logs, exact resume after kill -9, divergence."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dino_core.formats.files import load_checkpoint
from dino_core.train.loop import TrainingDiverged, train
from tests.dino_core.train.train_helpers import tiny_config, tiny_overrides
from tests.pipelines.images import write_image_folder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), num_classes=3, per_class=6)


def test_tiny_run_writes_checkpoint_in_reference_layout_and_logs(data, tmp_path):
    summary = train(tiny_config(data, tmp_path / "run"))
    out = tmp_path / "run"
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert {"student", "teacher", "optimizer", "epoch", "iteration", "dino_loss", "config",
            "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 4
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in ckpt["student"])
    assert all(k.startswith(("backbone.", "head.")) for k in ckpt["teacher"])
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    assert ckpt["config"]["model"]["arch"] == "vit_tiny"
    assert (out / "config.yaml").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    assert 0 <= summary["data_wait_share"] <= 1 and summary["images_per_s"] > 0
    # the teacher moved away from its initial copy of the student, but only by EMA
    assert not torch.equal(ckpt["teacher"]["backbone.cls_token"],
                           ckpt["student"]["module.backbone.cls_token"])


def _run_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dino_core.cli.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# slow: test_preemption.py kills after a mid-epoch checkpoint at a known step in the default
# suite; this one kills the real CLI at whatever point it has reached
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bit_identical(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = lambda out: sum((["--set", o] for o in tiny_overrides(data, out, epochs=3, iters=2)), [])
    ref = _run_cli(common(tmp_path / "ref"), env)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    out = tmp_path / "killed"
    proc = _run_cli(common(out), env)
    deadline = time.time() + 300
    while not (out / "checkpoint.pth").exists():  # epoch 1 finished: now inside epoch 2
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] < 3
    resumed = _run_cli(common(out), env)
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "resumed from" in log
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pth"), load_checkpoint(out / "checkpoint.pth")
    for key in ("student", "teacher"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after kill -9 + resume"
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))
    good = (out / "checkpoint.pth").read_bytes()

    from dino_core.recipes.dino import DINORecipe
    real_losses = DINORecipe.student_losses

    def poisoned(self, batch, student, target, at):
        terms = real_losses(self, batch, student, target, at)
        return {k: v * float("nan") for k, v in terms.items()} if at.epoch == 1 else terms
    monkeypatch.setattr(DINORecipe, "student_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"iteration 2 \(epoch 1, step 0\)"):
        train(tiny_config(data, out, epochs=2))
    assert (out / "checkpoint.pth").read_bytes() == good


def test_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    from dino_core.formats.files import CheckpointError
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))
    with pytest.raises(CheckpointError, match="arch='vit_tiny'.*vit_small"):
        train(tiny_config(data, out, epochs=2, extra=["model.arch=vit_small"]))
