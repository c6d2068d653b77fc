"""Inference pieces of the bundles: run the detector on images of any size, 2D or 3D, and write what it finds.

:class:`SliceAnomalyInferer` takes one image in its own geometry (a 2D image [C, H, W] or a 3D volume
[C, H, W, D]), brings every 2D slice to the model's square grid exactly as ``gan_image_transforms`` does for
training, runs :meth:`HQAnoGANDetector.detect`, and maps the anomaly map back onto the input grid, so that the
map written next to a NIfTI volume has the volume's shape and affine.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, Resize, SpatialPad
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_hqanogan.networks.nets.stylegan2 import check_resolution
from monai_hqanogan.transforms.array import ensure_finite, intensity_window, is_background_slice
from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.workflows.checks import IMAGE_SUFFIXES, MAX_SLICE_PIXELS, datalist_items, verify_image_file

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "IMAGE_SUFFIXES",
    "SliceAnomalyInferer",
    "FlattenAnomalyRecordd",
    "AnomalyScoreSaver",
    "AnomalyPanelSaver",
    "list_inference_inputs",
]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MetaTensor's per-operation bookkeeping slows the networks down many times over)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _like_input(values: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``values`` as a MetaTensor carrying the input batch's meta data (affine, file names) for the image writers."""
    if not isinstance(inputs, MetaTensor):
        return values
    out = MetaTensor(values, meta=dict(inputs.meta))
    out.is_batch = inputs.is_batch
    return out


def _batch_names(inputs: torch.Tensor) -> list[str]:
    """The file name of each item of a batch (from MetaTensor meta data), "" where unknown."""
    names = getattr(inputs, "meta", {}).get("filename_or_obj", "") if isinstance(inputs, MetaTensor) else ""
    names = list(names) if isinstance(names, (list, tuple)) else [names] * int(inputs.shape[0])
    return [str(n) for n in names] + [""] * (int(inputs.shape[0]) - len(names))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def list_inference_inputs(
    path: str | os.PathLike, datalist_key: str = "test", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The data dictionaries to run inference on, from a file, a folder or a datalist, checked before any work.

    Args:
        path: an image file; a folder of images (PNG, JPEG, NIfTI, ...; a sub-folder of ``.dcm`` files is one DICOM
            series; other files and hidden files are ignored); or a MONAI datalist JSON file (``datalist_key`` is
            read, paths relative to ``base_dir`` or to the JSON's folder). 2D images and 3D volumes may be mixed.
        datalist_key: the list to read from a datalist JSON.
        base_dir: base folder of the datalist's relative paths (default: the JSON's folder).

    Raises:
        FileNotFoundError: when ``path`` or a listed file does not exist.
        ValueError: when a folder holds no image, a datalist is not JSON or has no ``datalist_key``, or a file is
            empty, truncated, not an image, too large (:data:`MAX_SLICE_PIXELS`) or has a dimension of size 0.
        ImportError: for DICOM without pydicom.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"inference input {str(path)!r} does not exist; give an image, a folder or a datalist.")
    if path.is_file() and _suffix(path) == ".json":
        items = datalist_items(path, datalist_key, base_dir=base_dir)
    elif path.is_file():
        items = [{"image": str(path)}]
    else:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        files = [p for p in entries if p.is_file() and _suffix(p) in IMAGE_SUFFIXES and _suffix(p) != ".dcm"]
        series = [p for p in entries if p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir())]
        if any(_suffix(p) == ".dcm" for p in entries) and not files and not series:
            series = [path]  # the folder itself is one DICOM series
        items = [{"image": str(p)} for p in files + series]
        if not items:
            raise ValueError(f"folder {str(path)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    for item in items:
        verify_image_file(item["image"], "image listed for inference")
    return items


class SliceAnomalyInferer(Inferer):
    """Runs an :class:`HQAnoGANDetector` on images in their own geometry, slice by slice for volumes.

    Each 2D slice goes to the model grid by the rule of training (:func:`gan_image_transforms`), one rule for 2D
    images and the slices of 3D volumes: intensities scaled to [0, 1] by the slice's own minimum and
    ``upper_percentile`` (:func:`intensity_window`), the longest side resized to ``resolution`` keeping the aspect
    ratio, scaled to [-1, 1] and the short side padded with -1. The anomaly map is cropped back and resized to the
    slice's own size. Volume slices that preparation drops from training (constant, or fewer than
    ``min_foreground`` of their pixels above 5% of the volume's intensity window: :func:`is_background_slice`)
    are not scored, so near-empty end slices are not stretched into noise: their map is 0 and they are left out of
    the volume's score, which is the maximum slice score. Images holding NaN or inf, constant images and slices
    larger than ``max_slice_pixels`` are refused with an error naming the file.

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
        self.slice_axis, self.batch_size = slice_axis, batch_size
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
        if volume:
            del spatial[axis - 1]
        if math.prod(spatial) > self.max_slice_pixels:
            raise ValueError(
                f"{what} of shape {tuple(image.shape)} has slices of more than {self.max_slice_pixels} pixels: too "
                "large to score safely; downsample it first (or raise max_slice_pixels)."
            )
        ensure_finite(image, what, advice="fix the file or replace them before inference.")
        grey = image.float().mean(dim=0, keepdim=True)  # one channel, as ToSingleChannel
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


class FlattenAnomalyRecordd(MapTransform):
    """Post-processing: lift the inferer's record (a dict under ``keys``) to top-level keys of the data dict.

    Afterwards ``pred`` is the anomaly map (what MONAI's ``SaveImaged`` and MONAI Label read) and the other
    entries (``pred_label``, ``pred_score``, ...) sit next to it.

    Args:
        keys: key of the record (``pred``).
        scale_for_png: also divide the map by twice the pixel threshold and clip to [0, 1], so that an 8-bit PNG
            shows the threshold as mid-grey (for ``SaveImaged(..., scale=255)``); NIfTI maps keep raw values.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self, keys: str | Sequence[str] = "pred", scale_for_png: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scale_for_png = scale_for_png

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            record = d.pop(key)
            if not isinstance(record, Mapping) or "pred" not in record:
                raise TypeError(f"expected the SliceAnomalyInferer record under {key!r}, got {type(record).__name__}.")
            d.update(record)
            if self.scale_for_png:
                d["pred"] = (d["pred"] / (2 * max(float(record["pixel_threshold"]), 1e-8))).clamp(0, 1)
        return d


def _item_name(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return str(name)


class AnomalyScoreSaver:
    """Handler that writes every image's score and decision to ``<output_dir>/<filename>.csv`` and ``.json``.

    Rows: ``image`` (file), ``score``, ``label`` (1 abnormal at the calibrated threshold), ``threshold``, and for
    volumes ``slice`` (the highest-scoring slice index) and the per-slice scores (JSON only). Written atomically
    when the run completes.

    Args:
        output_dir: folder of the files (created).
        filename: file name without suffix.
        image_key: key of the input image, whose meta data name the file.
    """

    def __init__(self, output_dir: str | os.PathLike, filename: str = "scores", image_key: str = "image") -> None:
        self.output_dir, self.filename, self.image_key = Path(output_dir), filename, image_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            slices = [None if math.isnan(v) else round(float(v), 6) for v in torch.as_tensor(item["slice_scores"])]
            self.rows.append({
                "image": _item_name(item, self.image_key),
                "score": float(item["pred_score"]),
                "label": int(item["pred_image_label"]),
                "threshold": float(item["image_threshold"]),
                "slice": int(item["panel_slice"]) if len(slices) > 1 else None,
                "slice_scores": slices if len(slices) > 1 else None,
            })  # fmt: skip

    def write(self, engine: Engine | None = None) -> tuple[Path, Path]:
        """Write the CSV and JSON files; returns their paths."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = self.output_dir / f"{self.filename}.csv", self.output_dir / f"{self.filename}.json"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["image", "score", "label", "threshold", "slice"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(csv_path, buffer.getvalue())
        summary = {"images": len(self.rows), "flagged": sum(r["label"] for r in self.rows), "rows": self.rows}
        write_text_atomic(json_path, json.dumps(summary, indent=1))
        logging.getLogger(type(self).__name__).info(
            f"scores of {len(self.rows)} images ({summary['flagged']} above threshold) -> {csv_path}"
        )
        return csv_path, json_path


class AnomalyPanelSaver:
    """Handler that saves a detection panel per image: input | pseudo-normal | heat map | overlay with contours.

    For a volume the panel shows its highest-scoring slice. At most ``max_panels`` panels per run are written.

    Args:
        output_dir: folder of the PNG files (created).
        max_panels: how many images get a panel (the first ones of the run).
        image_key: key of the input image, whose file name names the panel.
        transpose: draw the slices with their two axes swapped (default): MONAI reads PNG/JPEG files as (width,
            height) arrays and NIfTI slices as (x, y), and both look as expected only when transposed.
    """

    def __init__(
        self, output_dir: str | os.PathLike, max_panels: int = 64, image_key: str = "image", transpose: bool = True
    ) -> None:
        self.output_dir, self.max_panels, self.image_key = Path(output_dir), max_panels, image_key
        self.transpose = transpose
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._save)

    def _reset(self, engine: Engine) -> None:
        self.count = 0

    def _save(self, engine: Engine) -> None:
        from monai_hqanogan.visualize import plot_detection_panels, save_figure

        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            if self.count >= self.max_panels:
                return
            panel = torch.as_tensor(item["panel"]).float()
            if panel.numel() == 0:
                continue
            if self.transpose:
                panel = panel.transpose(-1, -2)
            name = _item_name(item, self.image_key)
            stem = Path(name).name.split(".")[0] or f"image_{self.count}"
            slices = torch.as_tensor(item["slice_scores"]).numel()
            title = stem + (f" (slice {int(item['panel_slice'])})" if slices > 1 else "")
            pixel_thr = float(item["pixel_threshold"])
            fig = plot_detection_panels(
                panel[0:1, None],
                panel[1:2, None],
                panel[2:3, None],
                pred_masks=panel[2:3, None] >= pixel_thr,
                scores=[float(item["pred_score"])],
                threshold=float(item["image_threshold"]),
                titles=[title],
            )
            save_figure(fig, self.output_dir / f"{stem}_panel.png")
            self.count += 1
