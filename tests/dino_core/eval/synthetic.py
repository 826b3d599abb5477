"""Synthetic mini benchmarks built from the embedded photos (nothing is downloaded).

- ``write_davis``: a DAVIS-layout folder whose sequence shows an object cut out of one photo
  (an ellipse) pasted onto another photo and moved across the frames, with its true masks.
- ``write_revisited``: a revisited-Oxford-layout folder (jpg/ + gnd_<name>.pkl): crops of a
  few photos as queries; flipped / cropped / colour-jittered copies of each as its positives,
  a darker copy as junk, the other photos' copies as negatives.
- ``write_copydays``: the Copydays layout (original/, strong/) with such copies as the
  strong attacks, a distractor folder and a whitening folder.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from dino_core.eval.davis_data import davis_palette
from pipelines.embedded import load_source

OBJECT, BACKGROUND = "chelsea", "grass"


def object_sprite(size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """(RGB sprite, L mask) of the cat's face from 'chelsea', an ellipse of ``size`` (w, h)."""
    photo = load_source(OBJECT)
    face = photo.crop((110, 20, 330, 240)).resize(size, Image.BICUBIC)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, size[0] - 1, size[1] - 1), fill=255)
    return face, mask


def colour_drift(image: Image.Image, t: int) -> Image.Image:
    """Frame t's lighting: 8 % darker and 15 % paler per frame, hue turned by 25/256 of the
    circle per frame (the nuisance DINO's colour-jitter augmentation teaches it to ignore)."""
    image = ImageEnhance.Brightness(image).enhance(1 - 0.08 * t)
    image = ImageEnhance.Color(image).enhance(max(0.0, 1 - 0.15 * t))
    h, s, v = image.convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda x: (x + 25 * t) % 256), s, v)).convert("RGB")


def moving_object_frames(n_frames: int = 6, size: tuple[int, int] = (128, 96),
                         sprite: tuple[int, int] = (44, 40), step: tuple[int, int] = (7, 3),
                         drift: bool = False) -> tuple[list[Image.Image], list[np.ndarray]]:
    """Frames (RGB, ``size``) and true label maps (uint8, 1 on the object) of the sequence;
    with ``drift`` the frames' colours drift (``colour_drift``)."""
    background = load_source(BACKGROUND).resize(size, Image.BICUBIC)
    face, mask = object_sprite(sprite)
    frames, labels = [], []
    for t in range(n_frames):
        x, y = 8 + step[0] * t, 10 + step[1] * t
        frame = background.copy()
        frame.paste(face, (x, y), mask)
        label = Image.new("L", size, 0)
        label.paste(1, (x, y), mask)
        frames.append(colour_drift(frame, t) if drift else frame)
        labels.append(np.array(label, dtype=np.uint8))
    return frames, labels


def write_davis(root: Path, name: str = "cat", annotate_all: bool = True,
                **kw) -> tuple[Path, list[np.ndarray]]:
    """The DAVIS layout of one moving-object sequence under ``root``; (root, true labels)."""
    frames, labels = moving_object_frames(**kw)
    fdir = root / "JPEGImages" / "480p" / name
    adir = root / "Annotations" / "480p" / name
    fdir.mkdir(parents=True)
    adir.mkdir(parents=True)
    palette = davis_palette().ravel().tolist()
    for t, (frame, label) in enumerate(zip(frames, labels)):
        frame.save(fdir / f"{t:05d}.jpg", quality=95)
        if annotate_all or t == 0:
            ann = Image.fromarray(label)
            ann.putpalette(palette)
            ann.save(adir / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    split = root / "ImageSets" / "2017" / "val.txt"
    split.write_text((split.read_text() if split.exists() else "") + name + "\n")
    return root, labels


PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle", "china", "flower")


def base_image(name: str, size: int = 96) -> Image.Image:
    """A centred square of photo ``name`` at ``size`` px."""
    photo = load_source(name)
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    return photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """Edited copies of ``image``: flipped, cropped (80 % centre, resized back), jittered."""
    w, h = image.size
    crop = image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h), Image.BICUBIC)
    jitter = ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.25)).enhance(0.6)
    return {"flip": ImageOps.mirror(image), "crop": crop, "jitter": jitter}


def write_revisited(root: Path, name: str = "synth", photos=PHOTOS[:4],
                    fmt: str = "pkl") -> dict:
    """revisited-Oxford layout under root/name: queries are the photos, the database their
    copies. Per query: easy = flip + crop, hard = jitter, junk = a much darker copy.
    Returns the ground-truth dict written."""
    jpg = root / name / "jpg"
    jpg.mkdir(parents=True)
    imlist, qimlist, gnd = [], [], []
    for p in photos:
        base = base_image(p)
        base.save(jpg / f"{p}_query.jpg", quality=95)
        qimlist.append(f"{p}_query")
        entry = {"easy": [], "hard": [], "junk": [], "bbx": [0.0, 0.0, 96.0, 96.0]}
        edits = dict(copies(base), dark=ImageEnhance.Brightness(base).enhance(0.15))
        for kind, img in edits.items():
            group = {"flip": "easy", "crop": "easy", "jitter": "hard", "dark": "junk"}[kind]
            entry[group].append(len(imlist))
            img.save(jpg / f"{p}_{kind}.jpg", quality=95)
            imlist.append(f"{p}_{kind}")
        gnd.append(entry)
    truth = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    if fmt == "pkl":
        with open(root / name / f"gnd_{name}.pkl", "wb") as f:
            pickle.dump(truth, f)
    else:
        import json
        (root / name / f"gnd_{name}.json").write_text(json.dumps(truth))
    return truth


def write_copydays(root: Path, photos=PHOTOS[:4], n_whitening: int = 12) -> Path:
    """Copydays layout under root/copydays (original/, strong/), root/distractors and
    root/whitening. Original k is '<k+20>0000.jpg'; its strong copies share the 4-digit
    group prefix: '<k+20>0001.jpg' ... ."""
    cd = root / "copydays"
    for sub in ("original", "strong"):
        (cd / sub).mkdir(parents=True)
    for k, p in enumerate(photos):
        base = base_image(p)
        group = f"{k + 20:02d}00"
        base.save(cd / "original" / f"{group}00.jpg", quality=95)
        for v, img in enumerate(copies(base).values(), start=1):
            img.save(cd / "strong" / f"{group}{v:02d}.jpg", quality=95)
    rng = np.random.default_rng(0)
    for folder, n, names in (("distractors", 4, PHOTOS[4:]), ("whitening", n_whitening, PHOTOS)):
        (root / folder).mkdir()
        for i in range(n):
            photo = load_source(names[i % len(names)])
            x, y = (int(v) for v in rng.integers(0, 150, 2))
            photo.crop((x, y, x + 200, y + 200)).resize((96, 96)).save(
                root / folder / f"{i:03d}.jpg", quality=90)
    return cd
