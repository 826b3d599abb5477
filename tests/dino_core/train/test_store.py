"""Checkpoint files of a run: verified writes, rotation, checksums, fallback, RNG states."""
import logging
import os
from pathlib import Path

import pytest
import torch

from dino_core.train import store
from dino_core.formats.files import CheckpointError, load_checkpoint
from dino_core.train.loop import train
from dino_core.train.preemption import Preempted
from tests.dino_core.train.test_preemption import _self_term_at, assert_same_run
from tests.dino_core.train.train_helpers import tiny_config
from tests.pipelines.images import write_image_folder


def _state(v: int) -> dict:
    return {"teacher": {"w": torch.full((64, 64), float(v))}, "epoch": 0, "epoch_batches": v}


def _flip_tensor_byte(path, v: int):
    """Flip one byte inside the tensor data: torch.load still succeeds on such a file."""
    data = bytearray(path.read_bytes())
    raw = torch.full((64, 64), float(v)).numpy().tobytes()
    at = bytes(data).find(raw[:256])
    assert at > 0
    data[at + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rotation_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    store.save_latest(_state(1), tmp_path)
    assert not (tmp_path / store.PREV).exists()
    store.save_latest(_state(2), tmp_path)
    assert load_checkpoint(tmp_path / store.LAST)["epoch_batches"] == 2
    assert load_checkpoint(tmp_path / store.PREV)["epoch_batches"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.LAST, store.PREV]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_latest_is_refused_in_one_line_and_the_previous_used(tmp_path, caplog, damage):
    store.save_latest(_state(1), tmp_path)
    store.save_latest(_state(2), tmp_path)
    last = tmp_path / store.LAST
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:3000])
    elif damage == "flip":
        _flip_tensor_byte(last, 2)
        assert torch.load(last, weights_only=True)["epoch_batches"] == 2  # loads silently
    else:
        last.write_bytes(b"\x00garbage" * 100)
    with caplog.at_level(logging.ERROR, logger="dino_core.train.store"):
        ckpt, path = store.load_latest(tmp_path, "cpu")
    assert path.name == store.PREV and ckpt["epoch_batches"] == 1
    [record] = caplog.records
    assert "\n" not in record.getMessage() and str(last) in record.getMessage()
    assert ("checksum" in record.getMessage()) == (damage == "flip")


def test_no_good_checkpoint_at_all_is_an_error_not_a_fresh_start(tmp_path):
    store.save_latest(_state(1), tmp_path)
    store.save_latest(_state(2), tmp_path)
    _flip_tensor_byte(tmp_path / store.PREV, 1)
    (tmp_path / store.LAST).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no good previous checkpoint"):
        store.load_latest(tmp_path, "cpu")
    assert store.load_latest(tmp_path / "empty", "cpu") is None


def test_truncated_latest_falls_back_to_mid_epoch_and_still_ends_exactly(tmp_path,
                                                                          monkeypatch):
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=6)
    cfg = lambda out: tiny_config(data, out, epochs=2, batch=2, iters=3,
                                  extra=["checkpoint.every_steps=2"])
    train(cfg(tmp_path / "ref"))
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _self_term_at(m, 2)  # stops at the end of epoch 0
        with pytest.raises(Preempted, match="after epoch 1"):
            train(cfg(out))
    # latest: end of epoch 0; previous: epoch 0 after 2 batches
    assert load_checkpoint(out / store.PREV)["epoch_batches"] == 2
    last = out / store.LAST
    assert load_checkpoint(last)["epoch"] == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    train(cfg(out))  # resumes inside epoch 0 from the previous one
    assert_same_run(load_checkpoint(last), load_checkpoint(tmp_path / "ref" / store.LAST))


def test_mid_epoch_checkpoint_with_other_batching_is_one_clear_error(tmp_path, monkeypatch):
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=6)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _self_term_at(m, 1)
        with pytest.raises(Preempted, match="inside epoch 0 after 2 of 3 batches"):
            train(tiny_config(data, out, epochs=2, batch=2, iters=3))
    with pytest.raises(CheckpointError, match="stopped inside epoch 0 with data position.*"
                       "'batch_size': 2.*'batch_size': 3") as e:
        train(tiny_config(data, out, epochs=2, batch=3, iters=3))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("crash_at", ["write", "link", "rename"])
def test_a_crash_while_saving_leaves_a_good_checkpoint_and_no_debris_later(tmp_path,
                                                                           monkeypatch, crash_at):
    store.save_latest(_state(1), tmp_path)
    store.save_latest(_state(2), tmp_path)

    class Crash(BaseException):
        pass

    def crash(*a, **k):
        raise Crash()
    with monkeypatch.context() as m:
        if crash_at == "write":  # the new file half written (the temporary name only)
            m.setattr(store, "atomic_write_bytes", lambda path, data: (
                path.write_bytes(data[:100]), crash()))
        elif crash_at == "link":
            m.setattr(store.os, "link", crash)
        else:
            real = os.replace
            m.setattr(store.os, "replace", lambda a, b: crash() if Path(b).name ==
                      store.LAST else real(a, b))
        with pytest.raises(Crash):
            store.save_latest(_state(3), tmp_path)
    ckpt, path = store.load_latest(tmp_path, "cpu")
    assert ckpt["epoch_batches"] == 2 and path.name == store.LAST
    store.save_latest(_state(4), tmp_path)  # the next save clears what the crash left
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.LAST, store.PREV]
    assert store.load_latest(tmp_path, "cpu")[0]["epoch_batches"] == 4


def test_single_file_store_writes_on_its_writer_rank_only_and_keeps_epochs(tmp_path):
    met = []
    reader = store.SingleFileStore(tmp_path / "other", writer=False,
                                   barrier=lambda: met.append("reader"))
    built = []
    reader.save(lambda: built.append(1) or _state(1), keep_epoch=1)
    assert built == [] and not (tmp_path / "other").exists() and met == ["reader"]
    writer = store.SingleFileStore(tmp_path / "run", barrier=lambda: met.append("writer"))
    assert not writer.exists() and writer.load_latest("cpu") is None
    writer.save(lambda: _state(1))
    writer.save(lambda: _state(2), keep_epoch=3)
    assert writer.exists() and met == ["reader", "writer", "writer"]
    ckpt, path = writer.load_latest("cpu")
    assert path.name == store.LAST and ckpt["epoch_batches"] == 2
    assert writer.load(tmp_path / "run" / "checkpoint0003.pth", "cpu")["epoch_batches"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        store.LAST, "checkpoint0003.pth", store.PREV]
