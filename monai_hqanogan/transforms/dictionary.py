"""Dictionary transforms, MONAI style (``XxxD`` and ``XxxDict`` are aliases of ``Xxxd``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from monai_hqanogan.transforms.array import ToSingleChannel

__all__ = ["ToSingleChanneld", "ToSingleChannelD", "ToSingleChannelDict"]


class ToSingleChanneld(MapTransform):
    """Dictionary wrapper of :class:`~monai_hqanogan.transforms.array.ToSingleChannel`.

    Args:
        keys: keys of the images to convert.
        mode: ``"mean"``, ``"luminance"`` or ``"first"``.
        allow_missing_keys: do not raise if a key is missing.
    """

    backend = ToSingleChannel.backend

    def __init__(self, keys: KeysCollection, mode: str = "mean", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToSingleChannel(mode=mode)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


ToSingleChannelD = ToSingleChannelDict = ToSingleChanneld
