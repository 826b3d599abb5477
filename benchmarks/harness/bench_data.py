"""Which data the ``pipeline`` and ``e2e`` benchmarks read, in which form per backend, and
what it looks like (its statistics go into every results header).

- default: the ImageNet-like benchmark corpus (``benchmarks.harness.corpus``), built once and cached,
  with its cached conversions: the reference reads the ImageFolder, ``dali`` the
  ``dino-convert --format wds`` shards, ``ffcv`` the ``.beton``;
- ``--corpus embedded``: the embedded photos (~200x170 px, ~10 KB). They decode 4-5x faster
  than ImageNet and flatter every figure: results say so, and are not to be quoted;
- ``--data PATH``: your own ImageFolder (e.g. ImageNet's train folder); ``ffcv`` reads a
  ``.beton`` converted into a temporary folder, ``dali`` reads the folder.
- ``--backend-data BACKEND=PATH`` overrides the path of one backend in every case.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .corpus import Corpus, CorpusConfig, build_corpus, converted
from .folder_stats import FolderStats, describe_folder

CORPORA = ("imagenet-like", "embedded")
USER_SAMPLE = 2048  # files whose headers describe a user folder (it may hold millions)
COUNTS = ("Figures only count on ImageNet-like data (median ~500x375 px, mean ~110 KB, "
          "quality ~90, a few large and small outliers): the default corpus or ImageNet itself.")


@dataclass(frozen=True)
class DataChoice:
    """What the user asked to read (command-line options)."""

    data: str | None = None              # an ImageFolder of the user's
    corpus: str = "imagenet-like"        # when ``data`` is None: imagenet-like | embedded
    corpus_dir: str | None = None        # cache folder of the corpus
    corpus_images: int = 8192
    backend_data: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {CORPORA}, got {self.corpus!r}")


@dataclass(frozen=True)
class BenchData:
    """The data of a run: the ImageFolder, where each backend reads it, its statistics."""

    root: Path                 # the ImageFolder
    kind: str                  # imagenet-like | embedded | user
    stats: FolderStats
    label: str                 # what it is, for the header
    own_copies: dict[str, Path]  # backend -> its own copy given by --backend-data
    scratch: Path              # temporary folder of the run (conversions of user data)
    corpus: Corpus | None = None

    def describe(self) -> str:
        warn = {"embedded": " -- NOT ImageNet-like: every figure is flattered, do not quote",
                "user": ""}.get(self.kind, "")
        return f"{self.label}: {self.stats.summary()}{warn}"

    def notes(self) -> list[str]:
        if self.kind == "embedded":
            return [f"Data: the embedded photos, asked for with --corpus embedded. {COUNTS} "
                    "These figures do not count."]
        if self.kind == "user":
            return [f"Data: the user's folder {self.root}. {COUNTS} Compare its statistics in "
                    "the header with these."]
        return [f"Data: the ImageNet-like benchmark corpus (benchmarks/harness/corpus.py), the default. "
                f"{COUNTS} The corpus is small, so the benchmark cycles epochs over it: every "
                "epoch start (reshuffle, loader restart) is paid every few thousand images "
                "instead of every 1.28M, and is included."]

    def path_for(self, backend: str) -> Path:
        """What ``backend`` reads: its own copy when there is one (converted on first use,
        cached for the corpus), else the ImageFolder."""
        if backend in self.own_copies:
            return self.own_copies[backend]
        if self.corpus is not None and backend in ("dali", "ffcv"):
            return converted(self.corpus, "wds" if backend == "dali" else "ffcv")
        if backend == "ffcv":
            from pipelines.convert.beton import convert
            from pipelines.convert.common import ConvertConfig
            dst = self.scratch / "ffcv"
            manifest = convert(ConvertConfig(src=self.root, dst=dst, format="ffcv",
                                             progress=False))
            return dst / manifest.shards[0]["name"]
        return self.root

    def resolve(self, backends: list[str]):
        """Prepare every backend's path now (conversions fork worker pools: better before
        this process starts CUDA); returns ``path_for`` over the prepared paths, which
        raises a backend's preparation error when asked for its path."""
        prepared: dict[str, Path | Exception] = {}
        for backend in backends:
            try:
                prepared[backend] = self.path_for(backend)
            except Exception as err:  # reported as that backend's row
                prepared[backend] = err

        def path_for(backend: str) -> Path:
            found = prepared[backend]
            if isinstance(found, Exception):
                raise found
            return found
        return path_for

    def result_fields(self) -> dict:
        """``BenchmarkResult`` keywords: the header line and the statistics."""
        return {"data": self.describe(), "data_stats": {"kind": self.kind, **asdict(self.stats)}}


def prepare_data(choice: DataChoice, scratch: Path, progress: bool = True) -> BenchData:
    """Build (or find cached) the data ``choice`` names and measure its statistics here
    (decode time is this machine's)."""
    backend_data = {k: Path(v) for k, v in choice.backend_data.items()}
    if choice.data:
        root = Path(choice.data)
        if not root.is_dir():
            raise FileNotFoundError(f"--data {root}: not a folder")
        stats = describe_folder(root, max_files=USER_SAMPLE)
        return BenchData(root, "user", stats, f"user folder {root}", backend_data, scratch)
    if choice.corpus == "embedded":
        from pipelines.embedded import default_dataset
        root = Path(default_dataset()) / "train"
        return BenchData(root, "embedded", describe_folder(root),
                         f"embedded photos ({root})", backend_data, scratch)
    corpus = build_corpus(CorpusConfig(images=choice.corpus_images), choice.corpus_dir,
                          progress=progress)
    return BenchData(corpus.train, "imagenet-like", describe_folder(corpus.train),
                     corpus.label(), backend_data, scratch, corpus)


def measure_on_data(source: DataChoice, measure) -> tuple[BenchData, list[dict], str]:
    """Prepare ``source`` in a temporary folder, run ``measure(ImageFolder root)`` -> rows,
    and return (data, rows, a note with the machine's load average before and after)."""
    import os
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="dino-bench-data-"))
    try:
        data = prepare_data(source, scratch, progress=True)
        before = os.getloadavg()
        rows = measure(Path(data.root))
        after = os.getloadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    note = (f"machine load average (1/5/15 min) before: {' '.join(f'{v:.2f}' for v in before)}"
            f", after: {' '.join(f'{v:.2f}' for v in after)} (other processes' load competes "
            "for the same cores).")
    return data, rows, note
