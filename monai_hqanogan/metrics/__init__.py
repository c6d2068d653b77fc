from __future__ import annotations

from .anomaly import (
    AUPROMetric,
    DiceAtThresholdMetric,
    F1MaxMetric,
    ImageAUROCMetric,
    PixelAUROCMetric,
    compute_aupro,
    compute_dice_at_threshold,
    compute_f1_max,
    compute_f1_max_threshold,
    compute_image_auroc,
    compute_pixel_auroc,
    compute_pro_curve,
)
from .bootstrap import bootstrap_auroc_difference, bootstrap_image_auroc, weighted_image_aurocs
from .handlers import AUPRO, DiceAtThreshold, F1Max, ImageAUROC, PixelAUROC
