"""The FFCV executor end to end: contract, one decode per image, crops equal crops of a single
decode with the reference's boxes, per-sample photometric parameters, rank slices, epochs.

Loaders compiled once for the whole module (numba compilation costs seconds):
- ``plain``: JPEG .beton, every photometric probability 0 (views are normalised crops),
  sequential order, two FFCV threads (the parallel path).
- ``recipe``: raw .beton, the recipe's probabilities, random order, global rank 1 of 2, one
  sample per batch (more batches than FFCV has buffers), the CPU default (photometric ops
  compiled into the op).
- ``recipe_device``: the same with photometric="device": the GPU path (uint8 crops +
  parameter rows out of the op, ``finish_many`` after it), run on the CPU.
  test_ffcv_slots.py holds its buffer handling and host syncs.
Crops must equal the compiled resize applied to one decode of the stored JPEG with the
boxes and flips the REFERENCE draws for the sample (``sample_image_params`` on
``sample_rng(seed, rank, epoch, index)``), and be within mean 0.3 / p99 2 levels of the
reference's PIL crop + resize (test_ffcv_crops.py). Compiled views must equal the fused
kernel on those crops with the reference's parameters bitwise, and the tensor ops within
float32 noise; the device path must hand ``finish_many`` exactly those crops and the
reference's rows, and so give the compiled views bitwise.
Every compiled function sets fastmath explicitly, so FFCV's fastmath does not leak in.
"""
import threading
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from pipelines.photometric import cpu_kernel as PK  # noqa: E402
from pipelines.photometric import params as P  # noqa: E402
from pipelines.photometric import torch_ops as T  # noqa: E402
from pipelines.ffcv_backend import decode_once  # noqa: E402
from pipelines.ffcv_backend import loader as L  # noqa: E402
from pipelines.ffcv_backend.outputs import RecycledOutputs  # noqa: E402
from pipelines.ffcv_backend.slots import GuardedEpochIterator  # noqa: E402
from pipelines.folder import DatasetError  # noqa: E402
from pipelines.loader import MultiCropLoader, build_loader  # noqa: E402
from pipelines.order import epoch_order  # noqa: E402
from pipelines.sampling.param_row import to_rows  # noqa: E402
from tests.pipelines.ffcv_twins import (PLAIN, RECIPE, SEED, convert_folder,  # noqa: E402
                                        reference_params, stored_images, twin_crops)
from tests.pipelines.fidelity import assert_images_close, is_gray, to_pixels  # noqa: E402
from tests.pipelines.images import write_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("src") / "train", 3, 4, (40, 64))


@pytest.fixture(scope="module")
def jpg(tmp_path_factory, folder):
    return convert_folder(folder, tmp_path_factory.mktemp("jpg"), "jpg")


@pytest.fixture(scope="module")
def raw(tmp_path_factory, folder):
    return convert_folder(folder, tmp_path_factory.mktemp("raw"), "raw")


@pytest.fixture(scope="module")
def plain(jpg):
    loader = build_loader(jpg, backend="ffcv", batch_size=5, spec=PLAIN, num_workers=2,
                          seed=SEED, shuffle=False, drop_last=False)
    yield loader
    loader.close()


def recipe_loader(raw, **options):
    """One sample per batch: 6 batches per epoch, more than FFCV's 4 rotating buffers."""
    return build_loader(raw.parent, backend="ffcv", batch_size=1, spec=RECIPE, num_workers=1,
                        seed=SEED, rank=1, world_size=2, shuffle=True, drop_last=True,
                        **options)


@pytest.fixture(scope="module")
def recipe(raw):
    loader = recipe_loader(raw)  # CPU: photometric ops compiled into the op
    yield loader
    loader.close()


@pytest.fixture(scope="module")
def recipe_device(raw):
    loader = recipe_loader(raw, photometric="device")  # the GPU path, on the CPU
    yield loader
    loader.close()


def run_epoch(loader, epoch):
    """(views, labels, decode counts, sample ids) per batch, copied."""
    loader.set_epoch(epoch)
    batches = []
    for batch in loader:
        batches.append(([v.clone() for v in batch.views], batch.labels.clone(),
                        loader.backend.last_decode_counts.clone(), batch.sample_ids.clone()))
    return batches


# ------------------------------------------------------------------------------ plain loader
def test_contract_shapes_labels_and_length(plain, jpg, folder):
    assert isinstance(plain, MultiCropLoader)
    batches = run_epoch(plain, 0)
    _, labels = stored_images(jpg)
    assert len(plain) == len(batches) == 3 and plain.num_samples == 12
    assert plain.classes == sorted(p.name for p in folder.iterdir())
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    for views, batch_labels, _, _ in batches:
        n = len(batch_labels)
        assert [tuple(v.shape) for v in views] == [(n, 3, 32, 32)] * 2 + [(n, 3, 16, 16)] * 2
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in views)
    got = torch.cat([b[1] for b in batches])
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), labels)


def test_a_loader_built_after_another_ran_works(plain, raw):
    """FFCV's OS-cache reader marks numba's shared uint8[::1] type read-only in place; once
    the first loader had compiled the op, every later loader's thread died (reader_fix.py)."""
    run_epoch(plain, 0)
    second = build_loader(raw, backend="ffcv", batch_size=4, spec=PLAIN, num_workers=1,
                          seed=SEED, shuffle=False)
    try:
        assert len(run_epoch(second, 0)) == 3
    finally:
        second.close()
    assert len(list(decode_once.decode_jpeg.overloads.values())) >= 1


def test_one_jpeg_decode_per_image(plain):
    counts = torch.cat([b[2] for b in run_epoch(plain, 0)])
    assert counts.tolist() == [1] * 12


def test_decoder_draws_the_reference_parameters(plain, recipe, jpg):
    """The op's compiled draw (key from the epoch key it reads by address, then the rows)
    gives, bitwise, the rows of the reference's draw for the same (seed, rank, epoch,
    index): FFCV, DALI and the reference share every crop box and flip."""
    images, _ = stored_images(jpg)
    for loader, spec, rank in ((plain, PLAIN, 0), (recipe, RECIPE, 1)):
        for epoch in (0, 3):
            loader.backend.decoder.set_epoch(epoch)  # what iterating an epoch does first
            for index, image in enumerate(images):
                got = loader.backend.decoder.sample_rows(index, image.shape[1], image.shape[0])
                want = to_rows(reference_params(spec, image, SEED, rank, epoch, index))
                assert np.array_equal(got.view(np.uint64), want.view(np.uint64)), (epoch, index)


def test_crops_are_the_reference_boxes_cut_from_a_single_decode(plain, jpg):
    """Pixel-level proof that the op's boxes and flips ARE the reference's: its views equal
    the compiled resize of the reference's boxes (a different box would differ by tens of
    levels), and are close to the reference's own PIL crops."""
    images, _ = stored_images(jpg)
    for epoch in (0, 4):
        batches = run_epoch(plain, epoch)
        index = 0
        for views, labels, _, _ in batches:
            for b in range(len(labels)):
                want = twin_crops(PLAIN, images[index], SEED, 0, epoch, index)
                near = twin_crops(PLAIN, images[index], SEED, 0, epoch, index, pil=True)
                for v, w, p in zip(views, want, near):
                    got = to_pixels(v[b], PLAIN.mean, PLAIN.std)
                    what = f"epoch {epoch} sample {index}"
                    assert_images_close(got, w, 0.01, 1e-3, 1.0, what)  # same boxes
                    assert_images_close(got, p, 0.3, 2, what=what + " vs PIL")
                index += 1


def test_epochs_differ_and_repeat_exactly(plain):
    a, b, again = run_epoch(plain, 1), run_epoch(plain, 2), run_epoch(plain, 1)
    assert all(torch.equal(x, y) for ba, bb in zip(a, again) for x, y in zip(ba[0], bb[0]))
    assert not torch.equal(a[0][0][0], b[0][0][0])


def test_stopping_mid_epoch_then_iterating_again(plain):
    plain.set_epoch(0)
    first = next(iter(plain)).views[0].clone()
    again = next(iter(plain)).views[0]
    assert torch.equal(first, again)
    plain.close()


def test_stopping_mid_epoch_ends_ffcvs_thread_before_freeing_its_memory(plain, raw):
    """FFCV's own close only signals its thread, which goes on decoding into memory it frees
    (a thread left in numba's parallel decode aborts the process at exit), and never ends
    while it waits to queue its end-of-epoch marker. Two ways to be stopped: ``plain``'s
    thread has decoded its whole epoch (3 batches, 2 queued) and waits on a full queue;
    ``recipe``'s (6 batches of 1) is still decoding."""
    second = recipe_loader(raw)
    try:
        for loader, wait_for_full_queue in ((plain, True), (second, False)):
            loader.set_epoch(0)
            batches = iter(loader)
            next(batches)
            thread = loader.backend._running.iterator
            deadline = time.monotonic() + 120  # hang guard only
            while wait_for_full_queue and not thread.output_queue.full():
                assert time.monotonic() < deadline, "FFCV's thread never filled its queue"
                time.sleep(0.01)
            batches.close()  # dropped mid-epoch: the loader stops FFCV
            assert not thread.is_alive()
            assert not [t for t in threading.enumerate() if isinstance(t, GuardedEpochIterator)]
            assert len(list(loader)) == len(loader)  # and the next epoch runs whole
    finally:
        second.close()


# ------------------------------------------------------------------------------ recipe loader
def test_raw_samples_are_not_decoded_and_ranks_read_their_slice(recipe, raw):
    _, labels = stored_images(raw)
    for epoch in (0, 1):
        batches = run_epoch(recipe, epoch)
        want = epoch_order(12, SEED, epoch, 1, 2, "random")
        assert np.array_equal(torch.cat([b[3] for b in batches]).numpy(), want)
        assert len(recipe) == len(batches) == 6
        assert np.array_equal(torch.cat([b[1] for b in batches]).numpy(), labels[want])
        assert torch.cat([b[2] for b in batches]).tolist() == [0] * 6


def test_compiled_views_are_the_reference_recipe_of_the_sample(recipe, raw):
    """The CPU default: every view equals the fused kernel applied to the twin crop with the
    REFERENCE's parameters for that sample (bitwise: the same compiled code), and the tensor
    ops (cpu_kernel's twin) on the same crop and parameters within float32 noise."""
    assert recipe.backend.compiled
    images, _ = stored_images(raw)
    epoch = 2
    order = recipe.plan.order(epoch)
    consts = PK.kernel_consts(RECIPE)
    ops = T.PhotometricOps(RECIPE)
    gray_views = 0
    for batch, (views, labels, _, _) in enumerate(run_epoch(recipe, epoch)):
        for b, index in enumerate(order[batch:batch + 1]):
            params = reference_params(RECIPE, images[index], SEED, 1, epoch, index)
            crops = twin_crops(RECIPE, images[index], SEED, 1, epoch, index)
            for v, (crop, p) in enumerate(zip(crops, params)):
                fused = np.empty((3, *crop.shape[:2]), np.float32)
                PK.photometric_batch(crop[None], to_rows([p]), consts.norm, consts.solarize_at,
                                     fused[None])
                assert np.array_equal(views[v][b].numpy(), fused), (batch, b, v)
                x = T.to_float(torch.from_numpy(crop[None]), channels_last=True)
                twin = ops.normalize(T.apply_photometric(x, P.params_from_views([p]), RECIPE))
                got = to_pixels(views[v][b], RECIPE.mean, RECIPE.std)
                assert_images_close(got, to_pixels(twin[0], RECIPE.mean, RECIPE.std), 0.01,
                                    0.05, 0.5, f"view {v}")
                gray_views += p.grayscale
                if p.grayscale:
                    assert is_gray(got, atol=1e-3)
    assert gray_views > 0


def test_batches_kept_by_the_caller_stay_intact(recipe, recipe_device, raw):
    """FFCV reuses its batch buffers every ``batches_ahead + 2`` batches: nothing a batch
    yields may alias them (the compiled path's labels once did). The device path's views
    equal the compiled path's bitwise: the same crops, rows and numba kernel."""
    _, labels = stored_images(raw)
    want = labels[recipe.plan.order(1)]
    kept = {}
    for loader in (recipe, recipe_device):
        assert len(loader) > loader.backend._loader.slots
        loader.set_epoch(1)
        kept[loader] = [(b.views, b.labels) for b in loader]  # as yielded, not copied
        assert np.array_equal(torch.cat([b[1] for b in kept[loader]]).numpy(), want)
    for v in range(RECIPE.num_views):
        compiled = torch.cat([b[0][v] for b in kept[recipe]])
        assert torch.equal(compiled, torch.cat([b[0][v] for b in kept[recipe_device]])), v


def test_recycled_outputs_equal_fresh_ones(recipe):
    """The compiled path refills a previous batch's tensors once the caller dropped them
    (outputs.py): every batch equals the one the same loader yields into fresh tensors."""
    backend = recipe.backend
    pool = backend._outputs
    try:
        backend._outputs = RecycledOutputs(keep=0)  # the twin: a fresh tensor per batch
        want = run_epoch(recipe, 2)
        assert backend._outputs.reused == 0
        backend._outputs = pool
        before = pool.reused
        got = run_epoch(recipe, 2)
        assert pool.reused > before
    finally:
        backend._outputs = pool
    for (wv, wl, _, wi), (gv, gl, _, gi) in zip(want, got, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(wv, gv, strict=True))
        assert torch.equal(wl, gl) and torch.equal(wi, gi)


def test_device_path_finishes_the_reference_crops_with_the_reference_rows(recipe_device, raw,
                                                                          monkeypatch):
    """The GPU path, run on the CPU: ``finish_many`` gets each view's crops as cut from one
    decode with the reference's boxes, and the very rows the reference draws (bitwise: the
    parameters of the sample's counter stream, as the compiled CPU finish uses them); its
    views then equal the compiled path's bitwise (test above) and grayscale hits exactly
    the rows that say so."""
    loader = recipe_device
    assert not loader.backend.compiled
    calls = []

    def recording(batches, spec, impl="auto"):  # one call per batch, every size in it
        outs = finish(batches, spec, impl)
        calls.extend((crops.clone(), rows.clone(), out.clone())
                     for (crops, rows), out in zip(batches, outs))
        return outs

    finish = L.finish_many
    monkeypatch.setattr(L, "finish_many", recording)
    images, _ = stored_images(raw)
    epoch = 2
    order = loader.plan.order(epoch)
    groups = loader.backend.decoder.layout.groups()
    gray_views = 0
    loader.set_epoch(epoch)
    for batch, views in enumerate(b.views for b in loader):
        index = order[batch]  # one sample per batch
        params = reference_params(RECIPE, images[index], SEED, 1, epoch, index)
        crops = twin_crops(RECIPE, images[index], SEED, 1, epoch, index)
        assert len(calls) == len(groups) * (batch + 1)
        for (first, k, _), (u8, rows, finished) in zip(groups, calls[-len(groups):]):
            want_rows = to_rows(params[first:first + k])
            assert np.array_equal(rows.numpy().view(np.uint64), want_rows.view(np.uint64))
            assert np.array_equal(u8.numpy(), np.stack(crops[first:first + k]))
            for j in range(k):
                assert torch.equal(views[first + j][0], finished[j])
                if params[first + j].grayscale:
                    gray_views += 1
                    assert is_gray(to_pixels(finished[j], RECIPE.mean, RECIPE.std), atol=1e-3)
    assert gray_views > 0


# ------------------------------------------------------------------------------ errors
def test_clear_errors(tmp_path, jpg):
    with pytest.raises(DatasetError, match="not found"):
        build_loader(tmp_path / "missing", backend="ffcv")
    (tmp_path / "x.beton").write_bytes(b"not a beton")
    with pytest.raises(DatasetError, match="x.beton is not a readable .beton"):
        build_loader(tmp_path / "x.beton", backend="ffcv")
    with pytest.raises(TypeError, match="unknown ffcv backend option"):
        build_loader(jpg, backend="ffcv", colour="blue")
    with pytest.raises(ValueError, match="order"):
        build_loader(jpg, backend="ffcv", order="shuffled")
    with pytest.raises(ValueError, match="photometric"):
        build_loader(jpg, backend="ffcv", photometric="tensor")
    with pytest.raises(ValueError, match="finish_impl"):
        build_loader(jpg, backend="ffcv", photometric="device", finish_impl="gpu")
