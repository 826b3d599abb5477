"""A mid-epoch resume: ``set_epoch(e, first_batch=k)`` yields exactly batches k.. of epoch e.

Every backend's epoch order is a pure function of (seed, epoch) and its augmentations come
from per-sample counter streams, so the data position of a checkpoint is the number of
batches consumed; the loader starts there without reading the earlier samples. Checked
bitwise against a full epoch, for the reference loader, DALI (CPU mode) and FFCV, with the
epoch after a shortened one whole again.
"""
import importlib.util

import pytest
import torch

from pipelines.loader import build_loader
from tests.dino_core.train.train_helpers import TINY_AUG
from tests.pipelines.images import write_image_folder
from dino_core.config import load_config

SPEC = load_config(None, TINY_AUG).data.aug
BACKENDS = [b for b, module in (("reference", "PIL"), ("dali", "nvidia.dali"), ("ffcv", "ffcv"))
            if importlib.util.find_spec(module) is not None]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("pos") / "train", 2, 6, (40, 64))


def _data(backend, folder, tmp_path_factory):
    if backend != "ffcv":
        return folder
    from tests.pipelines.ffcv_twins import convert_folder
    return convert_folder(folder, tmp_path_factory.mktemp("beton"), "jpg")


def _epoch(loader, epoch, first=0):
    loader.set_epoch(epoch, first_batch=first)
    return [([v.clone() for v in b.views], b.labels.clone()) for b in loader]


@pytest.mark.parametrize("backend", ["reference", "dali", "ffcv"])
def test_first_batch_skips_to_the_same_batches(backend, folder, tmp_path_factory):
    if backend not in BACKENDS:
        pytest.fail(f"backend {backend} is not installed here")
    data = _data(backend, folder, tmp_path_factory)
    loader = build_loader(data, backend=backend, batch_size=3, spec=SPEC, num_workers=1,
                          seed=5, rank=1, world_size=2)
    try:
        assert len(loader) == 2
        whole1, whole2 = _epoch(loader, 1), _epoch(loader, 2)
        tail = _epoch(loader, 1, first=1)
        after = _epoch(loader, 2)  # the epoch after a resumed one starts at batch 0 again
        empty = _epoch(loader, 1, first=2)
    finally:
        loader.close()
    assert len(tail) == 1 and len(after) == 2 and empty == []
    for got, want in zip(tail + after, whole1[1:] + whole2):
        assert torch.equal(got[1], want[1])
        assert all(torch.equal(a, b) for a, b in zip(got[0], want[0]))
    assert not torch.equal(whole1[0][0][0], whole1[1][0][0])  # the batches do differ


def test_first_batch_outside_the_epoch_is_refused(folder):
    loader = build_loader(folder, backend="reference", batch_size=3, spec=SPEC, num_workers=0)
    with pytest.raises(ValueError, match="first_batch 5 outside"):
        loader.set_epoch(0, first_batch=5)


def test_reference_loader_leaves_torch_global_rng_alone(folder):
    loader = build_loader(folder, backend="reference", batch_size=3, spec=SPEC, num_workers=0)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    loader.set_epoch(0)
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_reference_workers_survive_a_sigterm_meant_for_the_trainer(folder):
    import os
    import signal
    import time
    loader = build_loader(folder, backend="reference", batch_size=3, spec=SPEC, num_workers=1)
    try:
        loader.set_epoch(0)
        batches = iter(loader)
        first = next(batches)
        workers = loader.backend._active._workers
        for w in workers:
            os.kill(w.pid, signal.SIGTERM)  # as scancel --signal=TERM does to every process
        time.sleep(0.5)
        assert all(w.is_alive() for w in workers)
        rest = list(batches)
    finally:
        loader.close()
    assert len(rest) == len(loader) - 1 and first.labels.shape == (3,)


def _children() -> set[int]:
    import os
    from pathlib import Path
    pids = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids |= {int(p) for p in (task / "children").read_text().split()}
    return pids


def test_dali_feed_workers_survive_a_sigterm_meant_for_the_trainer(folder):
    import os
    import signal
    import time
    if "dali" not in BACKENDS:
        pytest.fail("nvidia-dali is not installed: its feed workers cannot be checked")
    before = _children()
    loader = build_loader(folder, backend="dali", batch_size=3, spec=SPEC, num_workers=1,
                          py_workers=1)
    try:
        loader.set_epoch(0)
        batches = iter(loader)
        next(batches)
        workers = _children() - before
        assert workers, "DALI started no feed worker process"
        for pid in workers:
            os.kill(pid, signal.SIGTERM)  # as scancel --signal=TERM does to every process
        time.sleep(0.5)
        assert workers <= _children()
        rest = list(batches)
        loader.set_epoch(1)
        assert len(list(loader)) == len(loader)
    finally:
        loader.close()
    assert len(rest) == len(loader) - 1
