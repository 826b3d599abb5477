"""The evaluation transform (resize shorter side + centre crop + normalise) and its dataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.eval_transform import EvalImageFolder, EvalTransform, center_crop, resize_shorter
from pipelines.spec import AugmentationSpec, SpecError
from tests.pipelines.images import photo_crop, write_bad_files, write_image_folder


@pytest.mark.parametrize("size, expected", [((300, 200), (384, 256)), ((200, 300), (256, 384)),
                                            ((257, 256), (257, 256)), ((100, 333), (256, 852))])
def test_resize_shorter_side(size, expected):
    assert resize_shorter(Image.new("RGB", size), 256).size == expected


def test_center_crop_is_the_middle():
    arr = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    got = np.asarray(center_crop(Image.fromarray(arr), 4))
    np.testing.assert_array_equal(got, arr[3:7, 4:8])
    with pytest.raises(ValueError, match="4x4"):
        center_crop(Image.fromarray(arr[:3, :3]), 4)


def test_transform_equals_its_composition_and_uses_spec_normalisation():
    spec = AugmentationSpec().with_overrides(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    tf = EvalTransform.from_spec(spec, resize=40, crop=32)
    img = photo_crop((60, 45))
    out = tf(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    pix = np.asarray(center_crop(img.resize((53, 40), Image.BICUBIC), 32), np.float64)
    want = (pix / 255 - 0.5) / np.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), want, atol=1e-5)


def test_defaults_are_256_224_with_the_spec_mean_std():
    tf, spec = EvalTransform(), AugmentationSpec()
    assert (tf.resize, tf.crop, tf.mean, tf.std, tf.interpolation) == (
        256, 224, spec.mean, spec.std, spec.interpolation)
    assert tf(photo_crop((80, 60))).shape == (3, 224, 224)


@pytest.mark.parametrize("kw, field", [({"resize": 100, "crop": 224}, "resize"),
                                       ({"crop": 0}, "crop"), ({"interpolation": "box"}, "interpolation")])
def test_bad_sizes_name_the_field(kw, field):
    with pytest.raises(SpecError, match=field):
        EvalTransform(**kw)


def test_eval_image_folder_labels_and_bad_files(tmp_path):
    root = write_image_folder(tmp_path / "data", num_classes=2, per_class=3)
    write_bad_files(root / sorted(p.name for p in root.iterdir())[1])
    ds = EvalImageFolder(root, resize=36, crop=32)
    assert ds.classes == sorted(p.name for p in root.iterdir())
    assert len(ds) == 8 and len(ds.skipped) == 3  # .txt, .DS_Store and the zero-byte file
    items = [ds[i] for i in range(len(ds))]  # truncated / random bytes decode as replacements
    assert all(x.shape == (3, 32, 32) for x, _ in items)
    assert [y for _, y in items][:3] == [0, 0, 0] and ds.targets[:3] == [0, 0, 0]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert sum(len(y) for _, y in loader) == len(ds)


def test_iteration_ends_at_the_last_image(tmp_path):
    from pipelines.eval_transform import EvalImageFolder
    from tests.pipelines.images import write_image_folder
    root = write_image_folder(tmp_path / "d", num_classes=2, per_class=2)
    ds = EvalImageFolder(root, resize=32, crop=32)
    assert len(list(iter(ds))) == 4
