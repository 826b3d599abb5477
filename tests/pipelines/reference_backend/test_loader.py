"""The reference backend against the MultiCropLoader contract (pipelines/loader.py)."""
import dataclasses
import logging

import numpy as np
import psutil
import pytest
import torch

from pipelines import MultiCropLoader, build_loader
from pipelines.folder import DatasetError, scan_image_folder
from pipelines.images import SampleReader
from pipelines.order import epoch_order
from pipelines.reference_backend.loader import MultiCropDataset
from pipelines.spec import AugmentationSpec
from tests.pipelines.images import write_bad_files, write_image_folder

SPEC = AugmentationSpec()
TINY = SPEC.with_overrides(  # the recipe with tiny sizes: only the sizes differ
    global_views=tuple(dataclasses.replace(v, size=24) for v in SPEC.global_views),
    local_view=dataclasses.replace(SPEC.local_view, size=12), local_crops=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), num_classes=3, per_class=5)


def make(folder, **kw):
    args = dict(batch_size=4, spec=TINY, num_workers=0, seed=0)
    args.update(kw)
    return build_loader(folder, backend="reference", **args)


def epoch(loader, e=0):
    loader.set_epoch(e)
    return [(b.views, b.labels) for b in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb))
        for (va, la), (vb, lb) in zip(a, b))


# ------------------------------------------------------------------------------ batches
def test_batches_shapes_globals_first_and_labels(folder):
    loader = make(folder, shuffle=False, drop_last=False)
    assert isinstance(loader, MultiCropLoader)
    assert loader.num_samples == 15 and loader.classes == sorted(loader.classes)
    batches = epoch(loader)
    assert len(batches) == len(loader) == 4
    for views, labels in batches:
        b = labels.shape[0]
        assert [tuple(v.shape) for v in views] == [(b, 3, 24, 24)] * 2 + [(b, 3, 12, 12)] * 2
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in views)
        assert labels.dtype == torch.int64
    labels = torch.cat([lab for _, lab in batches]).tolist()
    assert labels == [label for _, label in scan_image_folder(folder).samples]  # identity order


def test_shuffled_epoch_visits_every_sample_once(folder):
    loader = make(folder, batch_size=5, shuffle=True)
    labels = sorted(torch.cat([lab for _, lab in epoch(loader, 2)]).tolist())
    assert labels == sorted(label for _, label in scan_image_folder(folder).samples)


def test_views_match_the_executor_on_the_same_stream(folder):
    """Batch row i is ReferenceMultiCrop on sample i with sample_rng(seed, rank, epoch, i)."""
    loader = make(folder, batch_size=3, shuffle=False, drop_last=False, seed=11)
    views, _ = epoch(loader, 4)[0]
    ds = MultiCropDataset(SampleReader(scan_image_folder(folder).samples), TINY, seed=11, rank=0)
    for i in range(3):
        single = ds[(4, i)][0]
        assert all(torch.equal(views[v][i], single[v]) for v in range(TINY.num_views))


def test_same_seed_reproducible_other_seed_or_epoch_differs(folder):
    a, b = epoch(make(folder)), epoch(make(folder))
    assert same(a, b)
    assert not same(a, epoch(make(folder, seed=1)))
    assert not same(a, epoch(make(folder), 1))


def test_independent_of_num_workers(folder):
    serial = epoch(make(folder, num_workers=0), 3)
    loader = make(folder, num_workers=2)
    try:
        assert same(serial, epoch(loader, 3))
    finally:
        loader.close()


def test_ranks_disjoint_covering_equal_length_different_augmentation(folder):
    ranks = [make(folder, rank=r, world_size=2, batch_size=3, drop_last=True) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 8 // 3
    assert [len(epoch(r)) for r in ranks] == [2, 2]
    samples = scan_image_folder(folder).samples
    reader = SampleReader(samples)
    for r in range(2):  # each rank reads exactly its epoch_order share (test_order.py)
        loader = make(folder, rank=r, world_size=2, batch_size=8, drop_last=False, seed=3)
        (views, labels), = epoch(loader, 1)
        ds = MultiCropDataset(reader, TINY, seed=3, rank=r)
        for row, i in enumerate(epoch_order(15, 3, 1, r, 2)):
            assert labels[row] == samples[i][1]
            assert torch.equal(views[0][row], ds[(1, int(i))][0][0])
    r0 = MultiCropDataset(reader, TINY, seed=0, rank=0)[(0, 5)][0]
    r1 = MultiCropDataset(reader, TINY, seed=0, rank=1)[(0, 5)][0]
    assert not any(torch.equal(x, y) for x, y in zip(r0, r1))  # same image, other streams


def test_output_dtype_from_spec(folder):
    views, _ = epoch(make(folder, spec=TINY.with_overrides(output_dtype="bfloat16")))[0]
    assert all(v.dtype == torch.bfloat16 for v in views)


def test_too_few_samples_for_one_batch_is_a_clear_error(folder):
    with pytest.raises(DatasetError, match="batch"):
        make(folder, batch_size=16, drop_last=True)
    with pytest.raises(TypeError, match="no_such_option"):
        make(folder, no_such_option=1)


# ------------------------------------------------------------------------------ bad files
def test_bad_files_reported_and_replaced_never_fatal(tmp_path, caplog):
    root = write_image_folder(tmp_path / "data", num_classes=2, per_class=3)
    first = sorted(p.name for p in root.iterdir())[0]
    write_bad_files(root / first)
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        loader = make(root, batch_size=2, shuffle=False, drop_last=False)
        batches = epoch(loader)
    log = caplog.text
    assert "notes.txt" in log and "zero_byte.jpg" in log  # scan skips, reported up front
    assert "truncated.jpg" in log and "random_bytes.jpg" in log  # decode failures, at load
    assert loader.num_samples == 8 and sum(len(lab) for _, lab in batches) == 8
    # a replaced sample is the next decodable one: its views equal that sample's views
    samples = scan_image_folder(root).samples
    bad = next(i for i, (p, _) in enumerate(samples) if p.endswith("random_bytes.jpg"))
    reader = SampleReader(samples)
    img, label = reader.read(bad)
    good = next(j for j in range(bad + 1, len(samples)) if "bytes" not in samples[j][0]
                and "truncated" not in samples[j][0])
    assert label == samples[good][1]
    assert np.array_equal(np.asarray(img), np.asarray(reader.read(good)[0]))


# ------------------------------------------------------------------------------ shutdown
def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_close_shuts_workers_down(folder):
    before = _children()
    loader = make(folder, num_workers=2, batch_size=2)
    it = iter(loader)
    next(it)  # workers are up and prefetching
    workers = [psutil.Process(pid) for pid in _children() - before]
    assert len(workers) == 2
    loader.close()
    gone, alive = psutil.wait_procs(workers, timeout=60)  # a hang guard: ends when they do
    assert not alive
    next_epoch = epoch(loader, 1)  # a closed loader can start again
    assert len(next_epoch) == len(loader)
    loader.close()


def test_abandoned_epoch_does_not_leak_workers(folder):
    before = _children()
    loader = make(folder, num_workers=2, batch_size=2)
    it = iter(loader)
    next(it)
    first = [psutil.Process(pid) for pid in _children() - before]
    it2 = iter(loader)  # start over without finishing: the first epoch's workers must go
    next(it2)
    gone, alive = psutil.wait_procs(first, timeout=60)  # a hang guard: ends when they do
    assert not alive
    loader.close()


def test_workers_are_forked_even_where_the_default_is_spawn(folder):
    """Inside a spawned process (dino-bench's backend child) the default start method is
    spawn; spawned DataLoader workers can abort at exit (pipelines/processes.py). The
    loader's workers are forks: same command line as this process, not spawn_main's."""
    import multiprocessing
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        before = _children()
        loader = make(folder, num_workers=2, batch_size=2)
        it = iter(loader)
        next(it)
        workers = [psutil.Process(pid) for pid in _children() - before]
        assert len(workers) == 2
        for w in workers:
            assert w.cmdline() == psutil.Process().cmdline(), w.cmdline()
        loader.close()
    finally:
        multiprocessing.set_start_method(previous, force=True)
