"""Argument checks shared by the networks, transforms, engines, workflows and baselines.

They live here, below every other package, so that a transform or a workflow can check a resolution or an image
batch without importing a network module. This module imports only the standard library and torch.

Each check raises a ValueError that names the argument and says what it must be, before any work starts.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

__all__ = [
    "MIN_RESOLUTION",
    "MAX_RESOLUTION",
    "check_resolution",
    "check_image_batch",
    "as_bool",
    "check_positive_int",
    "check_positive_number",
    "check_time_limit",
]

#: the smallest and largest model resolution (image side, in pixels) the networks are built for
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


def check_resolution(resolution: int) -> int:
    """Return ``log2(resolution)``; raise a ValueError naming the value unless it is a power of two in [8, 1024].

    Args:
        resolution: the model resolution, an int or a NumPy integer (a bool or a float is refused).

    Raises:
        ValueError: ``resolution`` is not a power of two between :data:`MIN_RESOLUTION` and :data:`MAX_RESOLUTION`.
    """
    try:
        value = None if isinstance(resolution, bool) else operator.index(resolution)  # ints and NumPy integers
    except TypeError:
        value = None
    if value is None or value < MIN_RESOLUTION or value > MAX_RESOLUTION or value & (value - 1):
        raise ValueError(
            f"resolution must be a power of two between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {resolution!r}. "
            "Resize (and pad non-square images to a square) in the data pipeline, e.g. with "
            "monai_hqanogan.transforms.gan_image_transforms."
        )
    return int(math.log2(value))


def check_image_batch(x: torch.Tensor, img_channels: int, resolution: int, owner: str) -> None:
    """Raise a ValueError naming ``owner`` and the expected shape unless ``x`` is a [B, C, R, R] tensor.

    Args:
        x: the batch to check.
        img_channels: the required channel count C.
        resolution: the required height and width R.
        owner: who expects the batch (a class name), for the error message.

    Raises:
        ValueError: ``x`` is not a tensor of shape [B, ``img_channels``, ``resolution``, ``resolution``].
    """
    expected = (img_channels, resolution, resolution)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{owner} expects images of shape [batch, {img_channels}, {resolution}, {resolution}] in [-1, 1], got "
            f"{shape}. Convert to {img_channels} channel(s) and resize/pad to a square with "
            f"monai_hqanogan.transforms.gan_image_transforms({resolution}), which never crops."
        )


def as_bool(value: Any, name: str | None = "value") -> bool | None:
    """``value`` as a bool: a bool, or the strings ``"true"``/``"false"`` (any case), which is what a JSON ``true``
    in ``--settings '{...}'`` becomes through MONAI's command line (it parses Python literals, so ``false`` stays a
    string, and a non-empty string is truthy).

    Args:
        value: the value to read.
        name: the argument's name, for the error message; None: return None for a value that is not a bool.

    Raises:
        ValueError: ``value`` is neither a bool nor ``"true"``/``"false"``, and ``name`` is not None.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if name is None:
        return None
    raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__}).")


def check_positive_int(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a Python int >= 1 (a bool is refused).

    Args:
        name: the argument's name, for the error message.
        value: the value to check.

    Raises:
        ValueError: ``value`` is not an int, is a bool, or is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_positive_number(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite real number > 0 (a bool is refused).

    Args:
        name: the argument's name, for the error message.
        value: the value to check (an int, a float or a NumPy scalar).

    Raises:
        ValueError: ``value`` is not a real number, is a bool, is NaN or infinite, or is not above 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def check_time_limit(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is None (no limit) or a number of seconds > 0.

    Args:
        name: the argument's name, for the error message (e.g. ``"time_limit_s"``).
        value: the wall-clock limit in seconds, or None.

    Raises:
        ValueError: ``value`` is not None and not above 0.
    """
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be None or > 0, got {value!r}.")
