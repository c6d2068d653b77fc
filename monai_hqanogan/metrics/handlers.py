"""Ignite metric handlers for the anomaly-detection metrics, for MONAI evaluators (``key_val_metric`` and friends).

Each handler wraps one metric class of :mod:`monai_hqanogan.metrics.anomaly` in MONAI's ``IgniteMetricHandler``,
like ``monai.handlers.ROCAUC`` wraps ``ROCAUCMetric``: predictions and ground truth are gathered over an epoch and
the metric is computed once at its end, so ``engine.state.metrics[name]`` holds a float.

References:
    - Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 129, 2021,
      https://doi.org/10.1007/s11263-020-01400-4 (AU-PRO).
    - MONAI's ``monai.handlers.ROCAUC``, https://docs.monai.io/en/stable/handlers.html
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers.ignite_metric import IgniteMetricHandler

from monai_hqanogan.metrics.anomaly import (
    AUPROMetric,
    DiceAtThresholdMetric,
    F1MaxMetric,
    ImageAUROCMetric,
    PixelAUROCMetric,
)

__all__ = ["ImageAUROC", "PixelAUROC", "AUPRO", "F1Max", "DiceAtThreshold"]


class ImageAUROC(IgniteMetricHandler):
    """Image-level ROC AUC over an epoch; ``y_pred`` are [B] or [B, 1] anomaly scores, ``y`` binary labels.

    Args:
        output_transform: callable turning ``engine.state.output`` into the pair ``(y_pred, y)``: batch-first
            tensors or lists of channel-first tensors, e.g. ``monai.handlers.from_engine(["pred", "label"])`` in a
            MONAI evaluator, or ``lambda out: (out["pred"], out["label"])``.
    """

    def __init__(self, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=ImageAUROCMetric(), output_transform=output_transform, save_details=False)


class PixelAUROC(IgniteMetricHandler):
    """Pixel-level ROC AUC over an epoch; ``y_pred`` are anomaly maps [B, 1, H, W] (or 3-D), ``y`` binary masks.

    Args:
        output_transform: callable turning ``engine.state.output`` into the pair ``(y_pred, y)`` (see
            :class:`ImageAUROC`).
    """

    def __init__(self, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=PixelAUROCMetric(), output_transform=output_transform, save_details=False)


class AUPRO(IgniteMetricHandler):
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` over an epoch.

    ``y_pred`` are anomaly maps [B, 1, H, W] (or [B, H, W], [B, 1, D, H, W]), ``y`` binary masks.

    Args:
        fpr_limit: the upper integration limit of the false-positive rate, in (0, 1]; 0.3 as in MVTec AD.
        num_thresholds: None (exact) or the number of evenly spaced thresholds (approximate).
        output_transform: callable turning ``engine.state.output`` into the pair ``(y_pred, y)`` (see
            :class:`ImageAUROC`).
    """

    def __init__(
        self, fpr_limit: float = 0.3, num_thresholds: int | None = None, output_transform: Callable = lambda x: x
    ) -> None:
        metric_fn = AUPROMetric(fpr_limit=fpr_limit, num_thresholds=num_thresholds)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=False)


class F1Max(IgniteMetricHandler):
    """Maximum F1 over all thresholds over an epoch, of image scores or (``pixel_level=True``) of all pixels.

    After the epoch, the threshold reaching the maximum is ``handler.metric_fn.threshold``.

    Args:
        pixel_level: False (``y_pred`` are [B] or [B, 1] scores, ``y`` labels) or True (anomaly maps and masks).
        output_transform: callable turning ``engine.state.output`` into the pair ``(y_pred, y)`` (see
            :class:`ImageAUROC`).
    """

    def __init__(self, pixel_level: bool = False, output_transform: Callable = lambda x: x) -> None:
        metric_fn = F1MaxMetric(pixel_level=pixel_level)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=False)


class DiceAtThreshold(IgniteMetricHandler):
    """Dice of ``anomaly map >= threshold`` against the masks, over all images of an epoch.

    Args:
        threshold: pixels with ``map >= threshold`` are predicted anomalous.
        output_transform: callable turning ``engine.state.output`` into the pair ``(y_pred, y)`` (see
            :class:`ImageAUROC`).
    """

    def __init__(self, threshold: float, output_transform: Callable = lambda x: x) -> None:
        metric_fn = DiceAtThresholdMetric(threshold=threshold)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=False)
