"""The common interface of the reference (non-GAN) anomaly detectors, and the input handling they share.

Every result of HQ-AnoGAN is reported next to trivial and classical detectors, so that a shortcut (for example the
mean intensity of the image) or a plain autoencoder is never mistaken for what the GAN learnt (DESIGN.md, section 7).
They all see the same preprocessed images as HQ-AnoGAN: ``[N, C, R, R]`` tensors in [-1, 1].
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["ReferenceBaseline", "ImageBatches", "as_image_batch", "iterate_image_batches", "FitClock", "FitStage"]

#: what ``fit``/``score``/``anomaly_map`` accept: one tensor [N, C, R, R], or an iterable (e.g. a DataLoader) of
#: batches, each a tensor, a dict with an ``"image"`` entry, or a tuple/list whose first item holds the images
ImageBatches = Union[torch.Tensor, Iterable[Any]]


def _plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI's MetaTensor would carry its metadata into buffers and state dicts)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _batch_images(batch: Any, image_key: str, index: int) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if image_key not in batch:
            raise ValueError(f"batch {index} is a dict without the key {image_key!r} (keys: {sorted(batch)}).")
        images = batch[image_key]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) > 0:
        images = batch[0]  # (images, labels, ...) as a TensorDataset yields them
    else:
        images = batch
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"batch {index} holds a {type(images).__name__}; expected a tensor [B, C, R, R], a dict with "
            f"{image_key!r}, or a tuple whose first item is the images."
        )
    return images


def as_image_batch(
    images: torch.Tensor, what: str = "images", channels: int | None = None, size: int | None = None
) -> torch.Tensor:
    """Convert a batch of square images [B, C, R, R] with finite values to a plain float tensor, checking it first.

    Unlike :func:`monai_hqanogan.utils.check_image_batch` (which only raises), this returns the batch: a MONAI
    MetaTensor becomes a plain tensor and integer images become float.

    Args:
        images: the batch.
        what: how the batch is called in error messages.
        channels: the required channel count (None: any).
        size: the required height and width (None: any, but square).

    Raises:
        ValueError: wrong number of dimensions, an empty batch, non-square images, a channel count or size other
            than the required one, or NaN/inf values.
    """
    images = _plain_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"{what} must be a batch of images [N, C, R, R], got shape {tuple(images.shape)}.")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError(f"{what} is empty (shape {tuple(images.shape)}).")
    if h != w:
        raise ValueError(f"{what} must be square [N, C, R, R], got {h} x {w} pixels.")
    if channels is not None and c != channels:
        raise ValueError(f"{what} have {c} channel(s), the baseline was built or fitted for {channels}.")
    if size is not None and h != size:
        raise ValueError(f"{what} are {h} x {w} pixels, the baseline was built or fitted for {size} x {size}.")
    if not images.is_floating_point():
        images = images.float()
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(f"{what} contain {bad} NaN or inf value(s).")
    return images


def iterate_image_batches(
    images: ImageBatches,
    batch_size: int = 256,
    image_key: str = "image",
    what: str = "images",
    channels: int | None = None,
    size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield checked batches [B, C, R, R] from a tensor (split into ``batch_size`` chunks) or an iterable of batches.

    Every batch goes through :func:`as_image_batch`; batches after the first must match its channels and size.

    Raises:
        ValueError: as :func:`as_image_batch`, or when the input holds no batch at all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(images, torch.Tensor):
        images = as_image_batch(images, what, channels, size)
        yield from images.split(batch_size)
        return
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"{what} must be a tensor [N, C, R, R] or an iterable of batches, got {type(images).__name__}.")
    count = 0
    for i, batch in enumerate(images):
        checked = as_image_batch(_batch_images(batch, image_key, i), f"{what} (batch {i})", channels, size)
        channels, size = checked.shape[1], checked.shape[2]
        count += 1
        yield checked
    if count == 0:
        raise ValueError(f"{what} yielded no batch (an empty data set, or a one-shot iterator already used up).")


class FitStage:
    """One stage of a baseline's fit (e.g. f-AnoGAN's WGAN-GP): its progress bar, history, deadline and stop reason.

    Made by :meth:`FitClock.stage` and used as a context manager (the bar closes on exit, also on an error). The
    stage's loss code calls :meth:`check_finite` before each optimiser step, :meth:`step` after it and stops when
    :meth:`out_of_time` says so; what stopped it is ``stopped_by`` (``done_reason`` or ``"time_limit"``).

    Args:
        desc: the progress bar's label.
        total: the planned number of steps (None: unknown).
        unit: the bar's unit (``"step"``, ``"it"``).
        deadline: a ``time.perf_counter()`` value after which the stage stops (None: no deadline).
        hint: appended to the divergence error, e.g. which learning rate to lower.
        done_reason: ``stopped_by`` when the stage runs its planned steps (``"epochs"``, ``"iterations"``).
        progress: show the bar.
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str,
        deadline: float | None,
        hint: str,
        done_reason: str,
        progress: bool,
    ) -> None:
        self.deadline, self.hint, self.stopped_by = deadline, hint, done_reason
        self.history: list[dict[str, Any]] = []
        self.steps = 0
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False)

    def __enter__(self) -> FitStage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()

    def check_finite(self, loss: torch.Tensor, what: str, where: str) -> None:
        """Raise ``FloatingPointError`` naming ``what`` and ``where`` when ``loss`` is NaN or inf (diverged)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {what} became {loss.item()} at {where}: training diverged. {self.hint}")

    def step(self, record: Mapping[str, Any] | None = None, **postfix: Any) -> None:
        """Count one optimiser step, append ``record`` to the history, show ``postfix`` on the bar every 10 steps."""
        self.steps += 1
        if record is not None:
            self.history.append(dict(record))
        self._bar.update(1)
        if postfix and self.steps % 10 == 1:
            self._bar.set_postfix(**postfix)

    def out_of_time(self, finished: bool = False) -> bool:
        """True (and ``stopped_by = "time_limit"``) when the deadline has passed and work remains (not ``finished``):
        the stage stops after the first step that ends past its deadline."""
        if finished or self.deadline is None or time.perf_counter() < self.deadline:
            return False
        self.stopped_by = "time_limit"
        return True


class FitClock:
    """The clock of one baseline fit: when it started, the deadlines of its stages, and :class:`FitStage` s.

    Every network baseline's ``fit`` shares this bookkeeping (the deadline, the progress bar, the finite-loss check,
    the history and the common ``fit_info`` entries), so its own loop holds only its loss code.

    Args:
        name: the baseline's name, used in the bars' labels.
        time_limit_s: the fit's wall-clock budget in seconds (None: no limit).
        progress: show the stages' progress bars.
    """

    def __init__(self, name: str, time_limit_s: float | None, progress: bool) -> None:
        self.name, self.time_limit_s, self.progress = name, time_limit_s, progress
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds since the fit started."""
        return time.perf_counter() - self.start

    def deadline(self, fraction: float = 1.0) -> float | None:
        """The ``perf_counter`` time at ``fraction`` of the budget from the start (None without a budget)."""
        return None if self.time_limit_s is None else self.start + fraction * self.time_limit_s

    def stage(
        self,
        label: str,
        total: int | None,
        unit: str = "step",
        deadline: float | None = None,
        hint: str = "",
        done_reason: str = "iterations",
    ) -> FitStage:
        """A :class:`FitStage` with the bar ``"<name> <label>"``."""
        return FitStage(f"{self.name} {label}", total, unit, deadline, hint, done_reason, self.progress)

    def info(self, device: torch.device, seed: int, seconds: float | None = None, **entries: Any) -> dict[str, Any]:
        """``fit_info``: the baseline's ``entries`` followed by ``seconds`` (None: now, from the start), ``device``
        and ``seed``. Pass ``seconds`` when an entry was derived from the same reading of the clock."""
        return {**entries, "seconds": self.seconds if seconds is None else seconds, "device": str(device), "seed": seed}


class ReferenceBaseline(nn.Module):
    """Base class of the reference anomaly detectors: ``fit`` on normal images, then ``score`` any images.

    Subclasses implement :meth:`fit` and :meth:`score` and, when they localise, :meth:`anomaly_map`. They are
    ``nn.Module`` s whose fitted state lives in parameters and buffers, so ``torch.save(model.state_dict())`` and
    ``model.load_state_dict(torch.load(path, weights_only=True))`` round-trip them. Buffers whose size depends on
    the fitted data are listed in ``_data_sized_buffers``: loading a state dict resizes them first, so a freshly
    built (unfitted) baseline can load a fitted one's state.

    Conventions: images are ``[N, C, R, R]`` in [-1, 1]; scores are ``[N]`` float tensors on the CPU, higher = more
    anomalous; anomaly maps are ``[N, 1, R, R]`` on the CPU, or None for a detector without a map.

    Attributes:
        name: a short human-readable name for reports and figure legends.
    """

    name: str = "reference baseline"
    _data_sized_buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() on normal images first.")

    def fit(self, images: ImageBatches, **kwargs: Any) -> ReferenceBaseline:
        """Fit on normal images only (a tensor [N, C, R, R] or an iterable of batches); returns self."""
        raise NotImplementedError

    def score(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor:
        """Image anomaly scores ``[N]`` (higher = more anomalous)."""
        raise NotImplementedError

    def anomaly_map(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor | None:
        """Per-pixel anomaly maps ``[N, 1, R, R]``, or None when the detector does not localise."""
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`score`, for one batch."""
        return self.score(images)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fitted={self.is_fitted}"

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self._data_sized_buffers:
            key = prefix + name
            if key in state_dict and isinstance(state_dict[key], torch.Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[key], dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class ReconstructionBaseline(ReferenceBaseline):
    """Base of the network baselines that score by reconstructing the input (autoencoder, f-AnoGAN): the batching,
    the reconstruction and residual map, and seeded re-initialisation they share.

    Subclasses set ``in_channels`` and ``image_size``, implement :meth:`reconstruct_batch` (one batch on the
    model's device, eval mode) and own at least one parameter (its device is where they compute).
    """

    in_channels: int
    image_size: int

    def reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of one batch ``x`` on the model's device."""
        raise NotImplementedError

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _batches(self, images: ImageBatches, batch_size: int) -> Iterator[torch.Tensor]:
        return iterate_image_batches(images, batch_size, what="images", channels=self.in_channels, size=self.image_size)

    def _eval_batches(self, images: ImageBatches, batch_size: int) -> Iterator[torch.Tensor]:
        """Checked float32 batches on the model's device, the model fitted and in eval mode."""
        self._check_fitted()
        self.eval()
        device = self._device()
        return (b.to(device, torch.float32) for b in self._batches(images, batch_size))

    @torch.no_grad()
    def reconstruct(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor:
        """Reconstructions of the images (eval mode), ``[N, C, R, R]`` on the CPU."""
        return torch.cat([self.reconstruct_batch(x).cpu() for x in self._eval_batches(images, batch_size)])

    @torch.no_grad()
    def anomaly_map(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor:
        """Absolute reconstruction error per pixel, mean over channels, ``[N, 1, R, R]`` on the CPU."""
        return torch.cat([
            (x - self.reconstruct_batch(x)).abs().mean(dim=1, keepdim=True).cpu()
            for x in self._eval_batches(images, batch_size)
        ])  # fmt: skip

    def _start_fit(
        self, images: ImageBatches, device: str | torch.device | None, seed: int
    ) -> tuple[ImageBatches, torch.device]:
        """The first steps of every fit: check a tensor input (at least 2 images of the model's channels and size),
        mark the model unfitted, re-initialise its weights from ``seed`` on the CPU (the same weights whatever the
        device) and move it to ``device`` (None: where it is). Returns the checked images and the device."""
        if isinstance(images, torch.Tensor):
            images = as_image_batch(images, "images", channels=self.in_channels, size=self.image_size)
            if images.shape[0] < 2:
                raise ValueError(f"fit needs at least 2 images, got {images.shape[0]}.")
        device = torch.device(device) if device is not None else self._device()
        self.fitted.fill_(False)
        self.cpu()
        self.reset_parameters(seed)
        self.to(device)
        return images, device

    def reset_parameters(self, seed: int = 0) -> None:
        """Re-initialise all weights and BatchNorm statistics from ``seed`` (the global RNG state is kept)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
