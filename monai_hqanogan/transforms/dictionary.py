"""Dictionary transforms, MONAI style (``XxxD`` and ``XxxDict`` are aliases of ``Xxxd``)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from monai_hqanogan.transforms.array import ToSingleChannel

__all__ = [
    "ToSingleChanneld",
    "ToSingleChannelD",
    "ToSingleChannelDict",
    "FlattenAnomalyRecordd",
    "FlattenAnomalyRecordD",
    "FlattenAnomalyRecordDict",
    "AnomalyLabeld",
    "AnomalyLabelD",
    "AnomalyLabelDict",
    "resolve_pixel_threshold",
]


class ToSingleChanneld(MapTransform):
    """Dictionary wrapper of :class:`~monai_hqanogan.transforms.array.ToSingleChannel`.

    Args:
        keys: keys of the images to convert.
        mode: ``"mean"``, ``"luminance"`` or ``"first"``.
        allow_missing_keys: do not raise if a key is missing.
        alpha: whether the last channel is alpha and is ignored: None (default) for 2 and 4 channels (LA, RGBA),
            True for any image of 2 or more channels, False never (see ``ToSingleChannel``).
    """

    backend = ToSingleChannel.backend

    def __init__(
        self, keys: KeysCollection, mode: str = "mean", allow_missing_keys: bool = False, alpha: bool | None = None
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToSingleChannel(mode=mode, alpha=alpha)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


ToSingleChannelD = ToSingleChannelDict = ToSingleChanneld


class FlattenAnomalyRecordd(MapTransform):
    """Post-processing: lift the inferer's record (a dict under ``keys``) to top-level keys of the data dict.

    The record is what :class:`~monai_hqanogan.inferers.SliceAnomalyInferer` returns for a batch.
    Afterwards ``pred`` is the anomaly map (what MONAI's ``SaveImaged`` and MONAI Label read) and the other
    entries (``pred_label``, ``pred_score``, ...) sit next to it.

    Args:
        keys: key of the record (``pred``).
        scale_for_png: also divide the map by twice the pixel threshold and clip to [0, 1], so that an 8-bit PNG
            shows the threshold as mid-grey (for ``SaveImaged(..., scale=255)``); NIfTI maps keep raw values.
            The bundle leaves it False: :class:`~monai_hqanogan.handlers.SaveAnomalyMapsd` scales the maps it
            writes as PNG itself.
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


FlattenAnomalyRecordD = FlattenAnomalyRecordDict = FlattenAnomalyRecordd


def resolve_pixel_threshold(requested: Any, calibrated: float) -> float:
    """The pixel threshold to label with: ``calibrated`` for None, ``""`` or ``"calibrated"``, else ``requested`` as a
    positive finite number (a number, or its text as a request option gives it).

    Raises:
        ValueError: ``requested`` is neither ``"calibrated"`` nor a positive finite number.
    """
    if requested is None or str(requested).strip().lower() in ("", "calibrated"):
        return float(calibrated)
    try:
        value = float(requested)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"pixel_threshold must be a positive number or 'calibrated', got {requested!r}.")
    return value


class AnomalyLabeld(FlattenAnomalyRecordd):
    """Post-processing for label consumers: the inferer's record in MONAI's segmentation layout, the label map in
    ``pred`` (what MONAI Label's ``BundleInferTask`` writes as the label and a MONAI segmentation bundle leaves
    there), the image score and decisions in a JSON-ready ``result`` (MONAI Label's result JSON).

    After lifting the record as :class:`FlattenAnomalyRecordd` does:

    - ``pred`` and ``pred_label``: the uint8 label map, 1 where the anomaly map reaches the pixel threshold and 0
      elsewhere (label values as the bundle metadata's ``channel_def``: 0 background, 1 anomaly), channel first, on
      the input's grid with its meta data;
    - ``anomaly_map``: the float anomaly map (the record's ``pred``);
    - ``pixel_threshold``: the threshold the label used;
    - ``result``: ``anomaly_score``, ``anomalous`` (the image decision), ``image_threshold``, ``pixel_threshold``,
      ``calibrated_pixel_threshold``, ``anomalous_voxels`` (pixels of a 2D image), ``slice_scores`` (one per slice
      along the inferer's slice axis, one for a 2D image; None for a slice that was not scored) and ``top_slice``;
      merged into a dict already under that key.

    Args:
        keys: key of the record (``pred``).
        pixel_threshold: ``"calibrated"`` (or None) for the detector's calibrated pixel threshold, or a positive
            number that replaces it (see :func:`resolve_pixel_threshold`); the image score and decision do not
            change.
        option_key: a key of the data dict whose value, when present, replaces ``pixel_threshold`` (a per-request
            option: MONAI Label puts a request's options in the data dict, where the bundle's
            ``displayable_configs`` expose them). It is read as a number or ``"calibrated"``, never parsed as config.
        map_key: where the float anomaly map goes.
        result_key: where the summary goes.
        allow_missing_keys: as in MONAI.

    Example:
        >>> from monai.transforms import Compose
        >>> post = Compose([AnomalyLabeld(keys="pred")])  # after SliceAnomalyInferer, per decollated item
        >>> # post(item)["pred"]: uint8 label map; post(item)["result"]["anomaly_score"]: the image score
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "pred",
        pixel_threshold: float | str | None = "calibrated",
        option_key: str | None = None,
        map_key: str = "anomaly_map",
        result_key: str = "result",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"AnomalyLabeld takes the key of one record, got {self.keys}.")
        resolve_pixel_threshold(pixel_threshold, 1.0)  # refuse a bad value before any image
        self.pixel_threshold, self.option_key = pixel_threshold, option_key
        self.map_key, self.result_key = map_key, result_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if self.keys[0] not in data and self.allow_missing_keys:
            return dict(data)
        requested = data.get(self.option_key) if self.option_key is not None else None
        d = super().__call__(data)  # the record's entries replace the data's (its pixel_threshold too)
        heat = d["pred"]
        calibrated = float(d["pixel_threshold"])
        threshold = resolve_pixel_threshold(self.pixel_threshold if requested is None else requested, calibrated)
        label = (heat >= threshold).to(torch.uint8)
        slices = torch.as_tensor(d["slice_scores"]).float().reshape(-1).tolist()
        summary = {
            "anomaly_score": float(d["pred_score"]),
            "anomalous": bool(int(d["pred_image_label"])),
            "image_threshold": float(d["image_threshold"]),
            "pixel_threshold": threshold,
            "calibrated_pixel_threshold": calibrated,
            "anomalous_voxels": int(label.sum()),
            "slice_scores": [v if math.isfinite(v) else None for v in slices],
            "top_slice": int(d["panel_slice"]),
        }
        previous = d.get(self.result_key)
        d[self.result_key] = {**(dict(previous) if isinstance(previous, Mapping) else {}), **summary}
        d[self.map_key], d["pred"], d["pred_label"], d["pixel_threshold"] = heat, label, label, threshold
        return d


AnomalyLabelD = AnomalyLabelDict = AnomalyLabeld
