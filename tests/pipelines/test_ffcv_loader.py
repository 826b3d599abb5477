"""The FFCV executor end to end: contract, one decode per image, crops equal crops of a single
decode with the reference's boxes, per-sample photometric parameters, rank slices, epochs.

Loaders compiled once for the whole module (numba compilation costs seconds):
- ``plain``: JPEG .beton, every photometric probability 0 (views are normalised crops),
  sequential order, two FFCV threads (the parallel path).
- ``recipe``: raw .beton, the recipe's probabilities, random order, global rank 1 of 2, the
  CPU default (photometric ops compiled into the op).
- ``recipe_tensor``: the same with photometric="tensor" (the GPU path's tensor ops).
Crops must equal the compiled resize applied to one decode of the stored JPEG with the
boxes and flips the REFERENCE draws for the sample (``sample_image_params`` on
``sample_rng(seed, rank, epoch, index)``), and be within mean 0.3 / p99 2 levels of the
reference's PIL crop + resize (test_ffcv_crops.py). Compiled views must equal the fused
kernel on those crops with the reference's parameters bitwise, and the tensor ops within
float32 noise; tensor-path views must equal the tensor ops with the redrawn parameters.
Every compiled function sets fastmath explicitly, so FFCV's fastmath does not leak in.
"""
import dataclasses

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ffcv
pytest.importorskip("ffcv", reason="ffcv is not installed")

from ffcv.libffcv import imdecode  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.photometric import cpu_kernel as PK  # noqa: E402
from pipelines import reference as ref  # noqa: E402
from pipelines.photometric import torch_ops as T  # noqa: E402
from pipelines.convert.beton import convert  # noqa: E402
from pipelines.convert.common import ConvertConfig  # noqa: E402
from pipelines.ffcv_backend import decode_once  # noqa: E402
from pipelines.ffcv_backend import loader as L  # noqa: E402
from pipelines.ffcv_backend.order import epoch_order, rank_slice  # noqa: E402
from pipelines.ffcv_backend.resample import filter_code, resize_crop  # noqa: E402
from pipelines.folder import DatasetError  # noqa: E402
from pipelines.loader import MultiCropLoader, build_loader  # noqa: E402
from pipelines.sampling.param_row import to_rows  # noqa: E402
from pipelines.sampling import sample_image_params, sample_rng  # noqa: E402
from pipelines.spec import AugmentationSpec, ColorJitterSpec, ViewSpec  # noqa: E402
from tests.pipelines.fidelity import assert_images_close, is_gray, to_pixels  # noqa: E402
from tests.pipelines.images import write_image_folder  # noqa: E402

RECIPE = AugmentationSpec(global_views=(ViewSpec(32, (0.4, 1.0), 1.0, 0.0),
                                        ViewSpec(32, (0.4, 1.0), 0.1, 0.2)),
                          local_view=ViewSpec(16, (0.05, 0.4), 0.5, 0.0), local_crops=2)
PLAIN = RECIPE.with_overrides(
    global_views=tuple(dataclasses.replace(v, blur_p=0.0, solarize_p=0.0)
                       for v in RECIPE.global_views),
    local_view=dataclasses.replace(RECIPE.local_view, blur_p=0.0),
    jitter=ColorJitterSpec(p=0.0), grayscale_p=0.0)
SEED = 3


def _convert(tmp_path_factory, folder, mode):
    dst = tmp_path_factory.mktemp(mode)
    convert(ConvertConfig(src=folder, dst=dst, format="ffcv", write_mode=mode, max_side=64,
                          workers=2, progress=False))
    return dst / "train.beton"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("src") / "train", 3, 4, (40, 64))


@pytest.fixture(scope="module")
def jpg(tmp_path_factory, folder):
    return _convert(tmp_path_factory, folder, "jpg")


@pytest.fixture(scope="module")
def raw(tmp_path_factory, folder):
    return _convert(tmp_path_factory, folder, "raw")


@pytest.fixture(scope="module")
def plain(jpg):
    loader = build_loader(jpg, backend="ffcv", batch_size=5, spec=PLAIN, num_workers=2,
                          seed=SEED, shuffle=False, drop_last=False)
    yield loader
    loader.close()


def _recipe_loader(raw, **options):
    return build_loader(raw.parent, backend="ffcv", batch_size=3, spec=RECIPE, num_workers=1,
                        seed=SEED, rank=1, world_size=2, shuffle=True, drop_last=True,
                        **options)


@pytest.fixture(scope="module")
def recipe(raw):
    loader = _recipe_loader(raw)  # CPU: photometric ops compiled into the op
    yield loader
    loader.close()


@pytest.fixture(scope="module")
def recipe_tensor(raw):
    loader = _recipe_loader(raw, photometric="tensor")  # the GPU path's tensor ops, on CPU
    yield loader
    loader.close()


def stored_images(path) -> tuple[list[np.ndarray], np.ndarray]:
    """Each sample's pixels, decoded ONCE with FFCV's own decoder (or raw), and the labels."""
    reader = Reader(str(path))
    sizes = {int(r["ptr"]): int(r["size"]) for r in reader.alloc_table}
    data = np.frombuffer(path.read_bytes(), np.uint8)
    images = []
    for field in reader.metadata["f0"]:
        ptr, h, w = int(field["data_ptr"]), int(field["height"]), int(field["width"])
        payload = data[ptr:ptr + sizes[ptr]]
        if field["mode"] == 0:
            out = np.zeros(h * w * 3, np.uint8)
            assert imdecode(payload, out, h, w, h, w, 0, 0, 1, 1, False, False) == 0
            images.append(out.reshape(h, w, 3))
        else:
            images.append(payload.reshape(h, w, 3))
    return images, np.asarray(reader.metadata["f1"], dtype=np.int64)


def reference_params(spec, image, seed, rank, epoch, index):
    """What the reference executor draws for this sample (image: uint8 [H, W, 3])."""
    return sample_image_params(spec, image.shape[1], image.shape[0],
                               sample_rng(seed, rank, epoch, index))


def twin_crops(spec, image, seed, rank, epoch, index, pil=False) -> list[np.ndarray]:
    """The views of one sample from one decoded image, boxes and flips the reference draws,
    resampled by the compiled resize (or the reference's PIL resize)."""
    out = []
    for view, p in zip(spec.views(), reference_params(spec, image, seed, rank, epoch, index)):
        if pil:
            crop = ref.resized_crop(Image.fromarray(image), p.box, view.size, spec.interpolation)
            out.append(np.asarray(ref.hflip(crop) if p.flip else crop))
        else:
            crop = np.zeros((view.size, view.size, 3), np.uint8)
            resize_crop(image, *p.box, p.flip, crop, filter_code(spec.interpolation))
            out.append(crop)
    return out


def run_epoch(loader, epoch):
    loader.set_epoch(epoch)
    batches = []
    for views, labels in loader:
        batches.append(([v.clone() for v in views], labels.clone(),
                        loader.last_decode_counts.clone()))
    return batches


# ------------------------------------------------------------------------------ plain loader
def test_contract_shapes_labels_and_length(plain, jpg, folder):
    assert isinstance(plain, MultiCropLoader)
    batches = run_epoch(plain, 0)
    _, labels = stored_images(jpg)
    assert len(plain) == len(batches) == 3 and plain.num_samples == 12
    assert plain.classes == sorted(p.name for p in folder.iterdir())
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    for views, batch_labels, _ in batches:
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
            loader.decoder.set_epoch(epoch)  # what iterating an epoch does first
            for index, image in enumerate(images):
                got = loader.decoder.sample_rows(index, image.shape[1], image.shape[0])
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
        for views, labels, _ in batches:
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
    first = next(iter(plain))[0][0].clone()
    again = next(iter(plain))[0][0]
    assert torch.equal(first, again)
    plain.close()


# ------------------------------------------------------------------------------ recipe loader
def test_raw_samples_are_not_decoded_and_ranks_read_their_slice(recipe, raw):
    _, labels = stored_images(raw)
    for epoch in (0, 1):
        batches = run_epoch(recipe, epoch)
        want = rank_slice(epoch_order(12, epoch, SEED, "random"), 1, 2)
        assert np.array_equal(recipe.sample_indices(epoch), want)
        assert len(recipe) == len(batches) == 2
        assert np.array_equal(torch.cat([b[1] for b in batches]).numpy(), labels[want])
        assert torch.cat([b[2] for b in batches]).tolist() == [0] * 6


def test_compiled_views_are_the_reference_recipe_of_the_sample(recipe, raw):
    """The CPU default: every view equals the fused kernel applied to the twin crop with the
    REFERENCE's parameters for that sample (bitwise: the same compiled code), and the tensor
    ops (cpu_kernel's twin) on the same crop and parameters within float32 noise."""
    assert recipe.compiled
    images, _ = stored_images(raw)
    epoch = 2
    order = recipe.sample_indices(epoch)
    consts = PK.kernel_consts(RECIPE)
    ops = T.PhotometricOps(RECIPE)
    gray_views = 0
    for batch, (views, labels, _) in enumerate(run_epoch(recipe, epoch)):
        for b, index in enumerate(order[batch * 3:(batch + 1) * 3]):
            params = reference_params(RECIPE, images[index], SEED, 1, epoch, index)
            crops = twin_crops(RECIPE, images[index], SEED, 1, epoch, index)
            for v, (crop, p) in enumerate(zip(crops, params)):
                fused = np.empty((3, *crop.shape[:2]), np.float32)
                PK.photometric_batch(crop[None], to_rows([p]), consts.norm, consts.solarize_at,
                                     fused[None])
                assert np.array_equal(views[v][b].numpy(), fused), (batch, b, v)
                x = T.to_float(torch.from_numpy(crop[None]), channels_last=True)
                twin = ops.normalize(T.apply_photometric(x, T.params_from_views([p]), RECIPE))
                got = to_pixels(views[v][b], RECIPE.mean, RECIPE.std)
                assert_images_close(got, to_pixels(twin[0], RECIPE.mean, RECIPE.std), 0.01,
                                    0.05, 0.5, f"view {v}")
                gray_views += p.grayscale
                if p.grayscale:
                    assert is_gray(got, atol=1e-3)
    assert gray_views > 0


def test_torch_ops_get_per_sample_parameters(recipe_tensor, raw):
    """The GPU path (run here on the CPU): redraw each batch's parameters from its generator
    seed and apply them to the twin crops: the loader's views must match, and grayscale must
    hit exactly those samples."""
    recipe = recipe_tensor
    assert not recipe.compiled
    images, _ = stored_images(raw)
    epoch = 2
    order = recipe.sample_indices(epoch)
    ops = T.PhotometricOps(RECIPE)
    gray_views = 0
    for batch, (views, labels, _) in enumerate(run_epoch(recipe, epoch)):
        indices = order[batch * 3:(batch + 1) * 3]
        crops = [twin_crops(RECIPE, images[i], SEED, 1, epoch, i) for i in indices]
        gen = torch.Generator().manual_seed(L._batch_seed(SEED, 1, epoch, batch))
        for first, k, _ in recipe.decoder.layout.groups():
            group = RECIPE.views()[first:first + k]
            u8 = torch.from_numpy(np.stack([c[first + j] for j in range(k) for c in crops]))
            params = T.draw_params(RECIPE, group, len(indices), gen, "cpu")
            want = ops(u8, group, gen, params=params)
            for j in range(k):
                for b in range(len(indices)):
                    got = to_pixels(views[first + j][b], RECIPE.mean, RECIPE.std)
                    exp = to_pixels(want[j * len(indices) + b], RECIPE.mean, RECIPE.std)
                    assert_images_close(got, exp, 0.02, 1e-3, 3.0, f"view {first + j}")
                    if bool(params.grayscale[j * len(indices) + b]):
                        gray_views += 1
                        assert is_gray(got, atol=1e-3)
                    elif not is_gray(crops[b][first + j], atol=8):
                        assert not is_gray(got, atol=0.5)
    assert gray_views > 0


# ------------------------------------------------------------------------------ errors
def test_clear_errors(tmp_path, jpg):
    with pytest.raises(DatasetError, match="not found"):
        build_loader(tmp_path / "missing", backend="ffcv")
    (tmp_path / "x.beton").write_bytes(b"not a beton")
    with pytest.raises(DatasetError, match="manifest"):
        build_loader(tmp_path / "x.beton", backend="ffcv")
    with pytest.raises(TypeError, match="unknown ffcv backend option"):
        build_loader(jpg, backend="ffcv", colour="blue")
    with pytest.raises(ValueError, match="order"):
        build_loader(jpg, backend="ffcv", order="shuffled")
    with pytest.raises(ValueError, match="photometric"):
        build_loader(jpg, backend="ffcv", photometric="gpu")
