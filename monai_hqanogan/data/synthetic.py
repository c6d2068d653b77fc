"""Synthetic images for tests, demos and benchmarks: no download, any size, deterministic for a seed."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "make_ellipse_images",
    "add_synthetic_lesions",
    "brain_mask",
    "make_toy_lesion_set",
    "TOY_SHAPES",
    "TOY_LESIONS",
]


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
    foreground: torch.Tensor | None = None,
    radius_reference: str = "image",
    polarity: str = "random",
    max_tries: int = 20,
    min_inside: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one elliptical lesion with an exact mask into each image, inside its foreground.

    Size, contrast (brighter or darker, at random), edge sharpness and texture vary per lesion, so that detection
    and localisation are measured over a range of difficulty rather than on one easy blob.

    By default the foreground is every pixel above ``foreground_threshold`` and the semi-axes are fractions of the
    image size. For real images pass ``foreground`` (e.g. an eroded :func:`brain_mask`) and
    ``radius_reference="foreground"``: centres are then drawn inside the mask, the semi-axes become fractions of the
    mask's equivalent diameter (so lesions keep their size relative to the organ whatever the field of view), and up
    to ``max_tries`` placements are drawn until at least ``min_inside`` of the lesion's ellipse lies in the mask.
    The lesion and its mask are always cut to the foreground.

    Args:
        images: [N, C, H, W] images in [-1, 1] (C channels get the same lesion).
        seed: seed of a private generator.
        radius_range: lesion semi-axes as fractions of the image size (or of the foreground's equivalent diameter,
            see ``radius_reference``).
        contrast_range: absolute intensity change at the lesion centre, in [-1, 1] units.
        sharpness_range: edge steepness; larger is sharper (the profile is a logistic in the normalised radius).
        texture_range: relative amplitude of smooth random texture inside the lesion.
        foreground_threshold: lesion centres are drawn among pixels above this value (when ``foreground`` is None).
        mask_level: the mask is where the lesion profile exceeds this fraction of its peak.
        foreground: optional [N, 1, H, W] (or [N, H, W]) boolean masks of where lesions may lie; replaces
            ``foreground_threshold``.
        radius_reference: ``"image"`` (semi-axes relative to H and W) or ``"foreground"`` (relative to the
            equivalent diameter of each image's foreground, 2 * sqrt(area / pi)).
        polarity: ``"random"`` (brighter or darker with equal probability), ``"alternate"`` (even indices
            brighter, odd darker), ``"brighter"`` or ``"darker"``.
        max_tries: placements drawn per lesion when ``foreground`` is given (the best one is kept).
        min_inside: fraction of the lesion ellipse that must lie in ``foreground`` to accept a placement early.

    Returns:
        ``(lesioned images, masks)``, masks [N, 1, H, W] float in {0, 1}.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}.")
    if radius_reference not in ("image", "foreground"):
        raise ValueError(f"radius_reference must be 'image' or 'foreground', got {radius_reference!r}.")
    if polarity not in ("random", "alternate", "brighter", "darker"):
        raise ValueError(f"polarity must be 'random', 'alternate', 'brighter' or 'darker', got {polarity!r}.")
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    if foreground is not None:
        foreground = torch.as_tensor(foreground).bool()
        foreground = foreground.unsqueeze(1) if foreground.ndim == 3 else foreground
        if tuple(foreground.shape) != (n, 1, h, w):
            raise ValueError(f"foreground must be [{n}, 1, {h}, {w}], got shape {tuple(foreground.shape)}.")
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out, masks = images.clone().float(), torch.zeros(n, 1, h, w)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    for i in range(n):
        if foreground is None:
            inside_mask = images[i].amax(dim=0) > foreground_threshold
        else:
            inside_mask = foreground[i, 0]
        fg = inside_mask.nonzero()
        if len(fg) == 0:
            what = f"no pixel above foreground_threshold={foreground_threshold}" if foreground is None else "an empty"
            raise ValueError(f"image {i} has {what}{' foreground mask' if foreground is not None else ''}.")
        if radius_reference == "foreground":
            ref_h = ref_w = 2.0 * math.sqrt(len(fg) / math.pi)
        else:
            ref_h, ref_w = float(h), float(w)
        best_fraction, radius = -1.0, None
        for _ in range(1 if foreground is None else max(1, max_tries)):
            cy, cx = fg[int(torch.randint(len(fg), (), generator=g))].float().tolist()
            ry, rx = uniform(*radius_range) * ref_h, uniform(*radius_range) * ref_w
            angle = uniform(0, math.pi)
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
            candidate = torch.sqrt((u / max(rx, 1e-3)) ** 2 + (v / max(ry, 1e-3)) ** 2)
            if foreground is None:
                radius = candidate
                break
            ellipse = candidate <= 1
            fraction = float((ellipse & inside_mask).sum()) / max(1, int(ellipse.sum()))
            if fraction > best_fraction:
                best_fraction, radius = fraction, candidate
            if fraction >= min_inside:
                break
        sharp = uniform(*sharpness_range)
        profile = torch.sigmoid((1 - radius) * 4 * sharp)
        profile = profile / profile.max()
        texture = torch.randn(1, 1, h // 4 + 1, w // 4 + 1, generator=g)
        texture = torch.nn.functional.interpolate(texture, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        magnitude = uniform(*contrast_range)
        sign = 1 if float(torch.rand((), generator=g)) < 0.5 else -1  # drawn always: the same stream for any polarity
        if polarity == "alternate":
            sign = 1 if i % 2 == 0 else -1
        elif polarity != "random":
            sign = 1 if polarity == "brighter" else -1
        contrast = magnitude * sign
        inside = inside_mask.float()  # lesions stay inside the body
        delta = contrast * profile * (1 + uniform(*texture_range) * texture) * inside
        out[i] = (out[i] + delta).clamp(-1, 1)
        masks[i, 0] = (profile >= mask_level).float() * inside
    return out, masks


def brain_mask(
    image: np.ndarray | torch.Tensor,
    erosion: float = 0.08,
    threshold: float | None = None,
    threshold_scale: float = 0.5,
    smoothing: float = 0.01,
) -> np.ndarray:
    """Foreground (head or brain) mask of one 2D grey image, for placing synthetic lesions inside the anatomy.

    Steps: scale the intensities to [0, 1] (minimum and 99.5th percentile), smooth with a Gaussian of
    ``smoothing * max(H, W)`` pixels, threshold at ``threshold`` (default ``threshold_scale`` times Otsu's
    threshold, which keeps dark tissue such as CSF next to the background), keep the largest connected component
    (drops text, markers and noise), fill its holes, then erode by ``erosion`` times the mask's equivalent diameter
    (2 * sqrt(area / pi); at most half the mask's largest inner distance, so that a small mask never vanishes).
    The erosion keeps lesions off the skull and the image border.

    Args:
        image: [H, W] array or tensor, any intensity range.
        erosion: erosion radius as a fraction of the mask's equivalent diameter (0: no erosion).
        threshold: threshold on the [0, 1]-scaled smoothed image (None: ``threshold_scale`` times Otsu's).
        threshold_scale: factor applied to Otsu's threshold when ``threshold`` is None.
        smoothing: Gaussian sigma as a fraction of the longest side (0: no smoothing).

    Returns:
        bool array [H, W]; all False for a constant image.
    """
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    img = img.astype(np.float32)
    if img.ndim != 2:
        raise ValueError(f"brain_mask expects one 2D image [H, W], got shape {img.shape}.")
    lo, hi = float(img.min()), float(np.percentile(img, 99.5))
    if hi <= lo:
        hi = float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=bool)
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    if smoothing > 0:
        x = ndimage.gaussian_filter(x, sigma=smoothing * max(img.shape))
    if threshold is None:
        threshold = threshold_scale * _otsu_threshold(x)
    mask = x > threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = ndimage.binary_fill_holes(labels == int(sizes.argmax()))
    if erosion > 0:
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # the image border counts as outside
        radius = min(erosion * 2.0 * math.sqrt(mask.sum() / math.pi), 0.5 * float(distance.max()))
        mask = distance > radius
    return mask


def _otsu_threshold(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises the between-class variance of the histogram."""
    hist, edges = np.histogram(x, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist).astype(np.float64)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:][int(between.argmax())])


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
