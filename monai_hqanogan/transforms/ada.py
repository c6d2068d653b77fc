"""Adaptive discriminator augmentation (ADA) for grey-scale and multi-channel medical images.

Karras et al., "Training Generative Adversarial Networks with Limited Data", NeurIPS 2020,
https://arxiv.org/abs/2006.06676. Written from the paper.

Every image D sees, real or generated, goes through the same differentiable, randomly parameterised
augmentation; each operation is applied to each image with probability ``p``. The flips then draw their
parameter uniformly from {0, 1} (and ``rotate90`` from {0, 1, 2, 3}), as in the paper's Appendix B, so an
image is flipped with probability ``p / 2``: an augmented distribution that still tells the flipped image from
the original ("non-leaking") up to ``p`` near 1, and G learns the un-augmented distribution. The controller
adjusts ``p`` so that the overfitting heuristic ``r_t = E[sign(D(real))]`` tracks a target (0.6).

Differences from the paper, on purpose: geometric operations are composed into one affine matrix and applied
with bilinear ``grid_sample`` and reflection padding (the paper up-samples with a wavelet filter first), so
the output stays inside the input's value range; the colour operations are those that make sense for any
channel count: brightness, contrast and luma flip (for one grey channel the luma axis is the channel itself, so
a luma flip is ``x -> -x`` around the middle of ``value_range``: an inverted slice, which D learns to expect
only as often as G's images are flipped); no hue or saturation, which assume RGB. As in the paper nothing is
clamped by default (``clamp``), so D sees the images G makes as they are, at every ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveAugmentPipe", "AdaptiveAugmentController", "ADA_MODES", "GEOMETRIC_OPS", "INTENSITY_OPS"]

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
INTENSITY_OPS = ("brightness", "contrast", "lumaflip")
ADA_MODES = ("adaptive", "fixed", "off")


def _matrix(rows: Sequence[Sequence[Any]], batch: int, device: torch.device) -> torch.Tensor:
    """Build a [batch, 3, 3] matrix from rows whose entries are scalars or [batch] tensors."""
    entries = [torch.as_tensor(v, dtype=torch.float32, device=device).expand(batch) for row in rows for v in row]
    return torch.stack(entries, dim=1).reshape(batch, 3, 3)


def _translate(tx: Any, ty: Any, b: int, dev: torch.device) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], b, dev)


def _scale(sx: Any, sy: Any, b: int, dev: torch.device) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], b, dev)


def _rotate(theta: torch.Tensor, b: int, dev: torch.device) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], b, dev)


class AdaptiveAugmentPipe(nn.Module):
    """Differentiable ADA augmentation ``[B, C, H, W] -> [B, C, H, W]`` with application probability ``p``.

    Each multiplier scales the probability of its operation (0 disables it). Geometric operations work in
    pixel units around the image centre; intensity operations assume images scaled to ``value_range``.

    Args:
        p: initial probability (a buffer: saved and restored with the state dict).
        xflip: multiplier for horizontal flips (a chosen image is flipped with probability 1/2).
        rotate90: multiplier for rotations by multiples of 90 degrees.
        xint: multiplier for integer translations of up to ``xint_max`` of the image size.
        scale: multiplier for isotropic scaling by ``2 ** N(0, scale_std)``.
        rotate: multiplier for arbitrary rotations (applied twice, before and after anisotropic scaling, each
            with probability ``1 - sqrt(1 - p)``), uniform within ``rotate_max`` half-turns.
        aniso: multiplier for anisotropic scaling by ``2 ** N(0, aniso_std)`` along x and its inverse along y.
        xfrac: multiplier for fractional translations by ``N(0, xfrac_std)`` of the image size.
        brightness: multiplier for adding ``N(0, brightness_std)``.
        contrast: multiplier for scaling by ``2 ** N(0, contrast_std)`` around the middle of ``value_range``.
        lumaflip: multiplier for luma flips (a chosen image is flipped with probability 1/2): the component along
            the luma axis (the channel mean, centred on the middle of ``value_range``) changes sign; for one
            channel ``x -> 2 * mid - x``.
        value_range: the data range; contrast and luma flip work around its middle (None: 0).
        clamp: clamp every output to ``value_range``, whatever ``p`` (even 0), so that D's input range does not
            change when ADA starts; off by default, as in the paper (G gets gradient at every pixel).
    """

    def __init__(
        self,
        p: float = 0.0,
        xflip: float = 1.0,
        rotate90: float = 1.0,
        xint: float = 1.0,
        scale: float = 1.0,
        rotate: float = 1.0,
        aniso: float = 1.0,
        xfrac: float = 1.0,
        brightness: float = 1.0,
        contrast: float = 1.0,
        lumaflip: float = 1.0,
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1.0,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        value_range: tuple[float, float] | None = (-1.0, 1.0),
        clamp: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}.")
        self.register_buffer("p", torch.tensor(float(p)))
        self.multipliers = {
            "xflip": xflip, "rotate90": rotate90, "xint": xint, "scale": scale, "rotate": rotate, "aniso": aniso,
            "xfrac": xfrac, "brightness": brightness, "contrast": contrast, "lumaflip": lumaflip,
        }  # fmt: skip
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        if clamp and self.value_range is None:
            raise ValueError("clamp=True needs a value_range to clamp to.")
        self.clamp = bool(clamp)

    def _chosen(self, name: str, batch: int, device: torch.device, p: float) -> torch.Tensor:
        """Boolean [batch]: which images get operation ``name``."""
        return torch.rand(batch, device=device) < p * self.multipliers[name]

    def _flipped(self, name: str, batch: int, device: torch.device, p: float) -> torch.Tensor:
        """Boolean [batch]: which images a flip ``name`` changes (chosen with ``p``, then a fair coin: ``p / 2``)."""
        return self._chosen(name, batch, device, p) & (torch.rand(batch, device=device) < 0.5)

    def _geometric_matrix(self, b: int, h: int, w: int, dev: torch.device, p: float) -> torch.Tensor | None:
        """The per-image 3x3 matrix mapping output pixel coordinates (centred) to input coordinates, or None."""
        m = self.multipliers
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        g = eye
        used = False

        def apply(op: str, mat: torch.Tensor, chosen: torch.Tensor) -> None:
            nonlocal g, used
            used = True
            g = g @ torch.where(chosen[:, None, None], mat, eye)

        if m["xflip"] > 0:
            apply("xflip", _scale(-1.0, 1.0, b, dev), self._flipped("xflip", b, dev, p))
        if m["rotate90"] > 0:
            k = torch.randint(0, 4, (b,), device=dev).float()
            apply("rotate90", _rotate(k * (math.pi / 2), b, dev), self._chosen("rotate90", b, dev, p))
        if m["xint"] > 0:
            t = (torch.rand(2, b, device=dev) * 2 - 1) * self.xint_max
            mat = _translate(torch.round(t[0] * w), torch.round(t[1] * h), b, dev)
            apply("xint", mat, self._chosen("xint", b, dev, p))
        if m["scale"] > 0:
            s = torch.exp2(torch.randn(b, device=dev) * self.scale_std)
            apply("scale", _scale(s, s, b, dev), self._chosen("scale", b, dev, p))
        p_rot = 1 - math.sqrt(max(0.0, 1 - min(1.0, p * m["rotate"])))
        if m["rotate"] > 0:
            theta = (torch.rand(b, device=dev) * 2 - 1) * math.pi * self.rotate_max
            apply("rotate", _rotate(theta, b, dev), torch.rand(b, device=dev) < p_rot)
        if m["aniso"] > 0:
            s = torch.exp2(torch.randn(b, device=dev) * self.aniso_std)
            apply("aniso", _scale(s, 1 / s, b, dev), self._chosen("aniso", b, dev, p))
        if m["rotate"] > 0:
            theta = (torch.rand(b, device=dev) * 2 - 1) * math.pi * self.rotate_max
            apply("rotate", _rotate(theta, b, dev), torch.rand(b, device=dev) < p_rot)
        if m["xfrac"] > 0:
            t = torch.randn(2, b, device=dev) * self.xfrac_std
            apply("xfrac", _translate(t[0] * w, t[1] * h, b, dev), self._chosen("xfrac", b, dev, p))
        return g if used else None

    def forward(self, images: torch.Tensor, p: float | None = None) -> torch.Tensor:
        """Augment ``images`` [B, C, H, W]; ``p`` overrides the stored probability for this call."""
        if images.ndim != 4:
            raise ValueError(f"AdaptiveAugmentPipe expects [batch, channels, H, W], got shape {tuple(images.shape)}.")
        p = float(self.p) if p is None else float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}.")
        if p == 0.0:
            return images.clamp(*self.value_range) if self.clamp else images
        b, _, h, w = images.shape
        dev = images.device
        x = images
        g = self._geometric_matrix(b, h, w, dev, p)
        if g is not None:
            # centred pixel coordinates -> normalised coordinates of grid_sample (align_corners=False)
            to_norm = _scale(2.0 / w, 2.0 / h, b, dev)
            from_norm = _scale(w / 2.0, h / 2.0, b, dev)
            theta = (to_norm @ g @ from_norm)[:, :2, :]
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
        mid = 0.0 if self.value_range is None else sum(self.value_range) / 2
        if self.multipliers["brightness"] > 0:
            shift = torch.randn(b, device=dev) * self.brightness_std
            shift = torch.where(self._chosen("brightness", b, dev, p), shift, torch.zeros_like(shift))
            x = x + shift.to(x.dtype)[:, None, None, None]
        if self.multipliers["contrast"] > 0:
            factor = torch.exp2(torch.randn(b, device=dev) * self.contrast_std)
            factor = torch.where(self._chosen("contrast", b, dev, p), factor, torch.ones_like(factor))
            x = (x - mid) * factor.to(x.dtype)[:, None, None, None] + mid
        if self.multipliers["lumaflip"] > 0:
            # reflect across the plane orthogonal to the luma axis (1, ..., 1) / sqrt(C): subtract twice the centred
            # channel mean; one channel: x -> 2 * mid - x
            flip = self._flipped("lumaflip", b, dev, p).to(x.dtype)[:, None, None, None]
            x = x - 2 * flip * (x.mean(dim=1, keepdim=True) - mid)
        if self.clamp:
            x = x.clamp(*self.value_range)
        return x

    def extra_repr(self) -> str:
        on = [k for k, v in self.multipliers.items() if v > 0]
        return f"p={float(self.p):.4f}, ops={on}, clamp={self.clamp}"


class AdaptiveAugmentController:
    """Adjusts ``pipe.p`` so that ``r_t = E[sign(D(real))]`` tracks ``target``.

    Every ``interval`` discriminator steps, ``p`` moves by ``sign(r_t - target) * images / (speed_kimg * 1000)``
    where ``images`` is the number of real images seen since the last adjustment: ``p`` can go from 0 to 1 in
    ``speed_kimg`` thousand images. ``p`` is kept in [0, 1].

    When training data-parallel, the sign sum and the image count of every discriminator step are summed over the
    ranks as they are accumulated, so ``r_t``, the statistics and ``p`` are the same on every rank (and in rank
    0's checkpoint) and ``images`` counts the global batch.

    Args:
        pipe: the augmentation pipeline whose ``p`` is controlled.
        mode: ``"adaptive"`` (the above), ``"fixed"`` (``p`` stays as set on the pipe) or ``"off"`` (``p`` = 0).
        target: target value of ``r_t`` (0.6).
        interval: discriminator steps between adjustments (4).
        speed_kimg: thousands of images for ``p`` to move from 0 to 1 (500).
        distributed: sum the statistics over the ranks of the ``torch.distributed`` process group (a collective in
            every :meth:`accumulate`, so all ranks must call it alike). None: when one is initialised with more
            than one rank.
    """

    def __init__(
        self,
        pipe: AdaptiveAugmentPipe,
        mode: str = "adaptive",
        target: float = 0.6,
        interval: int = 4,
        speed_kimg: float = 500.0,
        distributed: bool | None = None,
    ) -> None:
        if mode not in ADA_MODES:
            raise ValueError(f"ADA mode must be one of {ADA_MODES}, got {mode!r}.")
        if interval < 1 or speed_kimg <= 0:
            raise ValueError(f"interval must be >= 1 and speed_kimg > 0, got {interval} and {speed_kimg}.")
        self.pipe, self.mode, self.target = pipe, mode, target
        self.interval, self.speed_kimg = interval, speed_kimg
        self.distributed = distributed
        if mode == "off":
            pipe.p.fill_(0.0)
        self.reset_statistics()
        self.rt: float | None = None  # last measured r_t

    def reset_statistics(self) -> None:
        self.sign_sum, self.count, self.steps = 0.0, 0, 0

    @property
    def p(self) -> float:
        return float(self.pipe.p)

    def _reduce_over_ranks(self) -> bool:
        if self.distributed is False or not (dist.is_available() and dist.is_initialized()):
            return False
        return bool(self.distributed) or dist.get_world_size() > 1

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Record the signs of D's logits for a batch of real images (one discriminator step); summed over the
        ranks when distributed."""
        logits = real_logits.detach().float()
        if self._reduce_over_ranks():
            device = logits.device if "gloo" not in str(dist.get_backend()) else torch.device("cpu")
            stats = torch.stack([torch.sign(logits).sum(), torch.tensor(float(logits.numel()), device=logits.device)])
            stats = stats.to(device, torch.float64)
            dist.all_reduce(stats)
            self.sign_sum += float(stats[0])
            self.count += int(round(float(stats[1])))
        else:
            self.sign_sum += float(torch.sign(logits).sum())
            self.count += real_logits.numel()
        self.steps += 1

    def step(self) -> bool:
        """Adjust ``p`` if ``interval`` steps were accumulated; return True when an adjustment happened."""
        if self.steps < self.interval or self.count == 0:
            return False
        self.rt = self.sign_sum / self.count
        if self.mode == "adaptive":
            sign = (self.rt > self.target) - (self.rt < self.target)  # 0 when exactly on target
            delta = sign * self.count / (self.speed_kimg * 1000)
            self.pipe.p.fill_(min(1.0, max(0.0, self.p + delta)))
        self.reset_statistics()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "sign_sum": self.sign_sum,
            "count": self.count,
            "steps": self.steps,
            "rt": self.rt,
            "mode": self.mode,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``p`` and the statistics; ``mode`` stays as constructed (a resumed run may change it)."""
        self.pipe.p.fill_(float(state["p"]))
        self.sign_sum, self.count, self.steps = float(state["sign_sum"]), int(state["count"]), int(state["steps"])
        self.rt = state.get("rt")
