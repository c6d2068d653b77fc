"""Ready-made preprocessing for GAN training and inference on 2D images."""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from monai_hqanogan.transforms.dictionary import ToSingleChanneld
from monai_hqanogan.transforms.io import LoadShownImaged
from monai_hqanogan.utils.validation import check_resolution

__all__ = ["gan_image_transforms"]


def gan_image_transforms(
    resolution: int,
    keys: Sequence[str] | str = ("image",),
    load: bool = True,
    upper_percentile: float = 99.5,
) -> Compose:
    """Load -> one channel -> intensities to [-1, 1] -> longest side to ``resolution`` -> pad to a square.

    Files are read by :class:`~monai_hqanogan.transforms.io.LoadShownImaged`: palette and CMYK images give the
    colours they show, not palette indices or ink. Non-square images keep their aspect ratio: the longest side is
    resized to ``resolution`` and the short side is padded (centred) with -1, the background value after scaling.
    Intensities map the image minimum to -1 and its ``upper_percentile`` to 1, clipped, so that a few bright voxels
    do not compress the contrast.

    Args:
        resolution: output size, a power of two in [8, 1024].
        keys: image keys of the data dictionaries.
        load: start with ``LoadShownImaged`` (False when the dictionaries already hold arrays, channel first).
        upper_percentile: intensity percentile mapped to 1.
    """
    check_resolution(resolution)
    keys = [keys] if isinstance(keys, str) else list(keys)
    steps = [LoadShownImaged(keys, image_only=True), EnsureChannelFirstd(keys)] if load else []
    steps += [
        ToSingleChanneld(keys),
        # resize in [0, 1]: the anti-aliasing filter pads with zeros, which must be the background value
        ScaleIntensityRangePercentilesd(keys, lower=0, upper=upper_percentile, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys, spatial_size=resolution, size_mode="longest", mode="bilinear", anti_aliasing=True),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
        SpatialPadd(keys, spatial_size=(resolution, resolution), mode="constant", value=-1.0),
        EnsureTyped(keys, dtype="float32", track_meta=False),
    ]
    return Compose(steps)
