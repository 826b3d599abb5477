"""Feature extraction: in order, identical when sharded over ranks, dumps round-trip."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import TensorDataset

from dino_core.formats.files import CheckpointError
from dino_core.eval import features as feat_mod
from dino_core.eval.datasets import open_eval_splits
from dino_core.eval.features import (FeatureSet, extract_features, load_features,
                                     save_features, shard_bounds)
from dino_core.eval.knn import _broadcast_results, knn_classify
from pipelines.folder import DatasetError


def toy_dataset(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.arange(n) % 3)


def toy_model(x):
    """[B, 3, 4, 4] -> [B, 5], a fixed function of each sample alone."""
    return torch.cat((x.flatten(1)[:, :4], x.flatten(1).sum(1, keepdim=True)), dim=1)


def test_single_process_extraction_is_in_dataset_order():
    ds = toy_dataset(11)
    fs = extract_features(toy_model, ds, "cpu", batch_size=4, num_workers=0)
    assert torch.allclose(fs.features, toy_model(ds.tensors[0]))
    assert torch.equal(fs.labels, ds.tensors[1])


def test_shards_partition_the_dataset():
    for n, world in ((10, 3), (2, 4), (7, 7), (1000, 8)):
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    feat_mod.GATHER_ROWS = 2  # several all_gather rounds
    try:
        for n in (1, 9):  # n=1 leaves rank 1 with nothing; 9 gives uneven shards
            fs = extract_features(toy_model, toy_dataset(n), "cpu", batch_size=2, num_workers=0)
            torch.save({"f": fs.features, "l": fs.labels}, f"{out_dir}/rank{rank}_n{n}.pth")
        mine = knn_classify(fs, fs, ks=(1, 3)) if rank == 0 else {}
        torch.save(_broadcast_results(mine, [1, 3]), f"{out_dir}/knn{rank}.pth")
    finally:
        dist.destroy_process_group()


def test_distributed_extraction_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for n in (9, 1):
        ds = toy_dataset(n)
        want = toy_model(ds.tensors[0])
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}_n{n}.pth", weights_only=True)
            assert torch.allclose(got["f"], want), (rank, n)
            assert torch.equal(got["l"], ds.tensors[1]), (rank, n)
    rank0, rank1 = (torch.load(tmp_path / f"knn{r}.pth", weights_only=True) for r in range(2))
    single = extract_features(toy_model, toy_dataset(9), "cpu")
    assert rank1 == rank0 == knn_classify(single, single, ks=(1, 3))


def test_feature_dumps_round_trip_with_the_reference_names(tmp_path):
    train = FeatureSet(torch.randn(6, 4), torch.arange(6))
    val = FeatureSet(torch.randn(3, 4), torch.arange(3))
    save_features(tmp_path, train, val)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "testfeat.pth", "testlabels.pth", "trainfeat.pth", "trainlabels.pth"]
    got_train, got_val = load_features(tmp_path)
    assert torch.equal(got_train.features, train.features)
    assert torch.equal(got_val.labels, val.labels)
    (tmp_path / "testlabels.pth").unlink()
    with pytest.raises(CheckpointError, match="testlabels.pth"):
        load_features(tmp_path)


def _image_tree(root, splits):
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                root / split / c / "0.png")


def test_eval_splits_need_both_folders_and_the_same_classes(tmp_path):
    _image_tree(tmp_path / "ok", {"train": ["a", "b"], "val": ["a", "b"]})
    train, val, classes = open_eval_splits(tmp_path / "ok")
    assert classes == ["a", "b"] and len(train) == len(val) == 2
    assert train[0][0].shape == (3, 224, 224)
    _image_tree(tmp_path / "diff", {"train": ["a", "b"], "val": ["a", "c"]})
    with pytest.raises(DatasetError, match=r"different class folders.*b, c"):
        open_eval_splits(tmp_path / "diff")
    _image_tree(tmp_path / "noval", {"train": ["a"]})
    with pytest.raises(DatasetError, match=r"val is missing"):
        open_eval_splits(tmp_path / "noval")
