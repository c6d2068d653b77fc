"""Synthetic images for tests, demos and benchmarks: no download, any size, deterministic for a seed."""

from __future__ import annotations

import math

import torch

__all__ = ["make_ellipse_images", "add_synthetic_lesions", "make_toy_lesion_set", "TOY_SHAPES", "TOY_LESIONS"]


def make_ellipse_images(
    num_images: int,
    size: int = 32,
    seed: int = 0,
    channels: int = 1,
    level_range: tuple[float, float] = (0.2, 0.9),
    inner: bool = True,
) -> torch.Tensor:
    """Random "head-like" images in [-1, 1]: a bright filled ellipse with a darker inner ellipse on a -1 background.

    Position, axes, rotation and intensities vary per image; edges are anti-aliased over about one pixel.

    Args:
        num_images: number of images.
        size: height and width in pixels.
        seed: seed of a private generator (the global RNG is not used).
        channels: channels (the same picture repeated).
        level_range: range of the outer ellipse's intensity (equal ends: one fixed intensity).
        inner: draw the darker inner ellipse (False: a plain ellipse, an easier distribution to learn).

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
    outer_level, inner_level = uniform(*level_range), uniform(-0.6, 0.0)
    inner_scale = uniform(0.25, 0.5)
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    radius = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2)  # 1 on the outer boundary
    soft = 1.5 / size  # about one pixel of anti-aliasing, in radius units
    outer = torch.clamp((1 - radius) / soft + 0.5, 0, 1)
    img = -1 + outer * (outer_level + 1)
    if inner:
        img = img + torch.clamp((inner_scale - radius) / soft + 0.5, 0, 1) * (inner_level - outer_level)
    return img.unsqueeze(1).repeat(1, channels, 1, 1).float()


def add_synthetic_lesions(
    images: torch.Tensor,
    seed: int = 0,
    radius_range: tuple[float, float] = (0.06, 0.2),
    contrast_range: tuple[float, float] = (0.4, 1.0),
    sharpness_range: tuple[float, float] = (0.5, 4.0),
    texture_range: tuple[float, float] = (0.0, 0.5),
    foreground_threshold: float = -0.8,
    mask_level: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one elliptical lesion with an exact mask into each image, inside its foreground.

    Size, contrast (brighter or darker, at random), edge sharpness and texture vary per lesion, so that detection
    and localisation are measured over a range of difficulty rather than on one easy blob.

    Args:
        images: [N, C, H, W] images in [-1, 1] (C channels get the same lesion).
        seed: seed of a private generator.
        radius_range: lesion semi-axes as fractions of the image size.
        contrast_range: absolute intensity change at the lesion centre (sign random), in [-1, 1] units.
        sharpness_range: edge steepness; larger is sharper (the profile is a logistic in the normalised radius).
        texture_range: relative amplitude of smooth random texture inside the lesion.
        foreground_threshold: lesion centres are drawn among pixels above this value.
        mask_level: the mask is where the lesion profile exceeds this fraction of its peak.

    Returns:
        ``(lesioned images, masks)``, masks [N, 1, H, W] float in {0, 1}.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}.")
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out, masks = images.clone().float(), torch.zeros(n, 1, h, w)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    for i in range(n):
        fg = (images[i].amax(dim=0) > foreground_threshold).nonzero()
        if len(fg) == 0:
            raise ValueError(f"image {i} has no pixel above foreground_threshold={foreground_threshold}.")
        cy, cx = fg[int(torch.randint(len(fg), (), generator=g))].float().tolist()
        ry, rx = uniform(*radius_range) * h, uniform(*radius_range) * w
        angle = uniform(0, math.pi)
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        radius = torch.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        sharp = uniform(*sharpness_range)
        profile = torch.sigmoid((1 - radius) * 4 * sharp)
        profile = profile / profile.max()
        texture = torch.randn(1, 1, h // 4 + 1, w // 4 + 1, generator=g)
        texture = torch.nn.functional.interpolate(texture, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        contrast = uniform(*contrast_range) * (1 if float(torch.rand((), generator=g)) < 0.5 else -1)
        inside = (images[i].amax(dim=0) > foreground_threshold).float()  # lesions stay inside the body
        delta = contrast * profile * (1 + uniform(*texture_range) * texture) * inside
        out[i] = (out[i] + delta).clamp(-1, 1)
        masks[i, 0] = (profile >= mask_level).float() * inside
    return out, masks


#: the toy task of the tests and benchmarks: plain ellipses of one intensity (easy for a briefly trained G) ...
TOY_SHAPES = {"inner": False, "level_range": (0.4, 0.4)}
#: ... and clearly visible pasted lesions
TOY_LESIONS = {"radius_range": (0.1, 0.2), "contrast_range": (0.6, 1.0), "sharpness_range": (2.0, 4.0)}


def make_toy_lesion_set(
    num_per_class: int, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_per_class`` normal toy images followed by as many with a pasted lesion.

    Returns:
        ``(images [2n, 1, size, size], labels [2n] (0 normal, 1 lesioned), masks [2n, 1, size, size])``; the masks
        of the normal images are empty.
    """
    normal = make_ellipse_images(num_per_class, size, seed=seed, **TOY_SHAPES)
    base = make_ellipse_images(num_per_class, size, seed=seed + 1, **TOY_SHAPES)
    abnormal, masks = add_synthetic_lesions(base, seed=seed, **TOY_LESIONS)
    labels = torch.cat([torch.zeros(num_per_class), torch.ones(num_per_class)])
    return torch.cat([normal, abnormal]), labels, torch.cat([torch.zeros_like(masks), masks])
