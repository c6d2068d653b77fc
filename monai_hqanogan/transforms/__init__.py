from __future__ import annotations

from .ada import ADA_MODES, AdaptiveAugmentController, AdaptiveAugmentPipe
from .array import ToSingleChannel, ensure_finite, intensity_window, is_background_slice
from .dictionary import (
    AnomalyLabelD,
    AnomalyLabeld,
    AnomalyLabelDict,
    FlattenAnomalyRecordD,
    FlattenAnomalyRecordd,
    FlattenAnomalyRecordDict,
    ToSingleChannelD,
    ToSingleChanneld,
    ToSingleChannelDict,
    resolve_pixel_threshold,
)
from .io import (
    SHOWN_COLOUR_MODES,
    CheckImageFileD,
    CheckImageFiled,
    CheckImageFileDict,
    LoadShownImageD,
    LoadShownImaged,
    LoadShownImageDict,
    shown_colours,
)
from .presets import gan_image_transforms
