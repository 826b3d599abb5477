"""Linear probe on a frozen backbone (the DINO linear evaluation protocol).

Features: ViT-T/S concatenate the CLS tokens of the last 4 blocks; ViT-B/L take the last
block's CLS concatenated with the mean of its patch tokens (``probe_recipe``). A single
``nn.Linear`` is trained with SGD (momentum 0.9, weight decay 0, lr scaled by batch / 256) on
a per-iteration cosine schedule to 0, with cross-entropy. Top-1 / top-5 on the val split after
every epoch; the classifier, optimizer, epoch and best accuracy are checkpointed atomically
and resumed with weights_only=True loading.

The training loop consumes batches of FEATURES (``FeatureBatches``), so the same loop serves
features computed on the fly from augmented images and precomputed toy features in tests.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dino_core.formats.files import load_checkpoint, load_state, save_checkpoint
from dino_core.train.schedules import cosine_schedule

from .knn import topk_accuracy

# (features [B, F], labels [B]) batches, already on the training device
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
FeatureBatches = Callable[[int], Batches]  # epoch -> that epoch's batches


@dataclass(frozen=True)
class LinearProbeConfig:
    """Options of the linear probe. ``lr`` is per 256 images (scaled by the batch size)."""

    epochs: int = 100
    lr: float = 0.001
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # train-time random resized crop
    num_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0 and math.isfinite(self.lr),
                  "batch_size": self.batch_size >= 1, "momentum": 0 <= self.momentum < 1,
                  "weight_decay": self.weight_decay >= 0, "num_workers": self.num_workers >= 0,
                  "crop_scale": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"linear probe config field '{name}': invalid value "
                                 f"{getattr(self, name)!r}")

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256.0


def probe_recipe(arch: str) -> tuple[int, bool]:
    """(n_last_blocks, avgpool_patchtokens) of the reference protocol for ``arch``."""
    return (4, False) if arch in ("vit_tiny", "vit_small") else (1, True)


def probe_features(backbone: nn.Module, images: torch.Tensor, n_last_blocks: int,
                   avgpool: bool) -> torch.Tensor:
    """Frozen features [B, n_last_blocks * D (+ D with avgpool)] of images [B, 3, H, W].

    CLS tokens of the last ``n_last_blocks`` blocks (after the final norm), concatenated; with
    ``avgpool`` the mean of the last block's patch tokens is appended.
    """
    layers = backbone.get_intermediate_layers(images, n_last_blocks)  # each (B, 1+N, D)
    parts = [x[:, 0] for x in layers]
    if avgpool:
        parts.append(layers[-1][:, 1:].mean(dim=1))
    return torch.cat(parts, dim=-1)


class LinearClassifier(nn.Module):
    """One linear layer, weights N(0, 0.01), bias 0: features [B, F] -> logits [B, C]."""

    def __init__(self, dim: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@torch.no_grad()
def evaluate_classifier(classifier: nn.Module, batches: Batches) -> dict[str, float]:
    """{"top1", "top5" (percent), "loss"} of ``classifier`` over feature batches."""
    classifier.eval()
    logits, labels = [], []
    for feats, target in batches:
        logits.append(classifier(feats).float().cpu())  # host sync: per eval batch
        labels.append(target.cpu())
    if not logits:
        raise ValueError("linear probe evaluation got no batches")
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    top1, top5 = topk_accuracy(all_logits, all_labels)
    return {"top1": top1, "top5": top5,
            "loss": F.cross_entropy(all_logits, all_labels).item()}


def _save(path: Path, classifier: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
          best: dict[str, float], config: LinearProbeConfig, extra: dict) -> None:
    save_checkpoint({"classifier": classifier.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "best": dict(best), "config": dataclasses.asdict(config),
                     **extra}, path)


def train_linear(classifier: nn.Module, train_batches: FeatureBatches, steps_per_epoch: int,
                 config: LinearProbeConfig,
                 val_batches: Callable[[], Batches] | None = None,
                 checkpoint_path: str | Path | None = None, extra: dict | None = None,
                 log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``classifier`` for ``config.epochs`` epochs; return the best val metrics.

    train_batches(epoch) yields (features [B, F], labels [B]) on the classifier's device;
    steps_per_epoch sizes the cosine schedule. When ``checkpoint_path`` exists, training
    resumes from it (classifier, optimizer, epoch, best); after every epoch it is rewritten
    atomically. ``extra`` (plain data) is stored in the checkpoint, e.g. the backbone source.
    """
    optimizer = torch.optim.SGD(classifier.parameters(), lr=config.scaled_lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    lrs = cosine_schedule(config.scaled_lr, 0.0, config.epochs, max(steps_per_epoch, 1))
    start, best = 0, {"top1": -1.0, "top5": -1.0, "epoch": -1.0}
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.is_file():
        state = load_checkpoint(path)
        load_state(classifier, state["classifier"], "the linear classifier", path)
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["epoch"]), dict(state["best"])
        log(f"resumed linear probe from {path} at epoch {start}")
    for epoch in range(start, config.epochs):
        classifier.train()
        step, loss = epoch * steps_per_epoch, None
        for feats, labels in train_batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[min(step, len(lrs) - 1)])
            loss = F.cross_entropy(classifier(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        metrics = evaluate_classifier(classifier, val_batches()) if val_batches else {}
        if loss is None:
            raise ValueError(f"linear probe epoch {epoch}: the training data yielded no batch")
        line = f"epoch {epoch + 1}/{config.epochs}: train loss {loss.item():.4f}"  # host sync
        if metrics:
            if metrics["top1"] > best["top1"]:
                best = {"top1": metrics["top1"], "top5": metrics["top5"],
                        "epoch": float(epoch + 1)}
            line += (f", val top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f} "
                     f"(best top-1 {best['top1']:.2f})")
        log(line)
        if path is not None:
            _save(path, classifier, optimizer, epoch + 1, best, config, extra or {})
    return best
