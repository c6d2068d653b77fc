"""Inference pieces of the bundles: run the detector on images of any size, 2D or 3D, and write what it finds.

:class:`SliceAnomalyInferer` takes one image in its own geometry (a 2D image [C, H, W] or a 3D volume
[C, H, W, D]), brings every 2D slice to the model's square grid exactly as ``gan_image_transforms`` does for
training, runs :meth:`HQAnoGANDetector.detect`, and maps the anomaly map back onto the input grid, so that the
map written next to a NIfTI volume has the volume's shape and affine. :class:`SaveAnomalyMapsd` writes the map and
the label map of each image in a format chosen for its input (PNG next to PNG/JPEG images, in their orientation;
NIfTI next to NIfTI/DICOM volumes, with their affine).

:class:`InferenceOutputFolder` makes one run write one consistent set: every writer writes into a hidden staging
folder, which becomes the output folder only when the run completes (with a ``manifest.json`` of what it wrote);
outputs keep the inputs' sub-folders below their common root; two inputs with one output name, an output folder that
is, contains or lies inside an input folder, and an output folder holding files the tool did not write are refused
before any work.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, create_file_basename
from monai.inferers import Inferer
from monai.transforms import MapTransform, Resize, SaveImage, SpatialPad
from monai.utils import IgniteInfo, MetaKeys, min_version, optional_import
from torch import nn

from monai_hqanogan.transforms.array import ToSingleChannel, ensure_finite, intensity_window, is_background_slice
from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.utils.validation import check_resolution
from monai_hqanogan.workflows.checks import (
    IMAGE_SUFFIXES,
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    check_image_shape,
    check_size_caps,
    check_slice_axis,
    datalist_items,
    image_header_shape,
    verify_image_file,
)
from monai_hqanogan.workflows.stages import check_writable

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "IMAGE_SUFFIXES",
    "SliceAnomalyInferer",
    "FlattenAnomalyRecordd",
    "SaveAnomalyMapsd",
    "OUTPUT_EXTS",
    "PNG_THRESHOLD_LEVEL",
    "check_output_ext",
    "anomaly_map_ext",
    "AnomalyScoreSaver",
    "AnomalyPanelSaver",
    "InferenceOutputFolder",
    "OUTPUT_MANIFEST",
    "list_inference_inputs",
    "output_stem",
]


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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


#: the file in which :class:`InferenceOutputFolder` lists every file one run wrote (size and SHA-256)
OUTPUT_MANIFEST = "manifest.json"
_MANIFEST_TOOL = "monai_hqanogan.workflows.InferenceOutputFolder"
_MANIFEST_FORMAT = 1


def _inference_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the inference set in ``folder``, None when it holds none."""
    try:
        manifest = json.loads((folder / OUTPUT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("tool") == _MANIFEST_TOOL else None


def list_inference_inputs(
    path: str | os.PathLike,
    datalist_key: str = "test",
    base_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    slice_axis: int = -1,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
    max_volume_voxels: int = MAX_VOLUME_VOXELS,
) -> list[dict[str, Any]]:
    """The data dictionaries to run inference on, from a file, a folder or a datalist, checked before any work.

    Every file is checked by :func:`~monai_hqanogan.workflows.checks.verify_image_file`, its size and shape from its
    header before any pixel is read (:func:`~monai_hqanogan.workflows.checks.check_image_shape`): at most
    ``max_slice_pixels`` per slice and ``max_volume_voxels`` in all, 2D images or 3D volumes (a 4th NIfTI dimension
    holds channels, averaged like colour channels), and slices (along ``slice_axis``) with no side under
    :data:`~monai_hqanogan.workflows.checks.MIN_SIDE` pixels, in the file or at ``resolution``. So every image that
    passes is scored and its map written back on its own spatial grid (one channel).

    Args:
        path: an image file; a folder of images (PNG, JPEG, NIfTI, ...; a sub-folder of ``.dcm`` files is one DICOM
            series; other files and hidden files are ignored); or a MONAI datalist JSON file (``datalist_key`` is
            read, paths relative to ``base_dir`` or to the JSON's folder). 2D images and 3D volumes may be mixed. A
            folder holding the outputs of an inference run (its ``manifest.json``) is refused: its maps are not
            images to score.
        datalist_key: the list to read from a datalist JSON.
        base_dir: base folder of the datalist's relative paths (default: the JSON's folder).
        resolution: the model resolution (each slice's longest side is resized to it); None: not checked.
        slice_axis: the axis along which volumes are sliced (as the inferer's).
        max_slice_pixels: the pixel cap of one 2D image or volume slice (:data:`MAX_SLICE_PIXELS`).
        max_volume_voxels: the voxel cap of one image, channels included
            (:data:`~monai_hqanogan.workflows.checks.MAX_VOLUME_VOXELS`).

    Raises:
        FileNotFoundError: when ``path`` or a listed file does not exist.
        ValueError: when a folder holds no image, a datalist is not JSON or has no ``datalist_key``, or a file is
            empty, truncated, not an image, beyond a size cap, not 2D or 3D, has a dimension of size 0, or a side
            the networks cannot use (under 2 px, in the file or at ``resolution``), naming the file.
        ImportError: for DICOM without pydicom.
    """
    check_size_caps(max_slice_pixels, max_volume_voxels)
    slice_axis = check_slice_axis(slice_axis)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"inference input {str(path)!r} does not exist; give an image, a folder or a datalist.")
    if path.is_file() and _suffix(path) == ".json":
        items = datalist_items(path, datalist_key, base_dir=base_dir)
    elif path.is_file():
        items = [{"image": str(path)}]
    else:
        if _inference_manifest(path) is not None:
            raise ValueError(
                f"folder {str(path)!r} holds the outputs of an inference run ({OUTPUT_MANIFEST}): its anomaly maps are "
                "not images to score; give the folder of the images."
            )
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        files = [p for p in entries if p.is_file() and _suffix(p) in IMAGE_SUFFIXES and _suffix(p) != ".dcm"]
        series = [p for p in entries if p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir())]
        if any(_suffix(p) == ".dcm" for p in entries) and not files and not series:
            series = [path]  # the folder itself is one DICOM series
        items = [{"image": str(p)} for p in files + series]
        if not items:
            raise ValueError(f"folder {str(path)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    for item in items:
        verify_image_file(
            item["image"],
            "image listed for inference",
            resolution=resolution,
            slice_axis=slice_axis,
            max_slice_pixels=max_slice_pixels,
            max_volume_voxels=max_volume_voxels,
        )
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
    the volume's score, which is the maximum slice score. Images holding NaN or inf, constant images, slices
    larger than ``max_slice_pixels`` and slices with a side the networks cannot use (under
    :data:`~monai_hqanogan.workflows.checks.MIN_SIDE` pixels, in the image or at ``resolution``: see
    :func:`~monai_hqanogan.workflows.checks.check_image_shape`) are refused with an error naming the file. Channels
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


class FlattenAnomalyRecordd(MapTransform):
    """Post-processing: lift the inferer's record (a dict under ``keys``) to top-level keys of the data dict.

    Afterwards ``pred`` is the anomaly map (what MONAI's ``SaveImaged`` and MONAI Label read) and the other
    entries (``pred_label``, ``pred_score``, ...) sit next to it.

    Args:
        keys: key of the record (``pred``).
        scale_for_png: also divide the map by twice the pixel threshold and clip to [0, 1], so that an 8-bit PNG
            shows the threshold as mid-grey (for ``SaveImaged(..., scale=255)``); NIfTI maps keep raw values.
            The bundle leaves it False: :class:`SaveAnomalyMapsd` scales the maps it writes as PNG itself.
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


#: the values of ``output_ext`` (:class:`SaveAnomalyMapsd`, the bundle's ``--output_ext``): ``"auto"`` picks each
#: map's format from its input (:func:`anomaly_map_ext`), the others write every map in that format
OUTPUT_EXTS = ("auto", ".nii.gz", ".nii", ".png")

#: the 2D raster formats whose maps ``output_ext="auto"`` writes as PNG (MONAI reads them as (width, height)
#: arrays; its PNG writer turns the map back to the input's (height, width))
_RASTER_INPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: the value of the calibrated pixel threshold in an 8-bit PNG anomaly map (see :class:`SaveAnomalyMapsd`)
PNG_THRESHOLD_LEVEL = 128


def check_output_ext(
    output_ext: Any, inputs: Sequence[Mapping[str, Any]] | None = None, image_key: str = "image"
) -> str:
    """``output_ext`` normalised (lower case, with its dot), refused unless it is one of :data:`OUTPUT_EXTS`.

    With ``inputs`` and ``".png"``: inputs that are 3D volumes by their header (or DICOM series) are refused too,
    before any work: a PNG holds one 2D map.

    Args:
        output_ext: ``"auto"``, ``".nii.gz"``, ``".nii"`` or ``".png"`` (``"png"`` and ``".PNG"`` are accepted).
        inputs: the run's data dicts (:func:`list_inference_inputs`), or None to check the value alone.
        image_key: key of the image path in ``inputs``.

    Raises:
        ValueError: an unknown value, or a 3D input with ``".png"``, naming it.
    """
    ext = output_ext.strip().lower() if isinstance(output_ext, str) else None
    if ext and ext != "auto" and not ext.startswith("."):
        ext = f".{ext}"
    if ext not in OUTPUT_EXTS:
        raise ValueError(
            f"output_ext must be one of {', '.join(repr(e) for e in OUTPUT_EXTS)}, got {output_ext!r} "
            "('auto': PNG maps for PNG/JPEG/BMP/TIFF inputs, NIfTI for the others)."
        )
    if ext == ".png":
        for item in inputs or ():
            path = os.fspath(item[image_key])
            header = None if os.path.isdir(path) else image_header_shape(path)
            if os.path.isdir(path) or (header is not None and len(_squeezed(header[0])) > 2):
                raise ValueError(
                    f"output_ext '.png' cannot hold the map of the 3D input {path!r}: use output_ext 'auto' "
                    "(NIfTI maps for volumes, PNG for 2D raster images) or '.nii.gz'."
                )
    return ext


def _squeezed(shape: Sequence[int]) -> list[int]:
    """``shape`` without its trailing dimensions of size 1 (as MONAI's writers squeeze them)."""
    out = [int(s) for s in shape]
    while len(out) > 2 and out[-1] == 1:
        out.pop()
    return out


def anomaly_map_ext(name: str | os.PathLike, output_ext: str = "auto") -> str:
    """The file ending of the maps of the input ``name``: ``output_ext`` itself unless it is ``"auto"``, which gives
    ``".png"`` for PNG, JPEG, BMP and TIFF inputs and ``".nii.gz"`` for all others (NIfTI, DICOM, NRRD, MHA, or no
    name)."""
    ext = check_output_ext(output_ext)
    if ext != "auto":
        return ext
    return ".png" if name and _suffix(Path(os.fspath(name))) in _RASTER_INPUTS else ".nii.gz"


class SaveAnomalyMapsd(MapTransform):
    """Post-processing: write each image's anomaly map and label map in a format chosen for its input.

    With ``output_ext="auto"`` (the bundle's default) every input gets maps in a format of its own kind, so one run
    may mix them:

    - PNG, JPEG, BMP and TIFF images: ``<name>_anomaly_map.png`` and ``<name>_anomaly_label.png``, in the input's
      own orientation and shape (rows x columns as Pillow or any image viewer shows the input; MONAI holds such
      images as (width, height) arrays and its PNG writer turns them back). PNG, not JPEG, for JPEG inputs: the
      maps must not carry compression artefacts. The map is 8-bit and relative to the calibrated pixel threshold
      ``t``: ``value = min(255, floor(PNG_THRESHOLD_LEVEL * map / t))`` with :data:`PNG_THRESHOLD_LEVEL` = 128,
      so values >= 128 lie exactly where the label is 1, a value ``v`` < 255 means a map value in
      ``[v, v + 1) * t / 128``, and 255 means ``>= 1.99 t``. The label is 0 or 255.
    - everything else (NIfTI, DICOM, ...): ``<name>_anomaly_map.nii.gz`` (float32, the raw map) and
      ``<name>_anomaly_label.nii.gz`` (uint8, 0 or 1), on the input's grid with its affine.

    ``output_ext=".nii.gz"`` (or ``".nii"``) writes NIfTI for every input: raw values, but a 2D raster input's map
    is then in MONAI's (width, height) layout, the transpose of the image as Pillow reads it. ``".png"`` writes PNG
    for every input (2D only). Files are named as MONAI's ``SaveImage(data_root_dir=..., separate_folder=False)``
    names them (:func:`output_stem` plus the postfix). The raw image scores stay in :class:`AnomalyScoreSaver`'s
    files whatever the format.

    Args:
        keys: the keys of the anomaly map and of the label map, in that order (``("pred", "pred_label")``, the
            keys :class:`FlattenAnomalyRecordd` leaves).
        output_dir: the folder the files are written into.
        output_ext: one of :data:`OUTPUT_EXTS` (:func:`check_output_ext`).
        data_root_dir: the inputs' common folder: outputs keep the inputs' sub-folders below it.
        output_postfixes: the postfixes of the map's and the label's file names.
        threshold_key: key of the pixel threshold (a number) that scales PNG maps.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("pred", "pred_label"),
        output_dir: str | os.PathLike = "./",
        output_ext: str = "auto",
        data_root_dir: str | os.PathLike = "",
        output_postfixes: Sequence[str] = ("anomaly_map", "anomaly_label"),
        threshold_key: str = "pixel_threshold",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2 or len(output_postfixes) != 2:
            raise ValueError(
                f"SaveAnomalyMapsd needs two keys (map, label) and two postfixes, got {self.keys} and "
                f"{tuple(output_postfixes)}."
            )
        self.output_dir, self.data_root_dir = os.fspath(output_dir), os.fspath(data_root_dir)
        self.output_ext = check_output_ext(output_ext)
        self.output_postfixes, self.threshold_key = tuple(output_postfixes), threshold_key
        self._savers: dict[tuple[str, int], SaveImage] = {}

    def _saver(self, ext: str, index: int) -> SaveImage:
        """MONAI's writer of the map (``index`` 0) or the label (1) as ``ext``."""
        if (ext, index) not in self._savers:
            self._savers[ext, index] = SaveImage(
                output_dir=self.output_dir,
                output_postfix=self.output_postfixes[index],
                output_ext=ext,
                output_dtype=np.float32 if index == 0 and ext != ".png" else np.uint8,
                scale=None,  # PNG values are set here (png_levels), not by the writer's clip-and-scale
                resample=False,
                separate_folder=False,
                data_root_dir=self.data_root_dir,
                print_log=False,
            )
        return self._savers[ext, index]

    @staticmethod
    def png_levels(anomaly_map: torch.Tensor, pixel_threshold: float) -> torch.Tensor:
        """The 8-bit PNG values of ``anomaly_map``: ``min(255, floor(128 * map / pixel_threshold))``, 0 for
        negative or non-finite values; the calibrated threshold becomes 128 (:data:`PNG_THRESHOLD_LEVEL`), and
        values >= 128 lie exactly where ``map >= pixel_threshold`` (the label), whatever the rounding."""
        values = anomaly_map.float()
        scaled = torch.nan_to_num(values * (PNG_THRESHOLD_LEVEL / max(pixel_threshold, 1e-8)), nan=0.0)
        levels = torch.floor(scaled).clamp(0, 255)
        above = values >= pixel_threshold
        levels = torch.where(above, levels.clamp(min=PNG_THRESHOLD_LEVEL), levels.clamp(max=PNG_THRESHOLD_LEVEL - 1))
        return levels.to(torch.uint8)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        name = _item_name(d, keys[0])
        ext = anomaly_map_ext(name, self.output_ext)
        for key in keys:
            index = self.keys.index(key)
            image = d[key]
            if ext == ".png":
                spatial = _squeezed(image.shape[1:])
                if len(spatial) != 2:
                    raise ValueError(
                        f"the map of {name or 'an input'!r} is 3D ({tuple(image.shape[1:])}): a PNG holds one 2D map; "
                        "use output_ext 'auto' or '.nii.gz'."
                    )
                if index == 0:
                    image = self.png_levels(image, float(d[self.threshold_key]))
                else:
                    image = (image > 0).to(torch.uint8) * 255
            self._saver(ext, index)(image)
        return d


def _item_name(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return str(name)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no token for them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _strict_json(value: Any) -> str:
    """``value`` as standard JSON: non-finite floats become null, never the ``NaN``/``Infinity`` tokens."""
    return json.dumps(_finite_or_none(value), indent=1, allow_nan=False)


def output_stem(name: str | os.PathLike, data_root_dir: str | os.PathLike = "") -> str:
    """The output name of an input, relative to the output folder, without postfix and extension: the input's
    sub-folder below ``data_root_dir`` and its file name without extension (``.nii.gz`` counts as one), by MONAI's
    own rule (``create_file_basename``, what ``SaveImage(data_root_dir=..., separate_folder=False)`` uses)."""
    root = os.fspath(data_root_dir)
    return create_file_basename("", os.fspath(name), "", data_root_dir=root, separate_folder=False, makedirs=False)


class AnomalyScoreSaver:
    """Handler that writes every image's score and decision to ``<output_dir>/<filename>.csv`` and ``.json``.

    Rows: ``image`` (file), ``score``, ``label`` (1 abnormal at the calibrated threshold), ``threshold``, and for
    volumes ``slice`` (the highest-scoring slice index) and the per-slice scores (JSON only). The JSON file also
    names the calibrated ``pixel_threshold`` of the run's label maps (PNG maps are relative to it: see
    :class:`SaveAnomalyMapsd`). Written atomically when the run completes. The JSON file is standard JSON: a value
    that is not a finite number is ``null`` there and empty in the CSV file (never ``NaN`` or ``Infinity``).

    Args:
        output_dir: folder of the files (created).
        filename: file name without suffix.
        image_key: key of the input image, whose meta data name the file.
    """

    def __init__(self, output_dir: str | os.PathLike, filename: str = "scores", image_key: str = "image") -> None:
        self.output_dir, self.filename, self.image_key = Path(output_dir), filename, image_key
        self.rows: list[dict[str, Any]] = []
        self.pixel_threshold: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.pixel_threshold = [], None

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            # full precision, as the score: rounding would break "score == max(slice_scores)" for small scores
            slices = [float(v) if math.isfinite(v) else None for v in torch.as_tensor(item["slice_scores"]).tolist()]
            if "pixel_threshold" in item:
                self.pixel_threshold = float(item["pixel_threshold"])
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
        rows = _finite_or_none(self.rows)
        writer.writerows(rows)
        write_text_atomic(csv_path, buffer.getvalue())
        summary = {"images": len(rows), "flagged": sum(r["label"] for r in rows), "rows": rows}
        if self.pixel_threshold is not None:
            summary = {"pixel_threshold": _finite_or_none(self.pixel_threshold), **summary}
        write_text_atomic(json_path, _strict_json(summary))
        logging.getLogger(type(self).__name__).info(
            f"scores of {len(self.rows)} images ({summary['flagged']} above threshold) -> {csv_path}"
        )
        return csv_path, json_path


class AnomalyPanelSaver:
    """Handler that saves a detection panel per image: input | pseudo-normal | heat map | overlay with contours.

    For a volume the panel shows its highest-scoring slice. At most ``max_panels`` panels per run are written. A
    panel is named like the maps MONAI's ``SaveImage`` writes: ``<sub-folder>/<name>_panel.png``, where ``<name>``
    is the input's file name without extension and ``<sub-folder>`` its folder below ``data_root_dir`` (none when
    ``data_root_dir`` is empty).

    Args:
        output_dir: folder of the PNG files (created).
        max_panels: how many images get a panel (the first ones of the run).
        image_key: key of the input image, whose file name names the panel.
        transpose: draw the slices with their two axes swapped (default): MONAI reads PNG/JPEG files as (width,
            height) arrays and NIfTI slices as (x, y), and both look as expected only when transposed.
        data_root_dir: the inputs' common folder, as given to ``SaveImage``, so that inputs with one file name in
            different folders get different panels.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        max_panels: int = 64,
        image_key: str = "image",
        transpose: bool = True,
        data_root_dir: str | os.PathLike = "",
    ) -> None:
        self.output_dir, self.max_panels, self.image_key = Path(output_dir), max_panels, image_key
        self.transpose, self.data_root_dir = transpose, os.fspath(data_root_dir)
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
            stem = output_stem(name, self.data_root_dir) if name else f"image_{self.count}"
            slices = torch.as_tensor(item["slice_scores"]).numel()
            title = Path(stem).name + (f" (slice {int(item['panel_slice'])})" if slices > 1 else "")
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
            path = self.output_dir / f"{stem}_panel.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_figure(fig, path)
            self.count += 1


def _listed(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The files a manifest lists: relative path -> {"bytes", "sha256"}."""
    files = manifest.get("files")
    return {str(k): v for k, v in files.items() if isinstance(v, Mapping)} if isinstance(files, Mapping) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree(folder: Path) -> tuple[set[str], set[str]]:
    """(entries that are not folders: files, links, ...; folders) under ``folder``, as relative POSIX paths."""
    entries, folders = set(), set()
    for root, dirs, files in os.walk(folder):  # links to folders are listed, not followed
        rel = Path(root).relative_to(folder)
        for name in dirs:
            (entries if os.path.islink(os.path.join(root, name)) else folders).add((rel / name).as_posix())
        entries.update((rel / name).as_posix() for name in files)
    return entries, folders


def _ancestors(names: Sequence[str] | set[str]) -> set[str]:
    return {parent.as_posix() for name in names for parent in Path(name).parents if parent != Path(".")}


def _some(names: Sequence[str] | set[str], limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class InferenceOutputFolder:
    """One inference run writes one consistent set of files into ``output_dir``, or leaves it as it was.

    Every writer of the run (:class:`SaveAnomalyMapsd`, :class:`AnomalyScoreSaver`, :class:`AnomalyPanelSaver`)
    writes into :attr:`staging_dir`, a new hidden folder next to ``output_dir`` (``.<name>.incomplete-<run id>``).
    When the run completes, a ``manifest.json`` listing every file written (size, SHA-256) is added and the staging
    folder is renamed to ``output_dir``; when it fails, the staging folder is removed and ``output_dir`` is left as
    it was. A staging folder left by a killed process can be deleted.

    :meth:`check` refuses, before any work (the bundle's ``initialize`` calls it):

    - two inputs that would be written under one name (outputs keep the inputs' sub-folders below their common
      folder :attr:`data_root`, as MONAI's ``SaveImage(data_root_dir=...)`` does, so only inputs in one folder whose
      file names differ in their extension or letter case alone, or an input listed twice, collide);
    - an output folder that is, contains or lies inside an input folder (the folder given as input, a DICOM series),
      or that is or contains the folder of an input file, so a later run never scores this run's maps as images;
    - an output folder that holds anything but an unchanged earlier set written by this class (exactly the files
      its ``manifest.json`` lists; some may be missing): a completed run replaces such a set, and deletes nothing
      else.

    Attach it to the engine after the other writers (``handlers`` of the bundle's ``inference.json``): it finishes
    the set when the run completes, after the score files are written.

    Args:
        output_dir: the output folder.
        inputs: the run's data dicts (:func:`list_inference_inputs`).
        source: what the inputs were listed from (a folder, an image file or a datalist); a folder is an input
            folder.
        image_key: key of the image path in ``inputs`` and of the image in the engine's output.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        inputs: Sequence[Mapping[str, Any]],
        source: str | os.PathLike | None = None,
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir).expanduser().resolve()
        self.image_key = image_key
        self.inputs = [os.fspath(item[image_key]) for item in inputs]
        self.source = Path(source).expanduser() if source is not None else None
        folders = sorted({os.path.dirname(os.path.abspath(p)) for p in self.inputs})
        #: the inputs' common folder: outputs keep the inputs' sub-folders below it
        self.data_root = os.path.commonpath(folders) if folders else ""
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        #: where the writers write during the run; renamed to ``output_dir`` when the run completes
        self.staging_dir = self.output_dir.parent / f".{self.output_dir.name}.incomplete-{self.run_id}"
        self._checked = self._created = self._keep = False
        self._seen: dict[str, str] = {}
        self._log = logging.getLogger(type(self).__name__)

    # ------------------------------------------------------------------ checks before any work
    def check(self) -> InferenceOutputFolder:
        """Refuse the run, before any work, when its outputs would collide or mix with anything; see the class.

        Raises:
            ValueError: two inputs with one output name; an output folder that is, contains or lies inside an
                input folder.
            FileExistsError: an output folder holding anything but an unchanged earlier set of this class.
            PermissionError: an output folder that cannot be written.
        """
        self._check_names()
        self._check_overlap()
        self._earlier_set()
        check_writable(self.output_dir.parent)
        self._checked = True
        return self

    def _check_names(self) -> None:
        seen: dict[str, str] = {}
        for path in self.inputs:
            stem = output_stem(path, self.data_root)
            if stem.casefold() not in seen:
                seen[stem.casefold()] = path
                continue
            other = seen[stem.casefold()]
            if os.path.abspath(other) == os.path.abspath(path):
                raise ValueError(f"input {path!r} is listed twice: list every image once.")
            raise ValueError(
                f"inputs {other!r} and {path!r} would both be written as {stem!r} (anomaly map, label and panel are "
                f"named after the input's folder below {self.data_root!r} and its file name without extension, "
                "letter case ignored): rename one of them, or score them in two runs with separate output folders."
            )

    def _check_overlap(self) -> None:
        out = self.output_dir
        advice = (
            "choose an output folder outside every input folder (a later run on that folder would read this run's "
            "maps as images)."
        )
        folders = [Path(p).resolve() for p in self.inputs if Path(p).is_dir()]  # DICOM series
        if self.source is not None and self.source.is_dir():
            folders.insert(0, self.source.resolve())
        for folder in folders:
            if out == folder:
                raise ValueError(f"the output folder {out} is the input folder {folder}: {advice}")
            if folder in out.parents:
                raise ValueError(f"the output folder {out} lies inside the input folder {folder}: {advice}")
            if out in folder.parents:
                raise ValueError(f"the input folder {folder} lies inside the output folder {out}: {advice}")
        for path in self.inputs:
            folder = Path(path).resolve().parent
            if out == folder:
                raise ValueError(f"the output folder {out} is the folder of the input {path!r}: {advice}")
            if out in folder.parents:
                raise ValueError(f"the output folder {out} contains the input {path!r}: {advice}")

    def _earlier_set(self) -> dict[str, Any] | None:
        """The manifest of the unchanged earlier set in ``output_dir``; None for a missing or empty folder."""
        out = self.output_dir
        if not out.exists():
            return None
        if not out.is_dir():
            raise FileExistsError(f"the output folder {out} is a file: choose another --output_dir.")
        entries, folders = _tree(out)
        if not entries and not folders:
            return None
        manifest = _inference_manifest(out)
        how = (
            "choose a new or empty --output_dir, or move those files away (a run replaces only an unchanged set "
            f"written by an earlier run, which its {OUTPUT_MANIFEST} lists, and deletes nothing else)."
        )
        if manifest is None:
            raise FileExistsError(
                f"the output folder {out} is not empty ({_some(entries | folders)}) and holds no {OUTPUT_MANIFEST} "
                f"of an earlier inference run: {how}"
            )
        files = _listed(manifest)
        listed = set(files)
        foreign = (entries - listed - {OUTPUT_MANIFEST}) | (folders - _ancestors(listed))
        if foreign:
            raise FileExistsError(
                f"the output folder {out} holds an earlier inference set and also files that set did not write "
                f"({_some(foreign)}): {how}"
            )
        changed = []
        for name in sorted(entries & listed):
            path, info = out / name, files[name]
            if path.is_symlink() or path.stat().st_size != info.get("bytes") or _sha256(path) != info.get("sha256"):
                changed.append(name)
        if changed:
            raise FileExistsError(
                f"the output folder {out} holds an earlier inference set whose files changed since it was written "
                f"({_some(changed)}): {how}"
            )
        return manifest

    # ------------------------------------------------------------------ the run
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.begin)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_outputs)
        engine.add_event_handler(Events.COMPLETED, self.commit)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def begin(self, engine: Engine | None = None) -> Path:
        """Create the (new) staging folder; runs :meth:`check` first if it has not run."""
        if not self._checked:
            self.check()
        self.staging_dir.mkdir()  # a new name: nothing is overwritten
        self._created, self._keep, self._seen = True, False, {}
        return self.staging_dir

    def _check_outputs(self, engine: Engine) -> None:
        """Guard of what was checked before the run: no two images of the run are written under one name."""
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            name = _item_name(item, self.image_key)
            key = output_stem(name, self.data_root).casefold()
            if key in self._seen:
                raise ValueError(
                    f"inputs {self._seen[key]!r} and {name!r} were written under one name: the run is dropped."
                )
            self._seen[key] = name

    def _failed(self, engine: Engine, error: BaseException) -> None:
        self.discard()
        raise error

    def discard(self) -> None:
        """Remove the staging folder of a failed run (only what this run wrote is there)."""
        if self._created and not self._keep and self.staging_dir.is_dir():
            shutil.rmtree(self.staging_dir)
            self._log.info(f"the run failed: nothing was written to {self.output_dir}")
        self._created = False

    def commit(self, engine: Engine | None = None) -> Path:
        """Add the manifest and make the staging folder ``output_dir``, replacing an unchanged earlier set."""
        entries, _ = _tree(self.staging_dir)
        paths = {name: self.staging_dir / name for name in sorted(entries - {OUTPUT_MANIFEST})}
        files = {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in paths.items()}
        manifest = {
            "tool": _MANIFEST_TOOL,
            "format": _MANIFEST_FORMAT,
            "run_id": self.run_id,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_root": self.data_root,
            "inputs": self.inputs,
            "files": files,
        }
        write_text_atomic(self.staging_dir / OUTPUT_MANIFEST, _strict_json(manifest))
        try:
            earlier = self._earlier_set()
        except FileExistsError as err:  # something was written there during the run: keep both, tell
            self._keep = True
            raise FileExistsError(f"{err} This run's complete set is kept in {self.staging_dir}.") from err
        replaced = None
        try:
            if earlier is not None:
                replaced = self.output_dir.parent / f".{self.output_dir.name}.replaced-{self.run_id}"
                os.rename(self.output_dir, replaced)
            elif self.output_dir.is_dir():
                os.rmdir(self.output_dir)  # empty
            os.rename(self.staging_dir, self.output_dir)
        except OSError as err:
            if replaced is not None and replaced.is_dir() and not self.output_dir.exists():
                os.rename(replaced, self.output_dir)
            self._keep = True
            raise OSError(
                f"cannot move {self.staging_dir} to {self.output_dir}: {err}; the set is kept there."
            ) from err
        self._created = False
        if replaced is not None:
            self._remove_set(replaced, earlier)
        self._log.info(f"{len(files)} files -> {self.output_dir} (listed in {OUTPUT_MANIFEST})")
        return self.output_dir

    def _remove_set(self, folder: Path, manifest: Mapping[str, Any]) -> None:
        """Delete the earlier set moved to ``folder``: the files its manifest lists, then its emptied folders."""
        entries, folders = _tree(folder)
        listed = set(_listed(manifest))
        for name in sorted(entries & (listed | {OUTPUT_MANIFEST})):
            (folder / name).unlink()
        try:
            for name in sorted(folders & _ancestors(listed), key=lambda n: -n.count("/")):
                (folder / name).rmdir()
            folder.rmdir()
        except OSError:
            self._log.warning(f"the earlier set's folder {folder} still holds files it did not write: left there.")
