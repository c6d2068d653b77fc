"""The bundle's inferer: run the detector on images of any size, 2D or 3D, slice by slice.

:class:`SliceAnomalyInferer` takes one image in its own geometry (a 2D image [C, H, W] or a 3D volume
[C, H, W, D]), brings every 2D slice to the model's square grid exactly as ``gan_image_transforms`` does for
training, runs :meth:`HQAnoGANDetector.detect`, and maps the anomaly map back onto the input grid, so that the
map written next to a NIfTI volume has the volume's shape and affine.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Resize, SpatialPad
from monai.utils import MetaKeys
from torch import nn

from monai_hqanogan.data.image_files import MAX_SLICE_PIXELS, check_image_shape, check_slice_axis
from monai_hqanogan.transforms.array import ToSingleChannel, ensure_finite, intensity_window, is_background_slice
from monai_hqanogan.utils.validation import check_resolution

__all__ = ["SliceAnomalyInferer"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MetaTensor's per-operation bookkeeping slows the networks down many times over)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _like_input(values: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``values`` (one channel on the input's spatial grid) as a MetaTensor carrying the input batch's meta data
    (affine, file names) for the image writers. The meta data say that the map has no channel dimension of its own
    (MONAI's ``original_channel_dim``): the input's says where its colour channels (RGB, RGBA, LA) or its 4th NIfTI
    dimension were, and MONAI's writers would look for them in the map and fail after the work is done."""
    if not isinstance(inputs, MetaTensor):
        return values
    meta = dict(inputs.meta)
    no_channel = float("nan")  # MONAI's "no_channel", as its readers store it (a string does not collate)
    meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = torch.full((values.shape[0],), no_channel) if inputs.is_batch else no_channel
    out = MetaTensor(values, meta=meta)
    out.is_batch = inputs.is_batch
    return out


def _batch_names(inputs: torch.Tensor) -> list[str]:
    """The file name of each item of a batch (from MetaTensor meta data), "" where unknown."""
    names = getattr(inputs, "meta", {}).get("filename_or_obj", "") if isinstance(inputs, MetaTensor) else ""
    names = list(names) if isinstance(names, (list, tuple)) else [names] * int(inputs.shape[0])
    return [str(n) for n in names] + [""] * (int(inputs.shape[0]) - len(names))


class SliceAnomalyInferer(Inferer):
    """Runs an :class:`HQAnoGANDetector` on images in their own geometry, slice by slice for volumes.

    Each 2D slice goes to the model grid by the rule of training (:func:`gan_image_transforms`), one rule for 2D
    images and the slices of 3D volumes: intensities scaled to [0, 1] by the slice's own minimum and
    ``upper_percentile`` (:func:`intensity_window`), the longest side resized to ``resolution`` keeping the aspect
    ratio, scaled to [-1, 1] and the short side padded with -1. The anomaly map is cropped back and resized to the
    slice's own size. Volume slices that preparation drops from training (constant, or fewer than
    ``min_foreground`` of their pixels above 5% of the volume's intensity window: :func:`is_background_slice`)
    are not scored, so near-empty end slices are not stretched into noise: their map is 0 and they are left out of
    the volume's score, which is the maximum slice score. Images holding NaN or inf, constant images, slices
    larger than ``max_slice_pixels`` and slices with a side the networks cannot use (under
    :data:`~monai_hqanogan.data.image_files.MIN_SIDE` pixels, in the image or at ``resolution``: see
    :func:`~monai_hqanogan.data.image_files.check_image_shape`) are refused with an error naming the file. Channels
    (RGB, or the 4th dimension of a NIfTI file) are averaged to one; the map has the input's spatial grid.

    Returns a dict per batch: ``pred`` (anomaly map on the input grid, a ``MetaTensor`` with the input's meta
    data), ``pred_label`` (uint8 map, 1 where the map reaches the calibrated pixel threshold), ``pred_score`` [B],
    ``pred_image_label`` [B], ``image_threshold`` and ``pixel_threshold`` [B], ``slice_scores`` [B, S] (NaN for
    skipped slices) and ``panel`` [B, 3, R, R]: model-grid input, pseudo-normal reconstruction and map of the
    highest-scoring slice.

    Args:
        resolution: the detector's input size.
        upper_percentile: intensity percentile mapped to 1 (as in :func:`gan_image_transforms`).
        slice_axis: spatial axis of 3D volumes along which 2D slices are taken (default the last).
        batch_size: slices per detector call.
        max_slice_pixels: the largest 2D image or volume slice accepted (memory stays bounded).
        min_foreground: a volume slice with a smaller fraction of foreground pixels is not scored.
    """

    def __init__(
        self,
        resolution: int,
        upper_percentile: float = 99.5,
        slice_axis: int = -1,
        batch_size: int = 32,
        max_slice_pixels: int = MAX_SLICE_PIXELS,
        min_foreground: float = 0.01,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.resolution, self.upper_percentile = resolution, upper_percentile
        self.slice_axis, self.batch_size = check_slice_axis(slice_axis), batch_size
        self.max_slice_pixels = max_slice_pixels
        if not 0.0 <= min_foreground < 1.0:
            raise ValueError(f"min_foreground must be in [0, 1), got {min_foreground}.")
        self.min_foreground = min_foreground
        self._resize = Resize(spatial_size=resolution, size_mode="longest", mode="bilinear", anti_aliasing=True)
        self._pad = SpatialPad((resolution, resolution), mode="constant", value=-1.0)

    # ------------------------------------------------------------------ geometry
    def to_model_grid(self, slice_2d: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """[1, H, W] slice -> [1, R, R] model input in [-1, 1] (intensities scaled by ``lo``/``hi``)."""
        x = ((slice_2d.float() - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
        x = _plain(self._resize(x)).clamp(0, 1) * 2 - 1
        return _plain(self._pad(x)).float()

    def _inner_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        scale = self.resolution / max(height, width)
        h, w = (max(1, int(round(s * scale))) for s in (height, width))
        top, left = (self.resolution - h) // 2, (self.resolution - w) // 2
        return top, left, h, w

    def from_model_grid(self, grid_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[N, 1, R, R] model-grid maps -> [N, 1, H, W] maps on the slice grid (crop the padding, resize)."""
        top, left, h, w = self._inner_box(height, width)
        inner = grid_map[..., top : top + h, left : left + w]
        if (h, w) == (height, width):
            return inner
        return F.interpolate(inner.float(), size=(height, width), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _detector(network: nn.Module) -> nn.Module:
        return network.module if hasattr(network, "module") and hasattr(network.module, "detect") else network

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        detector = self._detector(network)
        if not hasattr(detector, "detect"):
            raise TypeError(f"SliceAnomalyInferer needs an HQAnoGANDetector, got {type(detector).__name__}.")
        if inputs.ndim not in (4, 5):
            raise ValueError(
                f"expected a batch of 2D images [B, C, H, W] or volumes [B, C, H, W, D], got {tuple(inputs.shape)}."
            )
        names = _batch_names(inputs)
        records = [self._one(inputs[b], detector, names[b]) for b in range(inputs.shape[0])]
        maps = torch.stack([r["map"] for r in records])
        pixel_thr = float(detector.calibration.pixel_threshold)
        image_thr = float(detector.calibration.image_threshold)
        score = torch.tensor([r["score"] for r in records])
        batch = len(records)
        return {
            "pred": _like_input(maps, inputs),
            "pred_label": _like_input((maps >= pixel_thr).to(torch.uint8), inputs),
            "pred_score": score,
            "pred_image_label": (score >= image_thr).long(),
            "image_threshold": torch.full((batch,), image_thr),
            "pixel_threshold": torch.full((batch,), pixel_thr),
            "slice_scores": torch.stack([r["slice_scores"] for r in records]),
            "panel_slice": torch.tensor([r["panel_slice"] for r in records]),
            "panel": torch.stack([r["panel"] for r in records]),
        }

    def _one(self, image: torch.Tensor, detector: nn.Module, name: str = "") -> dict[str, Any]:
        """One image [C, H, W] or volume [C, H, W, D] -> its map on the input grid and its scores."""
        image = _plain(image)
        what = f"image {name!r}" if name else "image"
        volume = image.ndim == 4
        spatial = list(image.shape[1:])
        axis = self.slice_axis % 3 + 1 if volume else 0
        if 0 not in spatial:  # no 2D slice: named below
            check_image_shape(
                spatial,
                what,
                int(image.shape[0]),
                slice_axis=self.slice_axis,
                resolution=self.resolution,
                max_slice_pixels=self.max_slice_pixels,
                max_volume_voxels=None,  # loaded already: list_inference_inputs checks it from the header
            )
        if volume:
            del spatial[axis - 1]
        ensure_finite(image, what, advice="fix the file or replace them before inference.")
        grey = torch.as_tensor(ToSingleChannel()(image.float()))  # one channel, as in training (alpha dropped)
        if volume:
            slices = grey.movedim(axis, 1)[0].unsqueeze(1)  # [S, 1, H', W']
        else:
            slices = grey.unsqueeze(0)  # [1, 1, H, W]
        num, (height, width) = slices.shape[0], slices.shape[-2:]
        if num == 0 or height == 0 or width == 0:
            raise ValueError(f"{what} of shape {tuple(image.shape)} has no 2D slice to score.")
        ranges = [intensity_window(s.detach().cpu(), self.upper_percentile) for s in slices]
        if volume:
            window = intensity_window(grey.detach().cpu(), self.upper_percentile)
            valid = [not is_background_slice(s.detach().cpu(), window, self.min_foreground) for s in slices]
        else:
            valid = [ranges[0][1] > ranges[0][0]]
        if not any(valid):
            why = "has only constant or near-empty slices" if volume else "is constant"
            raise ValueError(f"{what} of shape {tuple(image.shape)} {why}: there is nothing to score.")
        device = next(detector.parameters()).device
        maps = torch.zeros(num, 1, height, width)
        scores = torch.full((num,), float("nan"))
        best: tuple[float, int, torch.Tensor] = (-math.inf, -1, torch.zeros(0))
        index = [i for i in range(num) if valid[i]]
        for start in range(0, len(index), self.batch_size):
            chunk = index[start : start + self.batch_size]
            grid = torch.stack([self.to_model_grid(slices[i], *ranges[i]) for i in chunk]).to(device)
            record = detector.detect(grid)
            grid_maps = record["anomaly_map"].float().cpu()
            maps[chunk] = self.from_model_grid(grid_maps, height, width)
            chunk_scores = record["pred_score"].float().cpu()
            scores[chunk] = chunk_scores
            top = int(chunk_scores.argmax())
            if float(chunk_scores[top]) > best[0]:
                rec = record["reconstruction"][top, :1].float().cpu()
                panel = torch.cat([grid[top, :1].cpu(), rec, grid_maps[top]])
                best = (float(chunk_scores[top]), chunk[top], panel)
        amap = maps[:, 0]  # [S, H, W]
        if volume:
            amap = amap.unsqueeze(0).movedim(1, axis)  # back to [1, H, W, D] with slices on their axis
        return {"map": amap, "score": best[0], "slice_scores": scores, "panel_slice": best[1], "panel": best[2]}
