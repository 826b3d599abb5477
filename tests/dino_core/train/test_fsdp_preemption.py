"""Preemption and resharding under ``--parallel fsdp`` (sharded checkpoints), end to end on
the CPU: an interrupted run, once resumed at the same world size, ends bit-identical to the
uninterrupted one; a checkpoint of 2 ranks resumes on 1.

All slow (``--runslow``; about 25 s of CPU each, minutes in all): tests/dino_core/parallel/
test_fsdp.py checks the sharded checkpoints' contents quickly.

- in process: SIGTERM in the middle of a step, resumed; a crash right after a mid-epoch
  checkpoint, resumed;
- kill -9 of ``dino-train`` right after a mid-epoch checkpoint and
  SIGTERM (exit 143), each resumed by the same command; torchrun with 2 ranks, SIGTERM to
  rank 1, resumed at 2 ranks (exact) and, from the end of the run, at 1 process.

Sharded checkpoints are compared through what ``dino-export`` reads (``read_entry``: whole
tensors gathered from the shards) and the run state, with ``test_preemption``'s check.
"""
import os
import signal
from pathlib import Path

import pytest

from dino_core.formats.sharded import read_entry, read_run_state
from dino_core.train.loop import train
from dino_core.train.preemption import EXIT_PREEMPTED, Preempted
from dino_core.train.sharded_store import LAST, ShardedStore
from tests.dino_core.train.test_preemption import (ENV, _cli, _self_term_at, _sets, _torchrun,
                                                   assert_same_run, data)  # noqa: F401
from tests.dino_core.train.train_helpers import tiny_config

FSDP = ["parallel=fsdp"]


def read_sharded(folder: Path) -> dict:
    """A sharded checkpoint in the single-file layout: whole tensors, rank 0's RNG states,
    the optimizer's state by parameter name."""
    ckpt = read_run_state(folder)
    ckpt["rng"] = ckpt["rng_ranks"][0]
    for key in ("student", "teacher"):
        ckpt[key] = read_entry(folder, key)
    moments: dict[str, dict] = {}
    for name, t in read_entry(folder, "optimizer").items():  # state.<param>.<field>
        param, what = name.removeprefix("state.").rsplit(".", 1)
        moments.setdefault(param, {})[what] = t
    ckpt["optimizer"] = {"state": moments}
    return ckpt


# ----------------------------------------------------------------------------- in process
def _config(data, out):
    # one epoch of 2 steps, a checkpoint after each
    return tiny_config(data, out, epochs=1, batch=2, iters=2,
                       extra=FSDP + ["checkpoint.every_steps=1"])


@pytest.fixture(scope="module")
def in_process_reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_ref")
    train(_config(data, out))
    return read_sharded(out / LAST)


@pytest.mark.slow
def test_sigterm_mid_step_under_fsdp_resumes_exactly(data, tmp_path, monkeypatch,
                                                     in_process_reference):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _self_term_at(m, 0)  # the first step: it finishes, a checkpoint, stop
        with pytest.raises(Preempted, match="inside epoch 0 after 1 of 2 batches"):
            train(_config(data, out))
    assert read_run_state(out / LAST)["epoch_batches"] == 1
    train(_config(data, out))
    assert_same_run(read_sharded(out / LAST), in_process_reference)


@pytest.mark.slow
def test_a_crash_after_a_mid_epoch_sharded_checkpoint_resumes_exactly(data, tmp_path,
                                                                    monkeypatch,
                                                                    in_process_reference):
    """What kill -9 leaves (the slow test kills a real process): the checkpoint after the
    first step, then nothing; the next run takes it up."""
    out = tmp_path / "run"
    real = ShardedStore.save

    def save_then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise SystemExit("machine lost")
    with monkeypatch.context() as m:
        m.setattr(ShardedStore, "save", save_then_die)
        with pytest.raises(SystemExit):
            train(_config(data, out))
    assert read_run_state(out / LAST)["epoch_batches"] == 1
    train(_config(data, out))
    assert_same_run(read_sharded(out / LAST), in_process_reference)


# ----------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_cli_ref")
    r = _cli(_sets(data, out, extra=FSDP))
    assert r.returncode == 0, r.stdout + r.stderr
    return read_sharded(out / LAST)


@pytest.mark.slow
def test_kill_9_after_a_mid_epoch_sharded_checkpoint_then_resume(data, tmp_path,
                                                                 uninterrupted):
    out = tmp_path / "run"
    r = _cli(_sets(data, out, extra=FSDP), worker=["kill", "1"])
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    mid = read_run_state(out / LAST)
    assert (mid["epoch"], mid["epoch_batches"], mid["iteration"]) == (0, 2, 2)
    r = _cli(_sets(data, out, extra=FSDP))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "after epoch 0 and 2 batches" in r.stderr
    assert_same_run(read_sharded(out / LAST), uninterrupted)


@pytest.mark.slow
def test_sigterm_under_fsdp_checkpoints_exits_143_then_resume(data, tmp_path, uninterrupted):
    out = tmp_path / "run"
    r = _cli(_sets(data, out, extra=FSDP), worker=["term", "3"])
    assert r.returncode == EXIT_PREEMPTED, r.stdout + r.stderr
    assert "stopped on SIGTERM inside epoch 1 after 1 of 3 batches" in r.stderr
    assert read_run_state(out / LAST)["iteration"] == 4
    r = _cli(_sets(data, out, extra=FSDP))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(read_sharded(out / LAST), uninterrupted)


@pytest.mark.slow
def test_two_ranks_preempted_resume_at_two_exactly_and_at_one(data, tmp_path):
    ref = tmp_path / "ref"
    r = _torchrun(ref, data, extra=FSDP)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "run"
    r = _torchrun(out, data, worker=["term", "0"], env={**ENV, "PREEMPT_RANKS": "1"},
                  extra=FSDP)
    assert "stopped on SIGTERM inside epoch 0 after 2 of 3 batches" in r.stdout + r.stderr
    assert read_run_state(out / LAST)["epoch_batches"] == 2
    r = _torchrun(out, data, extra=FSDP)  # 2 -> 2, mid-epoch
    assert r.returncode == 0, r.stdout + r.stderr
    done = read_sharded(out / LAST)
    assert_same_run(done, read_sharded(ref / LAST))
    assert len(done["rng_ranks"]) == 2
    # 2 -> 1: the end of the run, one more epoch in one process
    r = _cli(_sets(data, out, batch=1, extra=FSDP + ["epochs=3"]), env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "after epoch 2 and 0 batches" in r.stderr
    one = read_sharded(out / LAST)
    assert (one["epoch"], one["iteration"], len(one["rng_ranks"])) == (3, 9, 1)
    assert os.path.isdir(out / "checkpoint_prev.dcp")
