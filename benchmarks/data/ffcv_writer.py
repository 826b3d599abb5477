"""FFCV's own ``DatasetWriter``, fed the way FFCV's ImageNet example feeds it: the baseline of
``dino-bench convert``, in-process (``run_ffcv_writer``) or as a process of its own
(``python -m benchmarks.data.ffcv_writer SRC OUT WORKERS MAX_SIDE QUALITY``: what a user of
FFCV starts and waits for, its imports included).

Kept apart from the benchmark so the whole-process baseline imports only what a user's
script would: FFCV (and with it numba and torch), PIL and the folder scan.
"""
from __future__ import annotations

import sys
from pathlib import Path


class FolderImages:
    """What FFCV's ImageNet example hands its writer: item i -> (PIL RGB image, label)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            return im.convert("RGB"), label


def run_ffcv_writer(src: Path, out: Path, workers: int, max_side: int, quality: int) -> int:
    """FFCV's own DatasetWriter over the ImageFolder ``src`` into ``out/ffcv-writer.beton``;
    returns the images written."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from tqdm import tqdm

    from pipelines.folder import scan_image_folder

    samples = scan_image_folder(src).samples
    writer = ffcv.writer.DatasetWriter(
        str(out / "ffcv-writer.beton"),
        {"image": RGBImageField(write_mode="jpg", max_resolution=max_side,
                                jpeg_quality=quality), "label": IntField()},
        num_workers=workers)
    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = lambda *a, **k: tqdm(*a, **k, disable=True)
    try:
        writer.from_indexed_dataset(FolderImages(samples), chunksize=100)
    finally:
        ffcv.writer.tqdm = original
    return len(samples)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5:
        print("usage: python -m benchmarks.data.ffcv_writer SRC OUT WORKERS MAX_SIDE QUALITY",
              file=sys.stderr)
        return 2
    src, out, workers, max_side, quality = args
    n = run_ffcv_writer(Path(src), Path(out), int(workers), int(max_side), int(quality))
    print(f"ffcv-writer: wrote {n} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
