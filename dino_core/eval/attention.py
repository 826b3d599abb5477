"""Self-attention maps of the last block: the CLS token's attention to every patch, per head.

``cls_attention`` returns, for each head, the CLS query's softmax attention over the patch
tokens renormalised to sum to one (the CLS-to-CLS entry is dropped), on the patch grid.
``mass_masks`` keeps, per head, the smallest set of highest-attention patches that holds at
least ``threshold`` of the attention mass (DINO's mask visualisation, threshold 0.6).
``write_attention_pngs`` draws heat maps over the image, the masks, and a grid of all heads.
Any image size works: the image is cropped to a multiple of the patch size and the position
embeddings are interpolated by the backbone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipelines.eval_transform import resize_shorter
from pipelines.reference import to_normalized_tensor
from pipelines.images import open_rgb
from pipelines.spec import AugmentationSpec

GRID_TILE = 224  # height of one tile in the grid image, pixels


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB, or a ValueError naming the file."""
    if not Path(path).is_file():
        raise ValueError(f"image not found: {path}")
    try:
        return open_rgb(str(path))
    except Exception as e:  # PIL raises a zoo of types on hostile input
        raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e})") from None


def prepare_image(image: Image.Image, patch_size: int, image_size: int | None = None,
                  spec: AugmentationSpec | None = None) -> tuple[torch.Tensor, Image.Image]:
    """(normalised tensor [3, H, W], the matching RGB picture) with H, W multiples of the patch.

    image_size: resize (bicubic) so the shorter side has this length first; None keeps the
    size. The result is then centre-cropped to multiples of ``patch_size``.
    """
    spec = spec or AugmentationSpec()
    if image_size is not None:
        image = resize_shorter(image, image_size, spec.interpolation)
    w, h = image.size
    cw, ch = w - w % patch_size, h - h % patch_size
    if cw == 0 or ch == 0:
        raise ValueError(f"image of {w}x{h} pixels is smaller than one {patch_size}px patch")
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    return to_normalized_tensor(image, spec.mean, spec.std), image


@torch.no_grad()
def cls_attention(backbone: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Per-head CLS-to-patch attention [heads, H/p, W/p] of image [3, H, W]; each map sums to 1."""
    p = backbone.patch_size
    gh, gw = image.shape[-2] // p, image.shape[-1] // p
    device = next(backbone.parameters()).device
    attn = backbone.get_last_selfattention(image[None].to(device))  # (1, heads, 1+N, 1+N)
    cls_to_patch = attn[0, :, 0, 1:].float().cpu()           # (heads, N)
    cls_to_patch = cls_to_patch / cls_to_patch.sum(dim=-1, keepdim=True)
    return cls_to_patch.reshape(-1, gh, gw)


def upsample_nearest(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """[heads, h, w] -> [heads, h * factor, w * factor], each patch value repeated."""
    return maps.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def mass_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean masks [heads, h, w]: per head the fewest top patches holding >= threshold mass."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    flat = maps.flatten(1).double()                           # (heads, N)
    flat = flat / flat.sum(dim=1, keepdim=True)
    val, order = flat.sort(dim=1, descending=True)
    mass_before = val.cumsum(dim=1) - val                     # mass of strictly higher patches
    keep_sorted = mass_before < threshold
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return keep.reshape(maps.shape)


def _heat_rgb(values: np.ndarray) -> np.ndarray:
    """[H, W] values -> [H, W, 3] uint8 colours (inferno), min-max scaled per map."""
    import matplotlib
    matplotlib.use("Agg")
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / max(hi - lo, 1e-12)
    return (matplotlib.colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)


def overlay_heat(image: Image.Image, values: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The heat map of ``values`` [H, W] blended over ``image`` (same size)."""
    return Image.blend(image, Image.fromarray(_heat_rgb(values)), alpha)


def overlay_mask(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` with the pixels outside ``mask`` [H, W] darkened to a quarter."""
    pixels = np.asarray(image, dtype=np.float32)
    pixels = np.where(mask[..., None], pixels, pixels * 0.25)
    return Image.fromarray(pixels.astype(np.uint8))


def _grid(rows: list[list[tuple[str, Image.Image]]]) -> Image.Image:
    """Labelled tiles, each scaled to GRID_TILE pixels high, laid out row by row."""
    first = rows[0][0][1]
    tw = max(1, round(first.width * GRID_TILE / first.height))
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * tw, len(rows) * GRID_TILE), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, (label, tile) in enumerate(row):
            x, y = c * tw, r * GRID_TILE
            grid.paste(tile.resize((tw, GRID_TILE), Image.BILINEAR), (x, y))
            draw.rectangle((x, y, x + 7 * len(label) + 4, y + 14), fill=(0, 0, 0))
            draw.text((x + 2, y + 1), label, fill=(255, 255, 255))
    return grid


def write_attention_pngs(image: Image.Image, maps: torch.Tensor, masks: torch.Tensor,
                         output_dir: str | Path) -> list[Path]:
    """Write image.png, attn-head{i}.png, mask-head{i}.png and grid.png into ``output_dir``.

    image: the (cropped) RGB picture of H x W pixels; maps [heads, H, W] attention upsampled to
    the image; masks [heads, H, W] booleans. Returns the written paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if maps.shape[-2:] != (image.height, image.width) or masks.shape != maps.shape:
        raise ValueError(f"maps {tuple(maps.shape)} / masks {tuple(masks.shape)} do not match "
                         f"the {image.width}x{image.height} image")
    written = [out / "image.png"]
    image.save(written[0])
    heat_row, mask_row = [("image", image)], [("", image)]
    for h in range(maps.shape[0]):
        heat = overlay_heat(image, maps[h].numpy())
        masked = overlay_mask(image, masks[h].numpy())
        for name, pic in ((f"attn-head{h}.png", heat), (f"mask-head{h}.png", masked)):
            pic.save(out / name)
            written.append(out / name)
        heat_row.append((f"head {h}", heat))
        mask_row.append((f"mask {h}", masked))
    _grid([heat_row, mask_row]).save(out / "grid.png")
    written.append(out / "grid.png")
    return written


def attention_pictures(backbone: torch.nn.Module, image_path: str | Path,
                       output_dir: str | Path, image_size: int | None = 480,
                       threshold: float = 0.6) -> list[Path]:
    """Load an image, compute the last block's CLS attention per head, write the PNGs."""
    tensor, picture = prepare_image(load_rgb(image_path), backbone.patch_size, image_size)
    maps = cls_attention(backbone, tensor)                    # (heads, h, w)
    masks = mass_masks(maps, threshold)
    p = backbone.patch_size
    return write_attention_pngs(picture, upsample_nearest(maps, p), upsample_nearest(masks, p),
                                output_dir)
