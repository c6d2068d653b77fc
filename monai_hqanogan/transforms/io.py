"""Loading images for training and inference as they look: palette and CMYK pictures give the colours they show.

MONAI's ``PILReader`` hands Pillow's pixel values over as they are stored: a palette (P, PA) image gives its palette
indices, a CMYK JPEG its four ink amounts (which :class:`~monai_hqanogan.transforms.ToSingleChannel` would take as
RGBA), a 1-bit image 0 and 1. :func:`shown_colours` converts such images to the colours a viewer shows, the rule by
which ``python -m monai_hqanogan.data.prepare`` stores them; :class:`LoadShownImaged` is MONAI's ``LoadImaged`` with
a ``PILReader`` that applies it, so training, evaluation and inference read these files as prepare does.
"""

from __future__ import annotations

from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImaged
from PIL import Image

__all__ = ["SHOWN_COLOUR_MODES", "shown_colours", "LoadShownImaged", "LoadShownImageD", "LoadShownImageDict"]

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
