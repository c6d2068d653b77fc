"""Array transforms (channel-first tensors or arrays), MONAI style."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = ["ToSingleChannel", "ensure_finite", "intensity_window", "is_background_slice"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


class ToSingleChannel(Transform):
    """Convert a channel-first image [C, *spatial] to one channel [1, *spatial].

    Medical slices exported as JPEG/PNG are often grey stored as RGB, RGBA or LA (grey + alpha). Alpha is opacity,
    not intensity, so it is ignored: by default (``alpha=None``) a 2-channel image is taken as LA and a 4-channel
    image as RGBA, and their last channel is dropped before ``mode`` combines the colour channels (LA gives its grey
    channel whatever the mode). :func:`~monai_hqanogan.data.prepare_image_folder` stores images by the same rule, so
    training and inference see the same grey values.

    Args:
        mode: ``"mean"`` (average of the colour channels, default), ``"luminance"`` (BT.601 weights, RGB or RGBA
            only) or ``"first"`` (keep channel 0).
        alpha: whether the last channel is alpha and is ignored: None (default) for 2 and 4 channels (LA, RGBA),
            True for any image of 2 or more channels, False never (every channel is an intensity, e.g. a multi-echo
            volume stored as channels).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mode: str = "mean", alpha: bool | None = None) -> None:
        if mode not in ("mean", "luminance", "first"):
            raise ValueError(f"mode must be 'mean', 'luminance' or 'first', got {mode!r}.")
        if alpha not in (None, True, False):
            raise ValueError(f"alpha must be None, True or False, got {alpha!r}.")
        self.mode = mode
        self.alpha = alpha

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.ndim < 2:
            raise ValueError(f"ToSingleChannel expects a channel-first image [C, *spatial], got shape {img.shape}.")
        x, *_ = convert_data_type(img, torch.Tensor)
        if x.shape[0] == 1:
            return img
        if self.alpha or (self.alpha is None and x.shape[0] in (2, 4)):
            x = x[:-1]  # alpha: opacity, not intensity
        if self.mode == "first":
            out = x[:1]
        elif self.mode == "luminance" and x.shape[0] != 1:  # one channel left (LA): its grey, as for "mean"
            if x.shape[0] != 3:
                raise ValueError(f"mode='luminance' needs RGB or RGBA channels, got {x.shape[0]} colour channel(s).")
            w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=x.device).view(3, *([1] * (x.ndim - 1)))
            out = (x.float() * w).sum(dim=0, keepdim=True)
        else:
            out = x.float().mean(dim=0, keepdim=True)
        result, *_ = convert_to_dst_type(out, img)
        return result


def ensure_finite(
    x: torch.Tensor,
    name: str = "image",
    where: str = "",
    advice: str = "refusing to train on it. Check the data files and the intensity scaling.",
) -> torch.Tensor:
    """Raise a ValueError naming ``name`` (and ``where``) and the bad batch items if ``x`` holds NaN or inf; return
    ``x`` otherwise. ``advice`` ends the message."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        if x.ndim > 1:
            what = f"images {(~finite).flatten(1).any(dim=1).nonzero().flatten().tolist()} of the batch contain"
        else:
            what = f"values {(~finite).nonzero().flatten().tolist()} are"
        suffix = f" {where}" if where else ""
        raise ValueError(f"{name}{suffix}: {what} NaN or inf; {advice}")
    return x


def intensity_window(values: NdarrayOrTensor, upper_percentile: float = 99.5) -> tuple[float, float]:
    """The intensity range that :func:`~monai_hqanogan.transforms.gan_image_transforms` maps to [0, 1]: the
    minimum and the ``upper_percentile``; the maximum instead where that percentile equals the minimum (a few
    bright pixels on a constant background). ``lo == hi`` only for a constant input.

    Args:
        values: an image, a slice or a volume (any shape).
        upper_percentile: intensity percentile mapped to 1.
    """
    flat, *_ = convert_data_type(values, np.ndarray)
    flat = np.asarray(flat, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("intensity_window needs at least one value.")
    lo, hi = float(flat.min()), float(np.percentile(flat, upper_percentile))
    return (lo, hi) if hi > lo else (lo, float(flat.max()))


def is_background_slice(
    slice_2d: NdarrayOrTensor, window: tuple[float, float], min_foreground: float = 0.01, level: float = 12.5 / 255
) -> bool:
    """Whether a 2D slice of a volume holds (almost) nothing to learn from or score: constant, or fewer than
    ``min_foreground`` of its pixels at or above ``level`` of the volume's intensity ``window``. The rule that
    :func:`~monai_hqanogan.data.prepare_image_folder` uses to drop slices, so inference skips the slices that training
    never sees.

    Args:
        slice_2d: the slice (any shape).
        window: the volume's ``(lo, hi)`` from :func:`intensity_window`.
        min_foreground: the smallest fraction of foreground pixels of a kept slice.
        level: the foreground level, as a fraction of the window (grey level 13 of 255 after rounding by default).
    """
    x, *_ = convert_data_type(slice_2d, np.ndarray)
    x = np.asarray(x, dtype=np.float64)
    lo, hi = window
    if x.size == 0 or np.ptp(x) == 0 or hi <= lo:
        return True
    return float(((x - lo) / (hi - lo) >= level).mean()) < min_foreground
