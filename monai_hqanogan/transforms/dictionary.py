"""Dictionary transforms, MONAI style (``XxxD`` and ``XxxDict`` are aliases of ``Xxxd``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

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
            The bundle leaves it False: :class:`~monai_hqanogan.workflows.SaveAnomalyMapsd` scales the maps it
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
