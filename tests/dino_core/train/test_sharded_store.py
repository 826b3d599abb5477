"""The sharded store's folders in one process (no process group): rotation, kept epochs,
damaged checkpoints refused in one line with the previous one used, a crash between the
renames, checkpoints of the other parallel mode refused, and DCP's index read safely."""
import logging
import os
import pickle

import pytest
import torch

from dino_core.formats.files import CheckpointError
from dino_core.formats.sharded import METADATA, RUN_STATE, read_entry
from dino_core.train import sharded_store
from dino_core.train.sharded_store import LAST, PREV, ShardedStore, split_tensors
from dino_core.train.store import SingleFileStore, save_latest


def _state(v: int) -> dict:
    """A checkpoint's shape: sharded entries (tensors, the optimizer's param_groups plain)
    and plain run state."""
    w = torch.full((64, 8), float(v))
    return {"student": {"w": w}, "teacher": {"w": w + 1},
            "optimizer": {"state": {"w": {"exp_avg": w * 2, "step": torch.tensor(float(v))}},
                          "param_groups": [{"lr": 0.5, "params": ["w"]}]},
            "epoch": v, "epoch_batches": 0, "dino_loss": {"center": torch.full((1, 4), float(v))},
            "rng": {"torch": torch.get_rng_state()}}


def _student(ckpt: dict) -> torch.Tensor:
    target = {"w": torch.empty(64, 8)}
    ckpt["student"].load_into(target)
    return target["w"]


def test_split_puts_tensors_in_the_shards_and_the_rest_in_the_run_state():
    tensors, plain = split_tensors(_state(3)["optimizer"])
    assert set(tensors["state"]["w"]) == {"exp_avg", "step"}
    assert plain == {"param_groups": [{"lr": 0.5, "params": ["w"]}]}
    assert split_tensors({"student": {"w": torch.zeros(1)}})[1] is None
    with pytest.raises(ValueError, match="inside a list"):
        split_tensors({"groups": [torch.zeros(1)]})


def test_rotation_keeps_the_previous_folder_and_epoch_copies_share_the_files(tmp_path):
    store = ShardedStore(tmp_path)
    assert not store.exists()
    store.save(lambda: _state(1))
    store.save(lambda: _state(2), keep_epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, "checkpoint0002.dcp", PREV]
    ckpt, path = store.load_latest("cpu")
    assert path.name == LAST and ckpt["epoch"] == 2 and torch.equal(_student(ckpt), torch.full((64, 8), 2.0))
    assert ckpt["optimizer"].plain == {"param_groups": [{"lr": 0.5, "params": ["w"]}]}
    assert torch.equal(ckpt["rng"]["torch"], _state(0)["rng"]["torch"])
    assert torch.equal(ckpt["dino_loss"]["center"], torch.full((1, 4), 2.0))
    assert store.load(tmp_path / PREV, "cpu")["epoch"] == 1
    for f in (tmp_path / LAST).iterdir():  # the kept epoch: hard links, not copies
        assert os.path.samefile(f, tmp_path / "checkpoint0002.dcp" / f.name)


def _shard(folder):
    return next(p for p in folder.iterdir() if p.name.endswith(".distcp"))


def _flip(path, at: int = -100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip shard", "missing shard", "truncated index",
                                    "garbage run state", "extra file"])
def test_a_damaged_latest_is_refused_in_one_line_and_the_previous_used(tmp_path, caplog,
                                                                       damage):
    store = ShardedStore(tmp_path)
    store.save(lambda: _state(1))
    store.save(lambda: _state(2))
    last = tmp_path / LAST
    if damage == "flip shard":
        _flip(_shard(last))
    elif damage == "missing shard":
        _shard(last).unlink()
    elif damage == "truncated index":
        (last / METADATA).write_bytes((last / METADATA).read_bytes()[:40])
    elif damage == "garbage run state":
        (last / RUN_STATE).write_bytes(b"\x00garbage" * 50)
    else:
        (last / "__9_0.distcp").write_bytes(b"stray")
    with caplog.at_level(logging.ERROR, logger="dino_core.train.store"):
        ckpt, path = store.load_latest("cpu")
    assert path.name == PREV and ckpt["epoch"] == 1
    assert torch.equal(_student(ckpt), torch.full((64, 8), 1.0))
    [record] = caplog.records
    assert "\n" not in record.getMessage() and str(last) in record.getMessage()
    _flip(_shard(tmp_path / PREV))
    with pytest.raises(CheckpointError, match="no good previous checkpoint"):
        store.load_latest("cpu")


def test_a_crash_between_the_renames_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    store = ShardedStore(tmp_path)
    store.save(lambda: _state(1))
    real = os.replace

    def crash_on_the_new_folder(src, dst):
        if str(src).endswith(sharded_store.NEW):
            raise OSError("killed")
        real(src, dst)
    monkeypatch.setattr(sharded_store.os, "replace", crash_on_the_new_folder)
    with pytest.raises(OSError, match="killed"):
        store.save(lambda: _state(2))
    monkeypatch.undo()
    assert not (tmp_path / LAST).exists()
    ckpt, path = store.load_latest("cpu")
    assert path.name == PREV and ckpt["epoch"] == 1
    store.save(lambda: _state(3))  # the next save cleans the half-published folder up
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREV]


def test_checkpoints_of_the_other_parallel_mode_are_refused_clearly(tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    save_latest({"epoch": 1}, ddp)
    ShardedStore(fsdp).save(lambda: _state(1))
    with pytest.raises(CheckpointError, match="checkpoint of --parallel ddp"):
        ShardedStore(ddp).exists()
    with pytest.raises(CheckpointError, match="checkpoint of --parallel fsdp"):
        SingleFileStore(fsdp).exists()
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        ShardedStore(ddp).load(ddp / "checkpoint.pth", "cpu")
    with pytest.raises(CheckpointError, match="is a folder"):
        SingleFileStore(fsdp).load(fsdp / LAST, "cpu")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_index_is_read_without_building_foreign_classes(tmp_path, monkeypatch):
    ShardedStore(tmp_path).save(lambda: _state(1))
    folder = tmp_path / LAST
    assert torch.equal(read_entry(folder, "teacher")["w"], torch.full((64, 8), 2.0))
    (folder / METADATA).write_bytes(pickle.dumps(_Payload()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="posix.system.*refused for safety"):
        read_entry(folder, "teacher")
    assert not (tmp_path / "pwned").exists()
