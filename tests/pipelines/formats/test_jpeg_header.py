"""jpeg_header.parse_jpeg against what PIL reports for the same files."""
import io

import pytest
from PIL import Image

from pipelines.formats.jpeg_header import parse_jpeg
from tests.pipelines.images import photo_crop


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(photo_crop((40, 30)), exif=exif.tobytes())


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"quality": 100},
                                {"subsampling": 0}, {"optimize": True}])
def test_plain_colour_jpegs_are_storable_with_their_size(kw):
    data = _jpeg(photo_crop((57, 33)), **kw)
    info = parse_jpeg(data)
    assert (info.width, info.height, info.components) == Image.open(io.BytesIO(data)).size + (3,)
    assert info.storable_as_is and info.orientation == 1 and info.complete


@pytest.mark.parametrize("mode,components", [("L", 1), ("CMYK", 4)])
def test_gray_and_cmyk_are_not_storable(mode, components):
    info = parse_jpeg(_jpeg(Image.new(mode, (20, 10))))
    assert info.components == components and not info.storable_as_is


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_read(orientation):
    info = parse_jpeg(_rotated(orientation))
    assert info.orientation == orientation
    assert info.storable_as_is == (orientation == 1)


def test_truncated_file_is_incomplete_and_garbage_is_not_a_jpeg():
    data = _jpeg(photo_crop((64, 48)))
    assert not parse_jpeg(data[:len(data) // 2]).complete
    assert not parse_jpeg(data[:len(data) // 2]).storable_as_is
    assert parse_jpeg(b"\xff\xd8" + bytes(100)) is None
    assert parse_jpeg(b"not a jpeg at all") is None
    assert parse_jpeg(data[:20]) is None  # cut inside the header
    png = io.BytesIO()
    photo_crop((8, 8)).save(png, format="PNG")
    assert parse_jpeg(png.getvalue()) is None
