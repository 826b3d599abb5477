"""--verify: the formats' own readers read the output back; any mismatch exits non-zero."""
import json

import pytest

from pipelines.convert.cli import main as convert_main
from pipelines.convert.verify import verify_output
from tests.pipelines.images import write_bad_files, write_image_folder


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", 3, 3, (24, 40))
    write_bad_files(sorted(root.iterdir())[0])
    return root


@pytest.mark.parametrize("fmt", [pytest.param("wds", marks=pytest.mark.dali),
                                 pytest.param("ffcv", marks=pytest.mark.ffcv)])
def test_conversion_ends_with_a_verify_line_and_tampering_is_caught(src, tmp_path, capsys, fmt):
    pytest.importorskip("nvidia.dali" if fmt == "wds" else "ffcv")
    dst = tmp_path / "out"
    assert convert_main(["--format", fmt, "--workers", "2", "--no-progress", "--shard-size",
                         "4", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"--verify {dst}: {fmt}, 9/9 images read back, labels, decoding and checksums OK" in out

    manifest = json.loads((dst / "manifest.json").read_text())
    if fmt == "wds":  # the comparison after the read is the same code for both formats, and
        # each FFCV read is a child process compiling FFCV's pipeline (~5 s): once is enough
        manifest["label_counts"]["0"] += 1  # the manifest now promises another label-0 image
        (dst / "manifest.json").write_text(json.dumps(manifest))
        assert convert_main(["--verify", str(dst)]) == 3
        assert "count per label differs" in capsys.readouterr().out

        manifest["label_counts"]["0"] -= 1
        (dst / "manifest.json").write_text(json.dumps(manifest))
        assert convert_main(["--verify", str(dst)]) == 0
    shard = dst / manifest["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify_output(dst)
    assert not report.ok and "checksum" in report.summary()
    assert convert_main(["--verify", str(dst)]) == 3


def test_verify_of_a_folder_without_manifest_is_a_clear_error(tmp_path, capsys):
    assert convert_main(["--verify", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.dali
def test_verify_reports_an_image_the_reader_cannot_decode(src, tmp_path):
    """A stored JPEG whose Huffman table reference is broken passes the header check; the
    reader's decoder refuses it, and verify says so."""
    pytest.importorskip("nvidia.dali")
    import io

    from PIL import Image
    root = tmp_path / "src" / "a"
    root.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="JPEG")
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    (root / "broken.jpg").write_bytes(data[:sos + 6] + b"\x33" + data[sos + 7:])
    Image.new("RGB", (16, 16), (10, 200, 10)).save(root / "good.jpg")
    assert convert_main(["--workers", "1", "--no-progress", str(tmp_path / "src"),
                         str(tmp_path / "out")]) == 3
