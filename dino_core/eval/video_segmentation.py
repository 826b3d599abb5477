"""Semi-supervised video object segmentation by label propagation (DINO paper, Sec. 5.2).

Given the first frame's mask, each later frame's patches take the labels of their most
similar patches in a few context frames. Facts of the protocol (defaults of ``PropagationConfig``):

- Frames are resized so the shorter side is 480 px and the longer side is floored to a
  multiple of 64 (bilinear), normalised with the training mean/std.
- Features: the last block's patch tokens (after the final norm, CLS dropped),
  L2-normalised: [h*w, D] with h, w the frame size over the patch size.
- Context: the first frame (its given mask, one-hot at patch resolution, nearest
  downsampling) and the n = 7 frames before the target (their propagated soft labels).
- Each target patch looks only at source patches within 12 patches in both directions
  (a square window), keeps its k = 5 most similar sources over all context frames, and
  weights them by softmax(similarity / T), T = 0.1 (the upstream script's fixed value).
- The soft labels [C, h, w] are upsampled bilinearly by the patch size, each channel is
  min-max normalised, the argmax is taken and resized (nearest) to the frame's own size.

``propagate_labels`` streams one context frame at a time (memory O(h*w * (h*w + k*M)));
``propagate_labels_dense`` is its obviously-correct twin (one dense affinity matrix).
Sequences are split over the ranks of a process group; the scores are gathered on rank 0.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from pipelines.reference import to_normalized_tensor
from pipelines.spec import AugmentationSpec

from .davis_data import (VideoSequence, davis_palette, read_annotation, read_frame,
                         write_indexed_png)
from .davis_metrics import VOID_LABEL, SequenceScores, score_sequence
from .features import rank_and_world


@dataclass(frozen=True)
class PropagationConfig:
    """The protocol's knobs; defaults are the paper's DAVIS settings."""

    n_last_frames: int = 7
    neighbourhood: int = 12   # patches in each direction; 0 = the whole frame
    topk: int = 5
    temperature: float = 0.1
    short_side: int = 480
    size_multiple: int = 64   # the longer side is floored to a multiple of this

    def __post_init__(self) -> None:
        checks = {"n_last_frames": self.n_last_frames >= 0,
                  "neighbourhood": self.neighbourhood >= 0, "topk": self.topk >= 1,
                  "temperature": self.temperature > 0, "short_side": self.short_side >= 1,
                  "size_multiple": self.size_multiple >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"propagation option {name} (--{name.replace('_', '-')}) = "
                                 f"{getattr(self, name)!r} is out of range (see --help)")


def frame_size(width: int, height: int, cfg: PropagationConfig, patch: int) -> tuple[int, int]:
    """(W, H) a frame is resized to: shorter side ``short_side``, longer side floored to a
    multiple of ``size_multiple``; both must then be multiples of the patch size."""
    short, long = min(width, height), max(width, height)
    new_long = int(long * cfg.short_side / short) // cfg.size_multiple * cfg.size_multiple
    w, h = (new_long, cfg.short_side) if width >= height else (cfg.short_side, new_long)
    if w < patch or h < patch or w % patch or h % patch:
        raise ValueError(f"a {width}x{height} frame resizes to {w}x{h}, which is not a "
                         f"non-empty multiple of the {patch}px patch; choose --short-side and "
                         "--size-multiple as multiples of the patch size")
    return w, h


@torch.no_grad()
def patch_features(backbone: torch.nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """L2-normalised last-block patch tokens [h*w, D] of one frame [3, H, W]."""
    device = next(backbone.parameters()).device
    tokens = backbone.get_intermediate_layers(frame[None].to(device), n=1)[0]   # (1, 1+N, D)
    return F.normalize(tokens[0, 1:].float(), dim=1)


def one_hot_patches(labels: np.ndarray, grid: tuple[int, int], n_labels: int) -> torch.Tensor:
    """[C, h*w] one-hot of a label map [H, W] downsampled (nearest) to the patch grid (h, w);
    labels >= C (void, 255) count as background."""
    small = np.array(Image.fromarray(labels).resize((grid[1], grid[0]), Image.NEAREST))
    small = torch.from_numpy(small.astype(np.int64)).flatten()
    small[small >= n_labels] = 0
    return F.one_hot(small, n_labels).T.float()


def neighbourhood_mask(h: int, w: int, radius: int, device: torch.device) -> torch.Tensor | None:
    """[N, N] bool, entry (source, target) true when both lie within ``radius`` patches in
    rows and columns; None when radius is 0 (no restriction)."""
    if radius == 0:
        return None
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return (((rows[:, None] - rows[None, :]).abs() <= radius)
            & ((cols[:, None] - cols[None, :]).abs() <= radius))


def propagate_labels(target: torch.Tensor, sources: list[torch.Tensor],
                     source_labels: list[torch.Tensor], mask: torch.Tensor | None,
                     topk: int, temperature: float) -> torch.Tensor:
    """Soft labels [C, N] of the target's patches.

    target [N, D] and sources[m] [N, D]: normalised features; source_labels[m] [C, N];
    mask [N, N] bool (source, target) or None. Each context frame contributes its own top-k
    candidates per target patch; the best k of all candidates are softmax-weighted.
    """
    cand_sim, cand_idx = [], []
    for m, src in enumerate(sources):
        sim = src @ target.T                                                  # (N, N)
        if mask is not None:
            sim = sim.masked_fill(~mask, float("-inf"))
        val, idx = sim.topk(min(topk, sim.shape[0]), dim=0)                   # (k, N)
        cand_sim.append(val)
        cand_idx.append(idx + m * src.shape[0])
    val, pick = torch.cat(cand_sim).topk(topk, dim=0)                         # (k, N)
    idx = torch.cat(cand_idx).gather(0, pick)                                 # (k, N)
    weights = torch.softmax(val / temperature, dim=0)                         # (k, N)
    labels = torch.cat(source_labels, dim=1)                                  # (C, M*N)
    return (labels[:, idx] * weights).sum(dim=1)                              # (C, N)


def propagate_labels_dense(target: torch.Tensor, sources: list[torch.Tensor],
                           source_labels: list[torch.Tensor], mask: torch.Tensor | None,
                           topk: int, temperature: float) -> torch.Tensor:
    """The twin of ``propagate_labels``: one [M*N, N] affinity, top-k per column, softmax."""
    sim = torch.cat([src @ target.T for src in sources])                      # (M*N, N)
    if mask is not None:
        sim = sim.masked_fill(~mask.repeat(len(sources), 1), float("-inf"))
    val, idx = sim.topk(topk, dim=0)
    affinity = torch.zeros_like(sim).scatter_(0, idx, torch.softmax(val / temperature, 0))
    return torch.cat(source_labels, dim=1) @ affinity                         # (C, N)


def soft_labels_to_mask(soft: torch.Tensor, grid: tuple[int, int], patch: int,
                        out_size: tuple[int, int]) -> np.ndarray:
    """Label map [H0, W0] uint8 from soft labels [C, h*w]: bilinear upsampling by the patch
    size, per-channel min-max normalisation, argmax, nearest resize to out_size (W0, H0)."""
    c = soft.shape[0]
    up = F.interpolate(soft.reshape(1, c, *grid).float(), scale_factor=patch,
                       mode="bilinear", align_corners=False)[0]               # (C, H, W)
    lo = up.flatten(1).min(dim=1).values[:, None, None]
    hi = up.flatten(1).max(dim=1).values[:, None, None]
    spread = torch.where(hi > 0, hi - lo, torch.ones_like(hi))
    up = torch.where(hi > 0, (up - lo) / spread.clamp(min=1e-12), up)
    labels = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.array(Image.fromarray(labels).resize(out_size, Image.NEAREST))


def segment_sequence(backbone: torch.nn.Module, seq: VideoSequence, cfg: PropagationConfig,
                     output_dir: Path | None = None, dump_dir: Path | None = None,
                     spec: AugmentationSpec | None = None) -> np.ndarray:
    """Propagate the first annotation through ``seq``; label maps [T, H0, W0] uint8.

    Writes ``output_dir/<seq>/<frame>.png`` (indexed, the annotation's own palette or
    DAVIS's) and, with ``dump_dir``, ``dump_dir/<seq>.pth`` (features [T, h*w, D] float16).
    """
    spec = spec or AugmentationSpec()
    patch = backbone.patch_size
    first, palette = read_annotation(seq.annotations[0])
    palette = davis_palette() if palette is None else palette
    n_labels = int(first[first != VOID_LABEL].max(initial=0)) + 1
    predictions, feats, queue = [first], [], deque(maxlen=cfg.n_last_frames)
    mask = grid = None
    first_feat = first_labels = None
    for t, path in enumerate(seq.frames):
        image = read_frame(path)
        if image.size != (first.shape[1], first.shape[0]):
            raise ValueError(f"sequence {seq.name}: frame {path} is {image.size[0]}x"
                             f"{image.size[1]} but the first annotation is {first.shape[1]}x"
                             f"{first.shape[0]}")
        size = frame_size(*image.size, cfg, patch)
        tensor = to_normalized_tensor(image.resize(size, Image.BILINEAR), spec.mean, spec.std)
        feat = patch_features(backbone, tensor)                               # (N, D)
        if dump_dir is not None:
            feats.append(feat.half().cpu())  # host sync: one copy per frame, only when dumping
        if t == 0:
            grid = (size[1] // patch, size[0] // patch)
            mask = neighbourhood_mask(*grid, cfg.neighbourhood, feat.device)
            first_feat = feat
            first_labels = one_hot_patches(first, grid, n_labels).to(feat.device)
            continue
        context = [(first_feat, first_labels)] + list(queue)
        soft = propagate_labels(feat, [c[0] for c in context], [c[1] for c in context],
                                mask, cfg.topk, cfg.temperature)              # (C, N)
        queue.append((feat, soft))
        # host sync: the label map comes to the CPU to be written and scored
        predictions.append(soft_labels_to_mask(soft, grid, patch, image.size))
    labels = np.stack(predictions)
    if output_dir is not None:
        for path, frame_labels in zip(seq.frames, labels):
            write_indexed_png(Path(output_dir) / seq.name / (path.stem + ".png"), frame_labels,
                              palette)
    if dump_dir is not None:
        from dino_core.formats.files import save_checkpoint
        save_checkpoint({"features": torch.stack(feats), "grid": torch.tensor(grid)},
                        Path(dump_dir) / f"{seq.name}.pth")
    return labels


def read_ground_truth(seq: VideoSequence) -> np.ndarray:
    """Annotations [T, H, W] uint8 of a scored sequence (all the same size)."""
    maps = [read_annotation(p)[0] for p in seq.annotations]
    for p, m in zip(seq.annotations, maps):
        if m.shape != maps[0].shape:
            raise ValueError(f"sequence {seq.name}: annotation {p} is {m.shape[1]}x{m.shape[0]}"
                             f", the first one {maps[0].shape[1]}x{maps[0].shape[0]}")
    return np.stack(maps)


def segment_and_score(backbone: torch.nn.Module, sequences: list[VideoSequence],
                      cfg: PropagationConfig, output_dir: Path | None = None,
                      dump_dir: Path | None = None,
                      log: bool = True) -> tuple[list[SequenceScores], list[str]]:
    """Segment every sequence (rank r of W takes sequences r, r+W, ...) and score those
    annotated on every frame. Returns, on every rank, (scores of all scored sequences in
    input order, names of the sequences written but not scored). Every rank of an
    initialised process group must call it."""
    rank, world = rank_and_world()
    mine: list[tuple[int, SequenceScores | None]] = []
    for i in range(rank, len(sequences), world):
        seq = sequences[i]
        labels = segment_sequence(backbone, seq, cfg, output_dir, dump_dir)
        scores = score_sequence(seq.name, labels, read_ground_truth(seq)) if seq.scored else None
        if log and scores is not None and scores.j.size:
            print(f"  {seq.name}: J {100 * scores.j.mean():.1f}  F {100 * scores.f.mean():.1f}"
                  f"  ({len(seq.frames)} frames, {scores.j.shape[0]} object(s), rank {rank})",
                  flush=True)
        mine.append((i, scores))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)  # a few small arrays per sequence
        mine = [item for part in gathered for item in part]
    mine.sort(key=lambda item: item[0])
    scored = [s for _, s in mine if s is not None]
    unscored = [sequences[i].name for i, s in mine if s is None]
    return scored, unscored

