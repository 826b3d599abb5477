"""pipelines/loader.py: one wrapper, one epoch order, for every backend.

- The three backends over the same small dataset (the reference over the ImageFolder, DALI
  on the CPU over its ``dino-convert --format wds`` shards, FFCV on the CPU over its
  ``dino-convert --format ffcv`` .beton) yield the same sample ids in the same order, with
  the same labels and the same block masks (``spec.masking``), for the same seed, epoch,
  rank and world size, from batch 0 and from a mid-epoch first batch: the plan's order
  (``pipelines.order``), the batch's mask stream (``pipelines.sampling.masks``).
- The wrapper's own rules, with a stand-in backend: the batch count, the first-batch range,
  an error for a backend that yields other samples than the plan, ends early or runs long.
"""
import importlib.util

import numpy as np
import pytest
import torch

from dino_core.config import load_config
from pipelines.batch import Batch
from pipelines.convert.cli import main as dino_convert
from pipelines.folder import DatasetError
from pipelines.loader import MultiCropLoader, build_loader
from pipelines.order import EpochPlan, epoch_order
from pipelines.sampling.masks import draw_batch_masks
from pipelines.spec import MaskingSpec
from tests.dino_core.train.train_helpers import TINY_AUG
from tests.pipelines.images import write_image_folder

SPEC = load_config(None, TINY_AUG).data.aug
MASKED = SPEC.with_overrides(masking=MaskingSpec(patch_size=4))  # 8 x 8 grids
SEED, RANK, WORLD, BATCH = 5, 1, 2, 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """backend -> its copy of one 11-image dataset (6 samples per rank: one padded)."""
    root = tmp_path_factory.mktemp("same")
    folder = write_image_folder(root / "train", num_classes=3, per_class=4)
    next(folder.glob("*/*.jpg")).unlink()  # 11 images: the order pads one per epoch
    out = {"reference": folder}
    for backend, fmt in (("dali", "wds"), ("ffcv", "ffcv")):
        if importlib.util.find_spec({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend]) is None:
            continue
        dst = root / fmt
        assert dino_convert(["--format", fmt, "--workers", "1", "--no-progress", "--strict",
                             str(folder), str(dst)]) == 0
        out[backend] = dst
    return out


def _ids_and_labels(loader, epoch, first=0):
    loader.set_epoch(epoch, first_batch=first)
    batches = list(loader)
    assert all(isinstance(b, Batch) and b.sample_ids.dtype == torch.int64
               and b.sample_ids.device.type == "cpu" for b in batches)
    assert all(b.masks.dtype == torch.bool and b.masks.shape == (2 * BATCH, 8, 8)
               for b in batches)
    return (torch.cat([b.sample_ids for b in batches]).tolist(),
            torch.cat([b.labels for b in batches]).tolist(),
            torch.cat([b.masks for b in batches]).tolist())


@pytest.mark.parametrize("backend", ["dali", "ffcv"])
def test_every_backend_reads_the_same_samples_in_the_same_order(datasets, backend):
    if backend not in datasets:
        pytest.fail(f"backend {backend} is not installed here")
    got = {}
    for name in ("reference", backend):
        loader = build_loader(datasets[name], backend=name, batch_size=BATCH, spec=MASKED,
                              num_workers=1, seed=SEED, rank=RANK, world_size=WORLD)
        try:
            assert len(loader) == 3 and loader.num_samples == 11
            got[name] = [_ids_and_labels(loader, 0), _ids_and_labels(loader, 3),
                         _ids_and_labels(loader, 3, first=1)]
        finally:
            loader.close()
    assert got[backend] == got["reference"]
    (ids0, _, masks0), (ids3, _, masks3), (tail, _, tail_masks) = got["reference"]
    assert ids0 == epoch_order(11, SEED, 0, RANK, WORLD).tolist()
    assert ids3 == epoch_order(11, SEED, 3, RANK, WORLD).tolist() != ids0
    assert tail == ids3[BATCH:]  # the resumed epoch: batches 1.. of the same order
    assert tail_masks == masks3[2 * BATCH:]  # ... with their masks
    want = torch.cat([draw_batch_masks(MASKED, SEED, RANK, 0, t, BATCH) for t in range(3)])
    assert masks0 == want.tolist() and torch.tensor(masks0).any()


# ------------------------------------------------------------------------------ the wrapper
class StandIn:
    """A backend that yields the plan's samples (or, by ``fault``, the wrong ones, too few,
    too many) with zero views; records the (epoch, first batch) it was asked for."""

    classes = ["a"]

    def __init__(self, plan: EpochPlan, fault: str | None = None) -> None:
        self.plan, self.fault, self.calls, self.closed = plan, fault, [], False

    def batches(self, epoch, first_batch):
        self.calls.append((epoch, first_batch))
        last = self.plan.batches_per_epoch + (1 if self.fault == "long" else 0)
        last -= 1 if self.fault == "short" else 0
        for t in range(first_batch, last):
            ids = self.plan.batch_indices(epoch, t % self.plan.batches_per_epoch)
            if self.fault == "wrong" and t == 1:
                ids = ids[::-1]
            n = len(ids)
            yield [torch.zeros(n, 3, 4, 4)], torch.zeros(n, dtype=torch.int64), \
                torch.from_numpy(ids.copy())

    def close(self):
        self.closed = True


def _wrapped(fault=None, **plan):
    backend = StandIn(EpochPlan(**{"num_samples": 10, "batch_size": 3, **plan}), fault)
    return MultiCropLoader(backend, "data", "stand-in"), backend


def test_the_wrapper_owns_the_batch_count_and_the_first_batch():
    loader, backend = _wrapped()
    assert len(loader) == 3 and loader.num_samples == 10 and loader.classes == ["a"]
    assert len(_wrapped(drop_last=False)[0]) == 4
    loader.set_epoch(2, first_batch=1)
    ids = [b.sample_ids.tolist() for b in loader]
    assert backend.calls == [(2, 1)]
    assert sum(ids, []) == epoch_order(10, 0, 2, 0, 1)[3:9].tolist()
    loader.set_epoch(2, first_batch=3)
    assert list(loader) == []  # a checkpoint after the epoch's last batch
    with pytest.raises(ValueError, match="first_batch 4 outside the epoch's 3 batches"):
        loader.set_epoch(0, first_batch=4)
    with pytest.raises(ValueError, match="first_batch -1 outside"):
        loader.set_epoch(0, first_batch=-1)


def test_too_little_data_for_one_batch_is_refused_when_built():
    with pytest.raises(DatasetError, match="fewer than one batch of 6"):
        _wrapped(batch_size=6, world_size=2)
    assert len(_wrapped(batch_size=6, world_size=2, drop_last=False)[0]) == 1


@pytest.mark.parametrize("fault, message", [
    ("wrong", "batch 1 of epoch 0 holds samples"),
    ("short", "ended epoch 0 after 2 of 3 batches"),
    ("long", "yielded more than the 3 batches of epoch 0")])
def test_a_backend_off_the_plan_is_an_error(fault, message):
    loader, _ = _wrapped(fault)
    loader.set_epoch(0)
    with pytest.raises(RuntimeError, match=message):
        list(loader)


def test_build_loader_checks_its_arguments_before_opening_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        build_loader(missing, backend="tf")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        build_loader(missing, batch_size=0)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        build_loader(missing, rank=2, world_size=2)
    with pytest.raises(ValueError, match="unknown order 'shuffled'"):
        build_loader(missing, order="shuffled")


def test_closing_the_wrapper_closes_the_backend():
    loader, backend = _wrapped()
    with loader:
        pass
    assert backend.closed
    assert np.array_equal(loader.plan.order(1), epoch_order(10, 0, 1, 0, 1))


def test_the_wrapper_draws_each_batchs_masks_from_its_index_only_when_asked():
    loader, _ = _wrapped(drop_last=False)
    loader.set_epoch(1)
    assert all(b.masks is None for b in loader)  # no masking section: DINO's batches
    backend = StandIn(EpochPlan(num_samples=10, batch_size=3, seed=4, rank=1, world_size=2,
                                drop_last=False))
    masked = MultiCropLoader(backend, "data", "stand-in", MASKED)
    masked.set_epoch(1, first_batch=1)
    got = [b.masks for b in masked]
    assert [m.shape[0] for m in got] == [2 * 2]  # batch 1 of 5 samples per rank: 2 of them
    assert torch.equal(got[0], draw_batch_masks(MASKED, 4, 1, 1, 1, 2))
