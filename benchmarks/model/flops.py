"""Analytic FLOP counts for ViT forwards and DINO training steps, and model-FLOPs utilisation.

Convention (as in the DINO paper and nanoGPT/PaLM-style MFU): only matrix multiplies are
counted, one multiply-add = 2 FLOPs; norms, softmax, GELU, biases and the optimizer are
left out. A ViT forward on one image with N = (H/p)(W/p) patches, T = N + 1 tokens, width D,
depth L and MLP ratio r costs

    patch embedding      2 * N * (3 p^2) * D
    per block            2*T*D*3D (qkv) + 2*T*T*D (q k^T) + 2*T*T*D (attn v)
                         + 2*T*D*D (proj) + 2 * 2*T*D*rD (mlp)
                       = (8 + 4r) T D^2 + 4 T^2 D

The DINO head on one feature: 2 (D*h + h*h + h*b + b*K) with hidden h = 2048, bottleneck
b = 256, K prototypes. A DINO step per image: student forward + backward (= 3x forward) on
every crop, head included, plus a teacher forward on the global crops. For ViT-S/16 at
2x224 + 10x96 with K = 65536 this gives ~124 GFLOP per image (the published figure).

Peak FLOP/s: a table for GPUs (``GPU_PEAK_TFLOPS``), and, for the CPU or a GPU not in the
table, a peak measured here by a timed matmul (``measure_matmul_peak``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dino_core.models.vit import ARCHS


@dataclass(frozen=True)
class ViTShape:
    """The numbers a FLOP count needs: width, depth, MLP ratio, patch size."""

    embed_dim: int
    depth: int
    patch_size: int
    mlp_ratio: float = 4.0
    in_chans: int = 3

    @classmethod
    def from_arch(cls, arch: str, patch_size: int) -> "ViTShape":
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
        a = ARCHS[arch]
        return cls(embed_dim=a["embed_dim"], depth=a["depth"], patch_size=patch_size)


@dataclass(frozen=True)
class HeadShape:
    """DINO head sizes: MLP ``in -> hidden -> hidden -> bottleneck`` then ``bottleneck -> K``."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3


def vit_forward_flops(shape: ViTShape, resolution: int | tuple[int, int]) -> int:
    """Matmul FLOPs of one image's backbone forward at ``resolution`` (pixels, or (H, W))."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    p, d = shape.patch_size, shape.embed_dim
    if h % p or w % p:
        raise ValueError(f"resolution {h}x{w} is not a multiple of patch size {p}")
    n = (h // p) * (w // p)
    t = n + 1
    hidden = int(d * shape.mlp_ratio)
    embed = 2 * n * shape.in_chans * p * p * d
    block = 2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d + 4 * t * d * hidden
    return embed + shape.depth * block


def head_forward_flops(in_dim: int, head: HeadShape) -> int:
    """Matmul FLOPs of the DINO head on one feature vector."""
    dims = [in_dim] + [head.hidden_dim] * (head.nlayers - 1) + [head.bottleneck_dim]
    mlp = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return mlp + 2 * head.bottleneck_dim * head.out_dim


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per image of one DINO training step, by part."""

    student_forward: int
    student_backward: int
    teacher_forward: int

    @property
    def total(self) -> int:
        return self.student_forward + self.student_backward + self.teacher_forward


def dino_step_flops(shape: ViTShape, global_res: int = 224, n_global: int = 2,
                    local_res: int = 96, n_local: int = 10,
                    head: HeadShape | None = None) -> StepFlops:
    """FLOPs per image of a DINO step: student fwd+bwd on all crops (backward = 2x forward),
    teacher forward on the global crops; backbone and head on every crop."""
    head = head or HeadShape()
    per_head = head_forward_flops(shape.embed_dim, head)
    g = vit_forward_flops(shape, global_res) + per_head
    loc = vit_forward_flops(shape, local_res) + per_head if n_local else 0
    student = n_global * g + n_local * loc
    return StepFlops(student_forward=student, student_backward=2 * student,
                     teacher_forward=n_global * g)


# ----------------------------------------------------------------------------- peaks
# Dense peak throughput in TFLOP/s for the training dtype (bf16/fp16 tensor cores).
GPU_PEAK_TFLOPS = {
    "h200": (790.0, "H200 bf16 dense, measured on a matmul (performance.md)"),
    "h100": (990.0, "H100 SXM bf16 dense, nominal"),
    "a100": (312.0, "A100 bf16 dense, nominal"),
    "v100": (125.0, "V100 fp16 tensor cores, nominal"),
}


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s and where the figure comes from."""

    flops_per_s: float
    source: str


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        n: int = 1024, iters: int = 10) -> Peak:
    """Best-of-``iters`` FLOP/s of an n x n x n matmul (2 n^3 FLOPs) on ``device``."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(iters + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # host sync: time one matmul alone
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # host sync: wait for it to finish
        if i >= 2:  # the first two are warm-up
            best = min(best, time.perf_counter() - t0)
    name = str(dtype).replace("torch.", "")
    return Peak(2 * n ** 3 / best, f"measured: best {n}^3 {name} matmul of {iters} on {device.type}"
                f" with {torch.get_num_threads()} threads")


def device_peak(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> Peak:
    """Peak FLOP/s for MFU: the table for known GPUs, else a timed matmul on the device."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for key, (tflops, source) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return Peak(tflops * 1e12, source)
        return measure_matmul_peak(device, dtype, n=8192)
    return measure_matmul_peak(device, torch.float32, n=1024, iters=20)


def mfu(flops_per_item: float, items_per_s: float, peak: Peak) -> float:
    """Model-FLOPs utilisation: achieved FLOP/s over the device's peak (0..1)."""
    return flops_per_item * items_per_s / peak.flops_per_s
