"""Image grids for sample sheets, PNG files and TensorBoard."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from monai_hqanogan.utils.checkpoint import atomic_output

__all__ = ["make_image_grid", "save_image_grid"]


def make_image_grid(
    images: torch.Tensor, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 1
) -> torch.Tensor:
    """Tile ``images`` [N, C, H, W] into one image [C, rows * (H + p) + p, cols * (W + p) + p] scaled to [0, 1].

    Args:
        images: a batch of 1- or 3-channel images.
        nrow: images per row (default: about the square root of N).
        value_range: the range mapped to [0, 1]; values outside are clipped.
        padding: pixels of black border between tiles.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}.")
    if value_range[1] <= value_range[0]:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}.")
    n, c, h, w = images.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    scale: int = 1,
    padding: int = 1,
) -> Path:
    """Save a grid of ``images`` [N, C, H, W] as an 8-bit PNG, enlarged ``scale`` times (nearest neighbour).

    Written atomically (temporary file, then rename): a killed process never leaves a truncated PNG."""
    grid = make_image_grid(images, nrow=nrow, value_range=value_range, padding=padding)
    arr = (grid.numpy() * 255 + 0.5).astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0)
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return path
