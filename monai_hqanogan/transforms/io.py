"""Loading images for training and inference as they look: palette and CMYK pictures give the colours they show.

MONAI's ``PILReader`` hands Pillow's pixel values over as they are stored: a palette (P, PA) image gives its palette
indices, a CMYK JPEG its four ink amounts (which :class:`~monai_hqanogan.transforms.ToSingleChannel` would take as
RGBA), a 1-bit image 0 and 1. :func:`shown_colours` converts such images to the colours a viewer shows, the rule by
which ``python -m monai_hqanogan.data.prepare`` stores them; :class:`LoadShownImaged` is MONAI's ``LoadImaged`` with
a ``PILReader`` that applies it, so training, evaluation and inference read these files as prepare does.
:class:`CheckImageFiled` checks an image file's header (size caps, shape) before a loader reads it: the bundle's
``preprocessing`` starts with it, so MONAI Label (the project's app and the stock ``monaibundle`` app) refuses a
request's huge image as the command line's inference does, before any pixel is read.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImaged, MapTransform
from PIL import Image

__all__ = [
    "SHOWN_COLOUR_MODES",
    "shown_colours",
    "LoadShownImaged",
    "LoadShownImageD",
    "LoadShownImageDict",
    "CheckImageFiled",
    "CheckImageFileD",
    "CheckImageFileDict",
]

#: Pillow modes whose stored values are not the colours shown, and the mode :func:`shown_colours` converts them to
SHOWN_COLOUR_MODES = {"P": "RGB", "PA": "RGB", "CMYK": "RGB", "1": "L"}


def shown_colours(img: Image.Image) -> Image.Image:
    """A Pillow image as the colours it shows: palette (P, PA) and CMYK images as RGB, 1-bit images as 8-bit grey
    (:data:`SHOWN_COLOUR_MODES`); every other image unchanged. A PA image's alpha is dropped with the conversion:
    alpha is opacity, not intensity (:class:`~monai_hqanogan.transforms.ToSingleChannel` ignores it too).

    Args:
        img: the image as Pillow opened it (``PILReader``'s ``converter`` hook).
    """
    target = SHOWN_COLOUR_MODES.get(img.mode)
    return img if target is None else img.convert(target)


class LoadShownImaged(LoadImaged):
    """MONAI's ``LoadImaged`` (the reader chosen by the file suffix, as with ``reader=None``) whose PNG, JPEG, BMP and
    TIFF reader is a ``PILReader`` with :func:`shown_colours` as converter: palette, CMYK and 1-bit images are read
    as the colours they show, all other files exactly as ``LoadImaged`` reads them.

    Args:
        keys: keys of the image paths.
        image_only: return the image only (a MetaTensor), as in ``LoadImaged``.
        ensure_channel_first: move the channels first, as in ``LoadImaged``.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            image_only=image_only,
            ensure_channel_first=ensure_channel_first,
            allow_missing_keys=allow_missing_keys,
        )
        self.register(PILReader(converter=shown_colours))  # registered last: tried first for its suffixes


LoadShownImageD = LoadShownImageDict = LoadShownImaged


class CheckImageFiled(MapTransform):
    """Check the image files named under ``keys`` from their headers, before a loader reads them: the size caps
    (``max_slice_pixels``, ``max_volume_voxels``) and the shapes the networks cannot use, by
    :func:`~monai_hqanogan.data.image_files.verify_image_file` with ``decode=False`` (no pixel is read). A file
    beyond a cap raises a ValueError naming it, its shape and the cap; a missing file a FileNotFoundError. Values that
    are not a path (an array or tensor already loaded, e.g. by MONAI Label's ``LoadImageTensord``) pass unchanged.

    Put it before ``LoadImaged`` wherever an image path comes from outside the command line's input check, e.g. the
    bundle's ``preprocessing``, which MONAI Label runs on each request's image.

    Args:
        keys: keys of the image paths.
        max_slice_pixels: the largest 2D image or volume slice accepted; None: ``MAX_SLICE_PIXELS``.
        max_volume_voxels: the largest image accepted in all, channels included; None: ``MAX_VOLUME_VOXELS``.
        slice_axis: the spatial axis along which volumes are sliced.
        resolution: the model resolution (a side that would round to under 2 px there is refused); None: not checked.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_slice_pixels: int | None = None,
        max_volume_voxels: int | None = None,
        slice_axis: int = -1,
        resolution: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        # imported here: monai_hqanogan.data imports this module (shown_colours)
        from monai_hqanogan.data.image_files import MAX_SLICE_PIXELS, MAX_VOLUME_VOXELS, check_size_caps

        super().__init__(keys, allow_missing_keys)
        max_slice_pixels = MAX_SLICE_PIXELS if max_slice_pixels is None else max_slice_pixels
        max_volume_voxels = MAX_VOLUME_VOXELS if max_volume_voxels is None else max_volume_voxels
        check_size_caps(max_slice_pixels, max_volume_voxels)
        self.rules = {
            "max_slice_pixels": max_slice_pixels,
            "max_volume_voxels": max_volume_voxels,
            "slice_axis": slice_axis,
            "resolution": resolution,
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_hqanogan.data.image_files import verify_image_file

        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, os.PathLike)):
                verify_image_file(d[key], label=f"image {key!r}", decode=False, **self.rules)
        return d


CheckImageFileD = CheckImageFileDict = CheckImageFiled
