"""Torch files: atomic writes, weights_only reads, one clear error per unusable file."""
import os
import pickle

import pytest
import torch

from dino_core.formats.files import (CheckpointError, atomic_write_bytes, load_checkpoint,
                                    save_checkpoint)


def test_round_trip_plain_data(tmp_path):
    state = {"student": {"w": torch.arange(4.0)}, "epoch": 3, "config": {"model": {"arch": "vit_tiny"}},
             "rng": {"torch": torch.get_rng_state()}}
    save_checkpoint(state, tmp_path / "c.pth")
    back = load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(back["student"]["w"], state["student"]["w"]) and back["epoch"] == 3
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_crash_while_saving_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    save_checkpoint({"epoch": 1}, path)

    def crash(*a, **k):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_truncated_and_missing_and_pickled_files_get_clear_errors(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    import argparse
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "pickled.pth")


def test_atomic_write_bytes(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "f.txt", b"hello")
    assert (tmp_path / "a" / "f.txt").read_bytes() == b"hello"
