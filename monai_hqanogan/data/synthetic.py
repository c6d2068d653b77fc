"""Synthetic images for tests, demos and benchmarks: no download, any size, deterministic for a seed."""

from __future__ import annotations

import math

import torch

__all__ = ["make_ellipse_images"]


def make_ellipse_images(num_images: int, size: int = 32, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """Random "head-like" images in [-1, 1]: a bright filled ellipse with a darker inner ellipse on a -1 background.

    Position, axes, rotation and intensities vary per image; edges are anti-aliased over about one pixel.

    Args:
        num_images: number of images.
        size: height and width in pixels.
        seed: seed of a private generator (the global RNG is not used).
        channels: channels (the same picture repeated).

    Returns:
        float32 tensor [num_images, channels, size, size].
    """
    if num_images < 1 or size < 4:
        raise ValueError(f"need num_images >= 1 and size >= 4, got {num_images} and {size}.")
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(num_images, 1, 1, generator=g)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy = uniform(-0.15, 0.15), uniform(-0.15, 0.15)
    ax, ay = uniform(0.45, 0.75), uniform(0.55, 0.85)
    angle = uniform(-math.pi / 6, math.pi / 6)
    outer_level, inner_level = uniform(0.2, 0.9), uniform(-0.6, 0.0)
    inner_scale = uniform(0.25, 0.5)
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    radius = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2)  # 1 on the outer boundary
    soft = 1.5 / size  # about one pixel of anti-aliasing, in radius units
    outer = torch.clamp((1 - radius) / soft + 0.5, 0, 1)
    inner = torch.clamp((inner_scale - radius) / soft + 0.5, 0, 1)
    img = -1 + outer * (outer_level + 1) + inner * (inner_level - outer_level)
    return img.unsqueeze(1).repeat(1, channels, 1, 1).float()
