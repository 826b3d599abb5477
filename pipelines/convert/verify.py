"""``dino-convert --verify DST``: read a converted dataset back with its format's own reader.

Checks, against ``DST/manifest.json``:

- checksums: every shard (.tar) hashes to the manifest's sha256, the .beton to its
  ``sha256_blocks`` (``beton_layout.block_digest``);
- count: the reader yields exactly ``num_samples`` samples;
- labels: every label is a class index (or -1 for an unlabeled dataset) and the count per
  label equals the manifest's ``label_counts``;
- decodability: every stored image is decoded by the reader's own decoder: FFCV's
  ``Loader`` with its stock ``CenterCropRGBImageDecoder`` and ``IntDecoder``, or DALI's
  ``fn.readers.webdataset`` over the shards and their index files with
  ``fn.decoders.image`` on the CPU. A file the decoder rejects raises inside the reader
  and fails the check with its message.

FFCV runs in a child process (``python -m pipelines.convert.verify``): its loader keeps
threads and compiled state that a second loader in the same process can trip over.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..formats.manifest import Manifest
from .common import sha256_file

BATCH = 64


@dataclass
class VerifyReport:
    dst: Path
    format: str
    expected: int
    read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"dino-convert --verify {self.dst}: {self.format}, {self.read}/{self.expected} "
                "images read back")
        if self.ok:
            return f"{head}, labels, decoding and checksums OK"
        return f"{head}: FAILED: " + "; ".join(self.problems[:5])


def _read_ffcv(beton: Path, workers: int) -> tuple[int, Counter]:
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(beton), batch_size=BATCH, num_workers=workers,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [CenterCropRGBImageDecoder((16, 16), 1.0)],
                               "label": [IntDecoder()]})
    n, labels = 0, Counter()
    for images, y in loader:
        n += len(images)
        labels.update(int(v) for v in y.reshape(-1))
    return n, labels


def _read_wds(dst: Path, manifest: Manifest, workers: int) -> tuple[int, Counter]:
    from nvidia.dali import fn, pipeline_def

    tars = [str(dst / s["name"]) for s in manifest.shards]
    idxs = [str(dst / s["index"]) for s in manifest.shards]

    @pipeline_def(batch_size=BATCH, num_threads=max(1, workers), device_id=None)
    def read():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"],
                                         missing_component_behavior="error",
                                         pad_last_batch=True, name="reader")
        return fn.decoders.image(jpg, device="cpu"), cls

    pipe = read()
    pipe.build()
    total = manifest.num_samples
    n, labels = 0, Counter()
    while n < total:
        _images, cls = pipe.run()
        for i in range(min(len(cls), total - n)):
            labels[int(bytes(cls.at(i)).decode())] += 1
        n += min(len(cls), total - n)
    return n, labels


def _ffcv_in_child(beton: Path, workers: int) -> tuple[int, Counter]:
    proc = subprocess.run([sys.executable, "-m", "pipelines.convert.verify", str(beton),
                           str(workers)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve()
                                                               .parents[2])})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"FFCV's loader failed on {beton}: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["count"], Counter({int(k): v for k, v in out["labels"].items()})


def _checksum(path: Path, entry: dict) -> str:
    if "sha256_blocks" in entry:  # .beton: digest of page-sized block digests
        from .beton_layout import block_digest
        return block_digest(str(path), int(entry["block_size"]))
    return sha256_file(path)


def verify_output(dst: str | Path, workers: int | None = None) -> VerifyReport:
    """Check ``dst`` (a converted dataset folder) with its format's reader; never raises for
    a mismatch (the report lists it), only for a folder that is not a dataset at all."""
    dst = Path(dst)
    manifest = Manifest.load(dst / "manifest.json")
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    report = VerifyReport(dst, manifest.format, manifest.num_samples)
    for s in manifest.shards:
        path = dst / s["name"]
        if not path.is_file():
            report.problems.append(f"{path.name} is missing")
        elif _checksum(path, s) != s.get("sha256", s.get("sha256_blocks")):
            report.problems.append(f"{path.name}: checksum differs from the manifest")
    if report.problems:
        return report
    try:
        if manifest.format == "ffcv":
            n, labels = _ffcv_in_child(dst / manifest.shards[0]["name"], workers)
        else:
            n, labels = _read_wds(dst, manifest, workers)
    except Exception as e:  # the reader's own error is the finding
        report.problems.append(f"the {manifest.format} reader failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return report
    report.read = n
    if n != manifest.num_samples:
        report.problems.append(f"read {n} samples, the manifest says {manifest.num_samples}")
    valid = set(range(len(manifest.classes))) if manifest.labelled else {-1}
    bad = sorted(set(labels) - valid)
    if bad:
        report.problems.append(f"labels outside the class list: {bad[:10]}")
    want = Counter({int(k): v for k, v in manifest.label_counts.items()})
    if manifest.label_counts and labels != want:
        diff = sorted(k for k in set(labels) | set(want) if labels[k] != want[k])
        report.problems.append(f"count per label differs from the manifest for labels "
                               f"{diff[:10]}")
    return report


if __name__ == "__main__":  # the FFCV child: python -m pipelines.convert.verify BETON WORKERS
    count, seen = _read_ffcv(Path(sys.argv[1]), int(sys.argv[2]))
    print(json.dumps({"count": count, "labels": {str(k): v for k, v in seen.items()}}))
