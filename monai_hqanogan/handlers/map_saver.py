"""The writer of the anomaly maps and label maps of an inference run, in a format chosen for each input.

:class:`SaveAnomalyMapsd` writes PNG maps next to PNG/JPEG/BMP/TIFF inputs (in their orientation) and NIfTI maps
next to NIfTI, DICOM, NRRD and MHA volumes (with their affine), through MONAI's ``SaveImage``; the bundle's
``inference.json`` runs it in a ``PostProcessing`` handler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, SaveImage

from monai_hqanogan.data.image_files import RASTER_SUFFIXES, image_header_shape, image_suffix, item_file_name

__all__ = ["SaveAnomalyMapsd", "OUTPUT_EXTS", "PNG_THRESHOLD_LEVEL", "check_output_ext", "anomaly_map_ext"]

#: the values of ``output_ext`` (:class:`SaveAnomalyMapsd`, the bundle's ``--output_ext``): ``"auto"`` picks each
#: map's format from its input (:func:`anomaly_map_ext`), the others write every map in that format
OUTPUT_EXTS = ("auto", ".nii.gz", ".nii", ".png")

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
    return ".png" if name and image_suffix(name) in RASTER_SUFFIXES else ".nii.gz"


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
        name = item_file_name(d, keys[0])
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
