"""The ImageNet-like benchmark corpus: its statistics, determinism, cache and atomic build."""
import hashlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import corpus as C
from benchmarks.harness import corpus_images as synth
from benchmarks.harness.folder_stats import describe_folder, estimate_quality

pytest.importorskip("skimage", reason="the corpus is made from the embedded photos")

SMALL = C.CorpusConfig(images=64, classes=4, seed=3)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "train").rglob("*.jpg"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    parent = tmp_path_factory.mktemp("cache")
    return parent, C.build_corpus(SMALL, parent, workers=2, progress=False)


def test_size_distribution_is_imagenet_like():
    """Drawn sizes alone (no rendering): median 500x375, landscape/portrait/square mix, a
    few small and large outliers."""
    rng = np.random.default_rng(0)
    sizes = [synth.draw_size(rng) for _ in range(20000)]
    w, h = [s[0] for s in sizes], [s[1] for s in sizes]
    assert (statistics.median(w), statistics.median(h)) == (500, 375)
    longest = [max(s) for s in sizes]
    assert abs(np.mean([x >= synth.LARGE[1] for x in longest]) - synth.LARGE[0]) < 0.005
    assert abs(np.mean([x <= synth.SMALL[2] for x in longest]) - synth.SMALL[0]) < 0.007
    assert 0.6 < np.mean([a > b for a, b in sizes]) < 0.8       # landscape
    assert 0.15 < np.mean([a < b for a, b in sizes]) < 0.3      # portrait
    assert 0.05 < np.mean([a == b for a, b in sizes]) < 0.12    # square
    assert max(longest) <= synth.LARGE[2] and min(longest) >= synth.SMALL[1]


def test_small_corpus_statistics(small):
    _, corpus = small
    s = corpus.stats
    assert s.images == SMALL.images and s.classes == SMALL.classes
    assert 400 <= s.median_width <= 520 and 300 <= s.median_height <= 420
    assert 50e3 < s.mean_bytes < 250e3 and 40e3 < s.median_bytes < 150e3
    assert s.quality == 90
    assert s.decode_ms_mean > 0 and s.decode_sample == SMALL.images
    classes = sorted(p.name for p in corpus.train.iterdir())
    assert len(classes) == 4 and all(name[:2].isdigit() for name in classes)
    with Image.open(next(corpus.train.rglob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    saved = json.loads((corpus.root / "stats.json").read_text())
    assert saved["stats"]["images"] == SMALL.images and saved["config"]["seed"] == SMALL.seed


def test_mean_bytes_of_typical_images_are_near_imagenet():
    """Files at ImageNet's typical 500-px size carry ImageNet-like bytes (~100 KB at q90):
    the detail that makes resampled photos compress like real ones."""
    photos = [C._load_rgb(p) for n, p in C.photo_files().items() if n not in synth.TEXTURES]
    textures = [synth.high_pass(C._load_rgb(p)) for n, p in C.photo_files().items()
                if n in synth.TEXTURES]
    sizes, found = [p.size for p in photos], []
    for i in range(400):
        plan = synth.plan_image(0, i, sizes, 16, len(textures))
        if max(plan.width, plan.height) == 500 and len(found) < 24:
            found.append(len(synth.encode(synth.render(plan, photos, textures), 90)))
    assert 70e3 < np.mean(found) < 130e3


def test_deterministic_whatever_the_workers(small, tmp_path):
    _, corpus = small
    again = C.build_corpus(SMALL, tmp_path, workers=1, progress=False)
    assert again.root.name == corpus.root.name
    assert _digests(again.root) == _digests(corpus.root)
    other = C.build_corpus(C.CorpusConfig(images=8, classes=4, seed=4), tmp_path, workers=1,
                           progress=False)
    assert other.root != again.root
    assert set(_digests(other.root).values()).isdisjoint(_digests(again.root).values())


def test_cache_is_reused(small, monkeypatch):
    parent, corpus = small
    stamp = (corpus.root / "stats.json").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached corpus")
    monkeypatch.setattr(C, "_build_into", no_rebuild)
    assert C.build_corpus(SMALL, parent).root == corpus.root
    monkeypatch.setenv("DINO_FAST_CACHE", str(parent))
    assert C.build_corpus(SMALL).root == corpus.root
    assert (corpus.root / "stats.json").stat().st_mtime_ns == stamp


def test_any_parameter_or_synthesis_change_is_a_new_corpus(monkeypatch):
    files = C.photo_files()
    base = C.corpus_key(SMALL, files)
    for changed in (C.CorpusConfig(images=65, classes=4, seed=3),
                    C.CorpusConfig(images=64, classes=5, seed=3),
                    C.CorpusConfig(images=64, classes=4, seed=4),
                    C.CorpusConfig(images=64, classes=4, seed=3, quality=85)):
        assert C.corpus_key(changed, files) != base
    monkeypatch.setattr(synth, "DETAIL", synth.DETAIL + 0.1)
    assert C.corpus_key(SMALL, files) != base
    monkeypatch.undo()
    monkeypatch.setattr(C, "VERSION", C.VERSION + 1)
    assert C.corpus_key(SMALL, files) != base


def test_photos_from_a_folder_make_the_same_corpus(tmp_path, monkeypatch):
    C.export_photos(tmp_path / "photos")
    key = C.corpus_key(SMALL, C.photo_files())
    monkeypatch.setenv(C.PHOTO_DIR_ENV, str(tmp_path / "photos"))
    assert C.corpus_key(SMALL, C.photo_files()) == key
    with pytest.raises(FileNotFoundError, match="fewer than two source photos"):
        C.photo_files(tmp_path / "empty")


def test_interrupted_build_leaves_nothing_that_is_reused(tmp_path, monkeypatch):
    cfg = C.CorpusConfig(images=40, classes=2, seed=9)
    real = C._write_images
    calls = []

    def interrupted(indices):
        calls.append(indices)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C half-way
        return real(indices)
    monkeypatch.setattr(C, "_write_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.build_corpus(cfg, tmp_path, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # no corpus, no temporary folder
    monkeypatch.undo()

    # a build killed outright (SIGKILL) leaves its temporary folder and maybe a bare root
    key = C.corpus_key(cfg, C.photo_files())
    stale = tmp_path / f".{key}.tmp-999999999"
    (stale / "train" / "x").mkdir(parents=True)
    (stale / "train" / "x" / "half.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / key / "train").mkdir(parents=True)  # no stats.json: not a finished corpus
    corpus = C.build_corpus(cfg, tmp_path, workers=1, progress=False)
    assert not stale.exists()
    assert corpus.root == tmp_path / key and corpus.stats.images == 40
    assert len(list(corpus.train.rglob("*.jpg"))) == 40


def test_converted_wds_is_cached(small, monkeypatch):
    _, corpus = small
    shards = C.converted(corpus, "wds", workers=1)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["format"] == "wds" and manifest["num_samples"] == SMALL.images
    assert manifest["skipped"] == []

    def no_convert(cfg):
        raise AssertionError("converted again")
    import pipelines.convert.wds as wds
    monkeypatch.setattr(wds, "convert", no_convert)
    assert C.converted(corpus, "wds") == shards
    with pytest.raises(ValueError, match="unknown format"):
        C.converted(corpus, "tfrecord")


@pytest.mark.ffcv
def test_converted_beton_is_cached(small):
    _, corpus = small
    beton = C.converted(corpus, "ffcv", workers=1)
    assert beton.suffix == ".beton" and beton.stat().st_size > 0
    assert C.converted(corpus, "ffcv") == beton


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_estimate_quality(quality):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 120, 30)).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as im:
        assert estimate_quality(im) == quality
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with Image.open(png) as im:
        assert estimate_quality(im) == 0


def test_describe_folder_counts_and_errors(tmp_path):
    for c, sizes in (("a", [(500, 375), (100, 80)]), ("b", [(1200, 900)])):
        (tmp_path / c).mkdir()
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (10 * i, 50, 90)).save(tmp_path / c / f"{i}.jpg", quality=90)
    s = describe_folder(tmp_path)
    assert (s.images, s.classes, s.small, s.large, s.max_side) == (3, 2, 1, 1, 1200)
    assert s.median_width == 500 and s.quality == 90 and s.decode_sample == 3
    assert "3 images in 2 classes" in s.summary()
    with pytest.raises(FileNotFoundError, match="no image files"):
        describe_folder(tmp_path / "a")
