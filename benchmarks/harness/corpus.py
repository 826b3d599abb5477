"""The ImageNet-like benchmark corpus: JPEGs with ImageNet's size statistics, built once.

Pipeline and conversion figures only count on data like ImageNet's (median ~500x375, mean
~110 KB, quality ~90, a few large and small outliers): the embedded photos (~200x170,
~10 KB) decode 4-5x faster and flatter every figure. Nothing can be downloaded, so the
corpus is synthesised from the embedded photos (``corpus_images``: crops, resampling,
flips, mild jitter and realistic fine detail), deterministically from a seed.

Size: 8,192 images by default (~0.9 GB). The benchmarks cycle epochs over it and time by
the clock, so a run lasts as long as asked (e.g. 10 s at the GPU goal of 8,000 images/s is
~10 epochs); a corpus big enough for one 10-s epoch (80,000 images, ~9 GB) would cost
minutes of a lent GPU machine's time to build. Per-epoch costs (reshuffle, loader restart)
are thus paid every ~8k images rather than every 1.28M: they are included in the figures.

Layout (``<cache>`` = ``--corpus-dir``, else ``$DINO_FAST_CACHE``, else ~/.cache/dino-fast)::

    <cache>/<key>/train/<NN_photo>/<index>.jpg   the ImageFolder (classes = photos)
    <cache>/<key>/stats.json                     its statistics: written last, marks it done
    <cache>/<key>/wds/                           dino-convert --format wds of train/
    <cache>/<key>/ffcv/train.beton               dino-convert --format ffcv of train/

``<key>`` names the version, every parameter and a digest of the synthesis constants and
of the source photos' bytes, so any change builds a new corpus. A corpus is written into a
hidden temporary folder and renamed into place complete; an interrupted build is never
reused (its folder is removed by the next build). Conversions are the project's converters,
which write their manifest last and resume. ``python3 -m benchmarks.harness.corpus`` builds it and
prints its statistics.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from . import corpus_images as synth
from .folder_stats import FolderStats, describe_folder

VERSION = 1           # bump when the synthesis changes meaning (constants are hashed anyway)
NAME = "imagenet-like"
PHOTO_DIR_ENV = "DINO_FAST_PHOTOS"  # a folder of the embedded photos, for machines without
                                    # scikit-image / scikit-learn (see --export-photos)


@dataclass(frozen=True)
class CorpusConfig:
    """What corpus to build: ``images`` JPEGs of ``quality`` in ``classes`` folders."""

    images: int = 8192
    classes: int = 16
    seed: int = 0
    quality: int = 90

    def __post_init__(self) -> None:
        if self.images < 1 or self.classes < 1:
            raise ValueError(f"corpus needs images >= 1 and classes >= 1, got "
                             f"images={self.images}, classes={self.classes}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"corpus quality must be in 1..100, got {self.quality}")


@dataclass(frozen=True)
class Corpus:
    """A built corpus: its root, ImageFolder and statistics."""

    root: Path
    config: CorpusConfig
    stats: FolderStats

    @property
    def train(self) -> Path:
        return self.root / "train"

    def label(self) -> str:
        """What it is and where, without statistics."""
        return (f"{NAME} benchmark corpus v{VERSION} (seed {self.config.seed}, "
                f"{self.root.name}) at {self.root}")

    def describe(self) -> str:
        """One line for a results header: what, where, and the statistics of the build."""
        return f"{self.label()}: {self.stats.summary()}"


# ----------------------------------------------------------------------------- photos
def photo_files(photo_dir: str | Path | None = None) -> dict[str, Path]:
    """{name: file} of the embedded photos, in ``pipelines.embedded.SOURCES`` order.

    From ``photo_dir`` (else ``$DINO_FAST_PHOTOS``) when given: files named ``<name>.<ext>``;
    otherwise from the installed scikit-image / scikit-learn packages.
    """
    from pipelines.embedded import SOURCES, source_path

    folder = photo_dir or os.environ.get(PHOTO_DIR_ENV)
    found: dict[str, Path] = {}
    for src in SOURCES:
        if folder:
            hits = sorted(Path(folder).glob(f"{src.name}.*"))
            path = hits[0] if hits else None
        else:
            path = source_path(src)
        if path is not None:
            found[src.name] = path
    if len([n for n in found if n not in synth.TEXTURES]) < 2:
        where = f"in {folder}" if folder else "(install scikit-image and scikit-learn, or " \
                f"set {PHOTO_DIR_ENV} to a folder made by --export-photos)"
        raise FileNotFoundError(f"cannot build the {NAME} corpus: fewer than two source "
                                f"photos found {where}")
    return found


def _digest(files: dict[str, Path]) -> str:
    """Hash of the synthesis constants and of every photo's name and bytes."""
    h = hashlib.sha256()
    consts = {k: v for k, v in vars(synth).items() if k.isupper()}
    h.update(repr(sorted(consts.items())).encode())
    for name, path in files.items():
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def corpus_key(cfg: CorpusConfig, files: dict[str, Path]) -> str:
    return (f"{NAME}-v{VERSION}-n{cfg.images}-c{cfg.classes}-s{cfg.seed}-q{cfg.quality}-"
            f"{_digest(files)}")


# ----------------------------------------------------------------------------- building
_WORKER: dict = {}


def _init_worker(files: dict[str, Path], cfg: CorpusConfig, train: Path) -> None:
    """Load the photos and textures once per worker process."""
    photos = [n for n in files if n not in synth.TEXTURES]
    _WORKER.update(
        cfg=cfg, train=train,
        photos=[_load_rgb(files[n]) for n in photos],
        textures=[synth.high_pass(_load_rgb(files[n])) for n in synth.TEXTURES if n in files],
        class_dirs=[train / class_name(c, photos) for c in range(cfg.classes)])


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def class_name(c: int, photos: list[str]) -> str:
    """Folder of class ``c``: its number and its photo (``03_coffee``)."""
    return f"{c:02d}_{photos[c % len(photos)]}"


def _write_images(indices: list[int]) -> int:
    """Pool task: render and write ``indices``; returns how many were written."""
    w = _WORKER
    sizes = [p.size for p in w["photos"]]
    for i in indices:
        plan = synth.plan_image(w["cfg"].seed, i, sizes, w["cfg"].classes, len(w["textures"]))
        data = synth.encode(synth.render(plan, w["photos"], w["textures"]), w["cfg"].quality)
        (w["class_dirs"][i % w["cfg"].classes] / f"{i:07d}.jpg").write_bytes(data)
    return len(indices)


def _pool(workers: int, initargs: tuple):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers, _init_worker, initargs)


def _build_into(tmp: Path, cfg: CorpusConfig, files: dict[str, Path], workers: int,
                progress: bool) -> FolderStats:
    """Write every image under ``tmp/train``, then ``tmp/stats.json`` (last)."""
    from tqdm import tqdm

    train = tmp / "train"
    photos = [n for n in files if n not in synth.TEXTURES]
    for c in range(cfg.classes):
        (train / class_name(c, photos)).mkdir(parents=True)
    chunks = [list(range(s, min(s + 16, cfg.images))) for s in range(0, cfg.images, 16)]
    initargs = (files, cfg, train)
    with tqdm(total=cfg.images, desc=f"building the {NAME} corpus", unit="img",
              disable=not progress) as bar:
        if workers > 1 and len(chunks) > 1:
            with _pool(workers, initargs) as pool:
                for n in pool.imap_unordered(_write_images, chunks):
                    bar.update(n)
        else:
            _init_worker(*initargs)
            for chunk in chunks:
                bar.update(_write_images(chunk))
    stats = describe_folder(train)
    (tmp / "stats.json").write_text(json.dumps({"config": asdict(cfg), "version": VERSION,
                                                "photos": list(files),
                                                "stats": asdict(stats)}, indent=1))
    return stats


def default_cache_dir() -> Path:
    env = os.environ.get("DINO_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dino-fast"


def _load(root: Path, cfg: CorpusConfig) -> Corpus | None:
    try:
        data = json.loads((root / "stats.json").read_text())
        return Corpus(root, cfg, FolderStats(**data["stats"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_abandoned(parent: Path, key: str) -> None:
    """Temporary folders of builds whose process is gone (interrupted builds)."""
    for tmp in parent.glob(f".{key}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_corpus(cfg: CorpusConfig = CorpusConfig(), cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = True,
                 photo_dir: str | Path | None = None) -> Corpus:
    """The corpus of ``cfg``, built on first use (in parallel over ``workers`` processes,
    default all cores) and reused afterwards. Same config and photos: same bytes."""
    files = photo_files(photo_dir)
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = corpus_key(cfg, files)
    root = parent / key
    done = _load(root, cfg)
    if done is not None:
        return done
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(parent, key)
    if root.exists():  # a folder without stats.json is no finished corpus: rebuild it
        shutil.rmtree(root)
    tmp = parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        stats = _build_into(tmp, cfg, files, workers or os.cpu_count() or 1, progress)
        try:
            os.rename(tmp, root)
        except OSError:
            if _load(root, cfg) is None:  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Corpus(root, cfg, stats)


# ----------------------------------------------------------------------------- converting
def converted(corpus: Corpus, fmt: str, workers: int | None = None,
              progress: bool = False) -> Path:
    """The corpus converted by ``dino-convert --format fmt`` (default options), cached in
    ``<root>/<fmt>``: the shard folder for ``wds``, the ``.beton`` for ``ffcv``."""
    from pipelines.convert.common import ConvertConfig
    from pipelines.formats.manifest import Manifest

    if fmt not in ("wds", "ffcv"):
        raise ValueError(f"unknown format {fmt!r}; choose wds or ffcv")
    dst = corpus.root / fmt
    cfg = ConvertConfig(src=corpus.train, dst=dst, format=fmt, progress=progress,
                        workers=workers or os.cpu_count() or 1)
    manifest_path = dst / "manifest.json"
    if manifest_path.is_file():  # written last by both converters: a finished conversion
        manifest = Manifest.load(manifest_path)
    elif fmt == "wds":
        from pipelines.convert.wds import convert
        manifest = convert(cfg)
    else:
        from pipelines.convert.beton import convert
        manifest = convert(cfg)
    return dst if fmt == "wds" else dst / manifest.shards[0]["name"]


# ----------------------------------------------------------------------------- command
def export_photos(dst: str | Path) -> list[Path]:
    """Copy the embedded photos to ``dst`` (for ``$DINO_FAST_PHOTOS`` on another machine)."""
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, path in photo_files().items():
        target = out / f"{name}{path.suffix}"
        shutil.copyfile(path, target)
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m benchmarks.harness.corpus",
        description=f"Build (once) the {NAME} benchmark corpus and print its statistics.")
    d = CorpusConfig()
    p.add_argument("--images", type=int, default=d.images, help="JPEGs (default %(default)s)")
    p.add_argument("--classes", type=int, default=d.classes, help="class folders")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--corpus-dir", help="cache folder (default $DINO_FAST_CACHE or "
                   "~/.cache/dino-fast)")
    p.add_argument("--workers", type=int, help="build processes (default: all cores)")
    p.add_argument("--convert", nargs="*", choices=("wds", "ffcv"), default=[],
                   help="also convert it (cached) to these formats")
    p.add_argument("--export-photos", metavar="DIR", help="only copy the source photos to DIR "
                   f"(then set {PHOTO_DIR_ENV}=DIR where scikit-image is missing)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.export_photos:
        for path in export_photos(a.export_photos):
            print(path)
        return 0
    corpus = build_corpus(CorpusConfig(images=a.images, classes=a.classes, seed=a.seed),
                          a.corpus_dir, a.workers)
    print(corpus.describe())
    for fmt in a.convert:
        print(f"{fmt}: {converted(corpus, fmt, a.workers, progress=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
