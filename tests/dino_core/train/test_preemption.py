"""Mid-epoch checkpoints and preemption, end to end on the CPU: every interrupted run, once
resumed, ends bit-identical to the uninterrupted one (same process count and threads).

- kill -9 right after a mid-epoch checkpoint, then the same command again;
- SIGTERM in the middle of a step: the step finishes, a checkpoint is written, exit 143;
- torchrun, two ranks on 127.0.0.1, SIGTERM to rank 1 only: both stop at the same step;
- in-process, for the reference, DALI (CPU) and FFCV loaders;
- a truncated or corrupt latest checkpoint is refused in one line, the previous one used.

Each recipe: DINO, and DINOv2 (EMA centers, masks from the loader) in-process in the default
suite and after kill -9 / SIGTERM of the CLI with --runslow (subprocess runs are the cost).
"""
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dino_core.formats.files import load_checkpoint
from dino_core.train.preemption import EXIT_PREEMPTED, Preempted
from dino_core.train.loop import train
from tests.dino_core.parallel.test_distributed_run import free_port
from tests.dino_core.train.train_helpers import TINY_DINOV2, tiny_config, tiny_overrides
from tests.pipelines.images import write_image_folder

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# 2 epochs of 3 steps; a checkpoint every 2 steps: (epoch 0, batch 2), end of 0, (1, 1), end
EVERY = ["checkpoint.every_steps=2"]
RECIPE_SETS = {"dino": [], "dinov2": TINY_DINOV2 + ["dinov2.centering=ema"]}
BY_RECIPE = [pytest.param("dino"), pytest.param("dinov2", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), num_classes=2, per_class=6)


def _sets(data, out, batch=2, extra=()):
    return sum((["--set", o] for o in tiny_overrides(data, out, epochs=2, batch=batch, iters=3)
                + EVERY + list(extra)), [])


def _cli(args, env=ENV, worker=None):
    mod = ["-m", "tests.dino_core.train.preempt_worker", *worker, "--"] if worker else \
        ["-m", "dino_core.cli.train"]
    return subprocess.run([sys.executable, *mod, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_same_run(a: dict, b: dict) -> None:
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"])
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs from the uninterrupted"
    entry = "dinov2" if a["config"]["recipe"] == "dinov2" else "dino_loss"  # the recipe's own
    assert a[entry].keys() == b[entry].keys()
    for k in a[entry]:
        assert torch.equal(a[entry][k], b[entry][k]), f"{entry}.{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """recipe -> the uninterrupted run's last checkpoint (run once per recipe)."""
    runs = {}

    def run(recipe: str) -> dict:
        if recipe not in runs:
            out = tmp_path_factory.mktemp(f"ref-{recipe}")
            r = _cli(_sets(data, out, extra=RECIPE_SETS[recipe]))
            assert r.returncode == 0, r.stdout + r.stderr
            runs[recipe] = load_checkpoint(out / "checkpoint.pth")
        return runs[recipe]
    return run


@pytest.mark.parametrize("recipe", BY_RECIPE)
def test_kill_9_after_a_mid_epoch_checkpoint_then_resume(data, tmp_path, uninterrupted, recipe):
    out, extra = tmp_path / "run", RECIPE_SETS[recipe]
    r = _cli(_sets(data, out, extra=extra), worker=["kill", "1"])
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    mid = load_checkpoint(out / "checkpoint.pth")
    assert (mid["epoch"], mid["epoch_batches"], mid["iteration"]) == (0, 2, 2)
    r = _cli(_sets(data, out, extra=extra))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "after epoch 0 and 2 batches" in r.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pth"), uninterrupted(recipe))


@pytest.mark.parametrize("recipe", BY_RECIPE)
def test_sigterm_mid_epoch_checkpoints_exits_143_then_resume(data, tmp_path, uninterrupted,
                                                             recipe):
    out, extra = tmp_path / "run", RECIPE_SETS[recipe]
    r = _cli(_sets(data, out, extra=extra), worker=["term", "3"])  # during epoch 1's 1st step
    assert r.returncode == EXIT_PREEMPTED == 143, r.stdout + r.stderr
    assert "stopped on SIGTERM inside epoch 1 after 1 of 3 batches" in r.stderr
    mid = load_checkpoint(out / "checkpoint.pth")
    assert (mid["epoch"], mid["epoch_batches"], mid["iteration"]) == (1, 1, 4)
    r = _cli(_sets(data, out, extra=extra))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pth"), uninterrupted(recipe))


def _torchrun(out, data, worker=None, env=ENV, extra=()):
    mod = ["-m", "tests.dino_core.train.preempt_worker", *worker, "--"] if worker else \
        ["-m", "dino_core.cli.train"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
         "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
         "--max-restarts", "0", *mod, *_sets(data, out, batch=1, extra=extra)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_sigterm_to_one_rank_stops_every_rank_at_one_step(data, tmp_path):
    ref = tmp_path / "ref"
    r = _torchrun(ref, data)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    r = _torchrun(out, data, worker=["term", "0"], env={**ENV, "PREEMPT_RANKS": "1"})
    log = r.stdout + r.stderr
    assert r.returncode != 0, log
    # rank 1 got SIGTERM during step 0; the flags agreed after step 0 are read after step 1
    # (preemption.StepGate), so both ranks stop there, rank 0 without a signal of its own
    assert "stopped on SIGTERM inside epoch 0 after 2 of 3 batches" in log, log
    assert "stopped on another rank's signal inside epoch 0 after 2 of 3 batches" in log, log
    assert "exitcode  : 143" in log, log  # torchrun's report of the preempted rank
    mid = load_checkpoint(out / "checkpoint.pth")
    assert (mid["epoch"], mid["epoch_batches"]) == (0, 2)
    r = _torchrun(out, data)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pth"),
                    load_checkpoint(ref / "checkpoint.pth"))


# ----------------------------------------------------------------------------- in process
def _self_term_at(monkeypatch, iteration):
    from dino_core.train import step
    real = step.TrainStep.__call__

    def call(self, batch, at):
        if at.iteration == iteration:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, batch, at)
    monkeypatch.setattr(step.TrainStep, "__call__", call)


def _backend_data(backend, data, tmp_path_factory):
    if backend == "ffcv":
        from tests.pipelines.ffcv_twins import convert_folder
        dst = tmp_path_factory.mktemp("beton")
        convert_folder(data, dst, "jpg")
        return dst  # the folder holding the one .beton
    return data


# ffcv: ~50 s of numba compilation in the trainer's process; its loader-level exact resume
# runs in the default suite (tests/pipelines/test_epoch_position.py)
@pytest.mark.parametrize("backend, recipe", [
    ("reference", "dino"), ("dali", "dino"),
    pytest.param("ffcv", "dino", marks=pytest.mark.slow), ("reference", "dinov2")])
def test_in_process_preemption_is_exact_for_every_loader(backend, recipe, data, tmp_path,
                                                         tmp_path_factory, monkeypatch):
    module = {"reference": "PIL", "dali": "nvidia.dali", "ffcv": "ffcv"}[backend]
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: the {backend} loader cannot be checked")
    src = _backend_data(backend, data, tmp_path_factory)
    workers = 0 if backend == "reference" else 1  # in-process: no worker processes to start
    extra = [f"data.backend={backend}", f"data.num_workers={workers}", "saveckp_freq=1", *EVERY,
             *RECIPE_SETS[recipe]]
    cfg = lambda out: tiny_config(src, out, epochs=2, batch=2, iters=3, extra=extra)
    train(cfg(tmp_path / "ref"))
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _self_term_at(m, 4)  # epoch 1, its second step
        with pytest.raises(Preempted, match="inside epoch 1 after 2 of 3 batches"):
            train(cfg(out))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert load_checkpoint(out / "checkpoint.pth")["epoch_batches"] == 2
    train(cfg(out))
    assert_same_run(load_checkpoint(out / "checkpoint.pth"),
                    load_checkpoint(tmp_path / "ref" / "checkpoint.pth"))
    # --keep-epoch-checkpoints 1: every epoch end kept, never a mid-epoch one, no temp file
    kept = sorted(p.name for p in out.glob("*checkpoint*"))
    assert kept == ["checkpoint.pth", "checkpoint0001.pth", "checkpoint0002.pth",
                    "checkpoint_prev.pth"], kept
    from dino_core.train.store import load_verified  # kept ones carry a checksum too
    assert [load_verified(out / f"checkpoint000{e}.pth", "cpu")["iteration"] for e in (1, 2)] \
        == [3, 6]
    assert "checksum" in load_checkpoint(out / "checkpoint0001.pth")


# ----------------------------------------------------------------------------- the gate
def test_gate_checkpoints_after_the_minutes_and_every_n_steps(monkeypatch):
    from dino_core.train import preemption
    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    gate = preemption.StepGate(2.0, 0, preemption.StopSignals(), False, "cpu")
    now[0] += 119.0
    assert gate.after_step(1) == (False, False)
    now[0] += 1.0
    assert gate.after_step(2) == (False, True)   # the first step boundary after 2 minutes
    gate.checkpointed()
    now[0] += 60.0
    assert gate.after_step(3) == (False, False)  # counted from the last checkpoint
    steps = preemption.StepGate(0.0, 3, preemption.StopSignals(), False, "cpu")
    assert [steps.after_step(i)[1] for i in range(1, 8)] == [False, False, True, False, False,
                                                             True, False]


def test_distributed_gate_agrees_one_step_late_and_never_repeats_a_checkpoint(monkeypatch,
                                                                            tmp_path):
    """Under torchrun the flags of step k are all-reduced in the background and read after
    step k + 1 (every rank reads the same); every-N-steps needs no agreement."""
    import torch.distributed as dist
    from dino_core.train import preemption
    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        signals = preemption.StopSignals()
        gate = preemption.StepGate(1.0, 0, signals, True, "cpu")
        assert gate.after_step(1) == (False, False)
        now[0] += 60.0                                  # due by the clock after step 2 ...
        assert gate.after_step(2) == (False, False)
        assert gate.after_step(3) == (False, True)      # ... agreed after step 3
        gate.checkpointed()
        # step 3's own flags (launched before that checkpoint) said "due": not a second one
        assert gate.after_step(4) == (False, False)
        assert gate.after_step(5) == (False, False)
        signals.received = signal.SIGTERM               # arrives during step 6
        assert gate.after_step(6) == (False, False)
        assert gate.after_step(7) == (True, False)      # everyone stops after step 7
        gate.drain()
        steps = preemption.StepGate(0.0, 4, preemption.StopSignals(), True, "cpu")
        assert [steps.after_step(i)[1] for i in range(1, 9)] == [False] * 3 + [True] + \
            [False] * 3 + [True]                        # every 4 steps: at once, no lag
        steps.drain()
    finally:
        dist.destroy_process_group()


def test_signal_is_recorded_not_fatal_and_handlers_are_restored():
    from dino_core.train.preemption import StopSignals
    before = signal.getsignal(signal.SIGUSR1)
    signals = StopSignals()
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == signal.SIGUSR1 and signals.name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert signals.received == signal.SIGUSR1
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_cli_options_map_to_the_config():
    r = _cli(["--checkpoint-every-min", "20", "--keep-epoch-checkpoints", "5",
              "--init-backbone", "w.pth", "--print-config"])
    assert r.returncode == 0, r.stderr
    assert "every_minutes: 20.0" in r.stdout and "saveckp_freq: 5" in r.stdout
    assert "init_backbone: w.pth" in r.stdout
