"""Anomaly-detection metrics: image and pixel AUROC, F1-max, AUPRO and Dice at a threshold, plus MONAI metric classes.

All functions take torch tensors (any device, any float/int/bool dtype), numpy arrays or nested lists, compute in
float64 numpy and return Python floats. Everything is sort- or count-based (O(n log n)), so a few million pixels
take well under a second.

References:
    - Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27(8), 2006,
      https://doi.org/10.1016/j.patrec.2005.10.010 (ROC AUC with tied scores counted 1/2).
    - Bergmann, Batzner, Fauser, Sattlegger, Steger, "The MVTec Anomaly Detection Dataset: A Comprehensive
      Real-World Dataset for Unsupervised Anomaly Detection", IJCV 129, 2021,
      https://doi.org/10.1007/s11263-020-01400-4 (per-region overlap, PRO, and its normalised area up to an FPR of
      0.3).
    - Zou, Jeong, Pemula, Zhang, Dabeer, "SPot-the-Difference Self-supervised Pre-training for Anomaly Detection
      and Segmentation" (VisA), ECCV 2022, https://doi.org/10.1007/978-3-031-20056-4_23 (F1-max).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from skimage.measure import label as label_regions

__all__ = [
    "compute_image_auroc",
    "compute_pixel_auroc",
    "compute_f1_max",
    "compute_f1_max_threshold",
    "compute_pro_curve",
    "compute_aupro",
    "compute_dice_at_threshold",
    "ImageAUROCMetric",
    "PixelAUROCMetric",
    "AUPROMetric",
    "F1MaxMetric",
    "DiceAtThresholdMetric",
]


# ---------------------------------------------------------------------------------------------------------------------
# input checking


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a float64 numpy array (a copy for tensors); raise if it is empty."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a tensor or an array of numbers, got {type(x).__name__}: {e}") from e
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)}); nothing to evaluate.")
    return arr


def _check_no_nan(arr: np.ndarray, name: str) -> None:
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s); the metric is undefined.")


def _check_binary(arr: np.ndarray, name: str) -> np.ndarray:
    """Return a boolean copy of ``arr`` after checking that it holds only 0 and 1."""
    is_binary = (arr == 0) | (arr == 1)
    if not is_binary.all():
        bad = np.unique(arr[~is_binary])
        shown = ", ".join(repr(float(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(f"{name} must be binary (0 = normal, 1 = anomalous), found other values: {shown}.")
    return arr == 1


def _scores_and_labels(scores: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 scores and boolean labels of the same length with both classes present."""
    s = _as_float64(scores, "scores")
    y = _as_float64(labels, "labels")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D ([N] or [N, 1]), got shape {tuple(s.shape)}.")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D ([N] or [N, 1]), got shape {tuple(y.shape)}.")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}.")
    _check_no_nan(s, "scores")
    y_bool = _check_binary(y, "labels")
    _check_both_classes(y_bool, "labels", what)
    return s, y_bool


def _check_both_classes(y: np.ndarray, name: str, what: str) -> None:
    num_pos = int(y.sum())
    if num_pos == 0 or num_pos == y.size:
        only = "1 (anomalous)" if num_pos else "0 (normal)"
        raise ValueError(f"{name} contain only one class ({only}); {what} needs both normal and anomalous samples.")


def _squeeze_channel(arr: np.ndarray) -> np.ndarray:
    """[N, 1, *spatial] -> [N, *spatial] (only for 4-D and 5-D input, so [N, H, W] is left alone)."""
    if arr.ndim >= 4 and arr.shape[1] == 1:
        return arr[:, 0]
    return arr


def _maps_and_masks(maps: Any, masks: Any, spatial: bool) -> tuple[np.ndarray, np.ndarray]:
    """Float64 maps and boolean masks of the same shape (a channel dim of size 1 squeezed away).

    With ``spatial=True`` the result must be [N, H, W] (2-D images) or [N, D, H, W] (3-D volumes).
    """
    m = _squeeze_channel(_as_float64(maps, "maps"))
    g = _squeeze_channel(_as_float64(masks, "masks"))
    if m.shape != g.shape:
        raise ValueError(
            f"maps and masks must have the same shape (after dropping a channel dim of size 1), got "
            f"{tuple(m.shape)} and {tuple(g.shape)}."
        )
    if spatial and m.ndim not in (3, 4):
        raise ValueError(
            "maps and masks must be [N, H, W], [N, 1, H, W] or [N, 1, D, H, W] (a batch of 2-D images or 3-D "
            f"volumes), got shape {tuple(m.shape)}."
        )
    _check_no_nan(m, "maps")
    return m, _check_binary(g, "masks")


# ---------------------------------------------------------------------------------------------------------------------
# curves


def _binary_clf_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positive counts when predicting ``score >= t``, for every distinct score ``t`` (descending).

    Returns:
        ``(tps, fps, thresholds)``: int64 counts and the float64 thresholds, all of length = number of distinct
        scores.
    """
    order = np.argsort(scores)[::-1]
    s = scores[order]
    # last index of each run of equal values (compare values, not differences, so that +-inf runs stay whole)
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    tps = np.cumsum(labels[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return tps, fps, s[ends]


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC from counts: every (positive, negative) pair is ordered correctly (1), tied (1/2) or wrong (0)."""
    tps, fps, _ = _binary_clf_counts(scores, labels)
    pos_in_group = np.diff(tps, prepend=0).astype(np.float64)
    neg_in_group = np.diff(fps, prepend=0).astype(np.float64)
    pos_above = tps - pos_in_group
    # integers and halves below 2**53 for up to ~1e8 samples, so this sum is exact
    correct_pairs = np.sum(neg_in_group * (pos_above + 0.5 * pos_in_group))
    return float(correct_pairs / (float(tps[-1]) * float(fps[-1])))


def _f1_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tps, fps, thresholds = _binary_clf_counts(scores, labels)
    num_pos = tps[-1]
    # F1 = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + #positives)
    f1 = 2.0 * tps / (tps + fps + num_pos).astype(np.float64)
    return f1, thresholds


def _integrate_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the piecewise-linear curve (x nondecreasing) from ``x[0]`` to ``limit``.

    The curve is cut at ``limit`` by linear interpolation between the last point with ``x <= limit`` and the
    first with ``x > limit``.
    """
    stop = int(np.searchsorted(x, limit, side="right"))  # x[:stop] <= limit < x[stop:]
    xs, ys = x[:stop], y[:stop]
    if stop < x.size and stop > 0:
        x0, x1, y0, y1 = x[stop - 1], x[stop], y[stop - 1], y[stop]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.append(xs, limit), np.append(ys, y_limit)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) * 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# public functions


def compute_image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of image-level anomaly scores (higher = more anomalous).

    Exact and rank-based: each (anomalous, normal) pair counts 1 if the anomalous image scores higher, 1/2 if the
    scores tie, 0 otherwise; this equals ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: [N] or [N, 1] anomaly scores.
        labels: [N] or [N, 1] binary labels, 1 = anomalous.

    Raises:
        ValueError: empty input, mismatched lengths, NaN in ``scores``, non-binary ``labels`` or a single class.
    """
    s, y = _scores_and_labels(scores, labels, "ROC AUC")
    return _auroc(s, y)


def compute_pixel_auroc(maps: Any, masks: Any) -> float:
    """Area under the ROC curve of all pixels (voxels) of anomaly maps against the ground-truth masks.

    Args:
        maps: anomaly maps, [N, H, W], [N, 1, H, W] or [N, 1, D, H, W] (any shape works if ``masks`` matches).
        masks: binary ground truth of the same shape (a channel dim of size 1 may be present in one and not the
            other), 1 = anomalous pixel.

    Raises:
        ValueError: empty input, mismatched shapes, NaN in ``maps``, non-binary ``masks`` or a single class.
    """
    m, g = _maps_and_masks(maps, masks, spatial=False)
    _check_both_classes(g, "masks", "pixel ROC AUC")
    return _auroc(m.ravel(), g.ravel())


def compute_f1_max_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """Maximum F1 over all thresholds, and the threshold that reaches it.

    Every distinct score is a threshold; predicting ``score >= threshold`` as anomalous gives the returned F1.
    When several thresholds reach the maximum, the highest is returned.

    Args:
        scores: [N] or [N, 1] anomaly scores.
        labels: [N] or [N, 1] binary labels, 1 = anomalous.

    Returns:
        ``(f1_max, threshold)``.

    Raises:
        ValueError: empty input, mismatched lengths, NaN in ``scores``, non-binary ``labels`` or a single class.
    """
    s, y = _scores_and_labels(scores, labels, "F1-max")
    f1, thresholds = _f1_curve(s, y)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def compute_f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over all thresholds (see :func:`compute_f1_max_threshold`).

    Args:
        scores: [N] or [N, 1] anomaly scores.
        labels: [N] or [N, 1] binary labels, 1 = anomalous.
    """
    return compute_f1_max_threshold(scores, labels)[0]


def _region_ids(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of every mask (8-connectivity in 2-D, 26 in 3-D), numbered 1..K across all images."""
    ids = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i in range(masks.shape[0]):
        regions, num = label_regions(masks[i], connectivity=masks[i].ndim, return_num=True)
        if num:
            ids[i] = np.where(regions > 0, regions + total, 0)
            total += num
    return ids, total


def compute_pro_curve(
    maps: Any, masks: Any, num_thresholds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve of MVTec AD: PRO and false-positive rate against the threshold.

    For a threshold ``t`` the prediction is ``maps >= t``. ``PRO(t)`` is the mean, over all connected components
    ``C`` of all ground-truth masks (8-connectivity in 2-D, full connectivity in 3-D), of ``|pred ∩ C| / |C|``;
    ``FPR(t)`` is the number of predicted normal pixels over the number of normal pixels (of all images).

    The thresholds are all distinct values of ``maps``, from the sort of all pixels; with ``num_thresholds``,
    that many thresholds evenly spaced from the minimum to the maximum of ``maps`` instead (counted by binning,
    faster and approximate).

    Args:
        maps: anomaly maps, [N, H, W], [N, 1, H, W] or [N, 1, D, H, W].
        masks: binary ground truth of the same shape, 1 = anomalous.
        num_thresholds: None (exact) or the number (>= 2) of evenly spaced thresholds.

    Returns:
        ``(fpr, pro, thresholds)``, float64 arrays with the thresholds descending, so ``fpr`` and ``pro`` are
        nondecreasing. The first point is ``(0, 0)`` at threshold ``+inf`` (nothing predicted); the last has
        ``fpr = pro = 1``.

    Raises:
        ValueError: bad shapes or values (see :func:`compute_pixel_auroc`), masks without any anomalous region or
            without any normal pixel, or a bad ``num_thresholds``.
    """
    m, g = _maps_and_masks(maps, masks, spatial=True)
    ids, num_regions = _region_ids(g)
    num_normal = int(g.size - g.sum())
    if num_regions == 0:
        raise ValueError("masks contain no anomalous region (all pixels are 0); PRO is undefined.")
    if num_normal == 0:
        raise ValueError("masks contain no normal pixel (all pixels are 1); the false-positive rate is undefined.")

    ids = ids.ravel()
    values = m.ravel()
    sizes = np.bincount(ids, minlength=num_regions + 1).astype(np.float64)
    region_weight = np.zeros(num_regions + 1)
    region_weight[1:] = 1.0 / (sizes[1:] * num_regions)
    pro_weight = region_weight[ids]  # each region's pixels add up to 1 / num_regions; normal pixels add 0
    is_normal = ids == 0

    if num_thresholds is None:
        order = np.argsort(values)[::-1]
        v = values[order]
        ends = np.append(np.flatnonzero(v[1:] != v[:-1]), v.size - 1)
        pro = np.cumsum(pro_weight[order])[ends]
        false_pos = np.cumsum(is_normal[order], dtype=np.int64)[ends]
        thresholds = v[ends]
    else:
        if isinstance(num_thresholds, bool) or int(num_thresholds) != num_thresholds or num_thresholds < 2:
            raise ValueError(f"num_thresholds must be None or an integer >= 2, got {num_thresholds!r}.")
        vmin, vmax = float(values.min()), float(values.max())
        if not (np.isfinite(vmin) and np.isfinite(vmax)):
            raise ValueError("maps contain inf; evenly spaced thresholds (num_thresholds) need finite maps.")
        grid = np.linspace(vmin, vmax, int(num_thresholds))
        # pixel p is predicted at threshold grid[j] iff grid[j] <= value_p, i.e. iff j <= bin_p
        bins = np.searchsorted(grid, values, side="right") - 1
        pro_per_bin = np.bincount(bins, weights=pro_weight, minlength=grid.size)
        normal_per_bin = np.bincount(bins, weights=is_normal, minlength=grid.size)
        pro = np.cumsum(pro_per_bin[::-1])
        false_pos = np.cumsum(normal_per_bin[::-1])
        thresholds = grid[::-1]

    fpr = np.concatenate([[0.0], false_pos / float(num_normal)])
    pro = np.concatenate([[0.0], pro])
    thresholds = np.concatenate([[np.inf], thresholds])
    return fpr, pro, thresholds


def compute_aupro(maps: Any, masks: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to a false-positive rate of ``fpr_limit`` (MVTec AD's AU-PRO).

    The PRO curve (see :func:`compute_pro_curve`) is integrated over the FPR from 0 to ``fpr_limit`` with the
    trapezoid rule, interpolating linearly at exactly ``fpr_limit``, and divided by ``fpr_limit``: 1 is perfect,
    a constant map gives ``fpr_limit / 2``.

    Args:
        maps: anomaly maps, [N, H, W], [N, 1, H, W] or [N, 1, D, H, W].
        masks: binary ground truth of the same shape, 1 = anomalous.
        fpr_limit: the upper integration limit of the FPR, in (0, 1]; 0.3 as in MVTec AD.
        num_thresholds: None (exact, every distinct value is a threshold) or the number of evenly spaced
            thresholds between the minimum and maximum of ``maps`` (approximate).

    Raises:
        ValueError: as :func:`compute_pro_curve`, or ``fpr_limit`` outside (0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}.")
    fpr, pro, _ = compute_pro_curve(maps, masks, num_thresholds=num_thresholds)
    return _integrate_to_limit(fpr, pro, float(fpr_limit)) / float(fpr_limit)


def compute_dice_at_threshold(maps: Any, masks: Any, threshold: float) -> float:
    """Dice of the segmentation ``maps >= threshold`` against ``masks``, over the whole set of images.

    ``2 * sum(|pred ∩ mask|) / (sum(|pred|) + sum(|mask|))`` with the sums over all images (not a mean of
    per-image Dice); 1.0 when both the prediction and the masks are empty.

    Args:
        maps: anomaly maps, e.g. [N, H, W] or [N, 1, H, W] (any shape that matches ``masks``).
        masks: binary ground truth of the same shape, 1 = anomalous.
        threshold: pixels with ``map >= threshold`` are predicted anomalous.

    Raises:
        ValueError: empty input, mismatched shapes, NaN in ``maps`` or ``threshold``, non-binary ``masks``.
    """
    if np.isnan(threshold):
        raise ValueError("threshold is NaN.")
    m, g = _maps_and_masks(maps, masks, spatial=False)
    intersection, pred_size, mask_size = _dice_counts(m, g, float(threshold))
    return _dice_from_counts(intersection, pred_size, mask_size)


def _dice_counts(maps: np.ndarray, masks: np.ndarray, threshold: float) -> tuple[int, int, int]:
    pred = maps >= threshold
    return int(np.count_nonzero(pred & masks)), int(np.count_nonzero(pred)), int(np.count_nonzero(masks))


def _dice_from_counts(intersection: float, pred_size: float, mask_size: float) -> float:
    if pred_size + mask_size == 0:
        return 1.0
    return float(2.0 * intersection / (pred_size + mask_size))


# ---------------------------------------------------------------------------------------------------------------------
# MONAI metric classes


def _buffered(metric: CumulativeIterationMetric) -> list[torch.Tensor]:
    buffers = metric.get_buffer()
    if buffers is None:
        raise ValueError(f"{type(metric).__name__} has no data: call it on at least one batch before aggregate().")
    return buffers if isinstance(buffers, list) else [buffers]


def _image_level(y_pred: torch.Tensor, y: torch.Tensor | None, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    if y is None:
        raise ValueError(f"{metric} needs the labels y.")
    out = []
    for t, name in ((y_pred, "y_pred"), (y, "y")):
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 1:
            raise ValueError(f"{metric}: {name} must be [B] or [B, 1] image-level values, got shape {tuple(t.shape)}.")
        out.append(t)
    if out[0].shape != out[1].shape:
        raise ValueError(
            f"{metric}: y_pred and y must have the same length, got {out[0].shape[0]} and {out[1].shape[0]}."
        )
    return out[0], out[1]


def _pixel_level(y_pred: torch.Tensor, y: torch.Tensor | None, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    if y is None:
        raise ValueError(f"{metric} needs the ground-truth masks y.")
    p = y_pred[:, 0] if y_pred.ndim >= 4 and y_pred.shape[1] == 1 else y_pred
    g = y[:, 0] if y.ndim >= 4 and y.shape[1] == 1 else y
    if p.shape != g.shape:
        raise ValueError(
            f"{metric}: y_pred (anomaly maps) and y (masks) must have the same shape after dropping a channel dim "
            f"of size 1, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    return p, g


class ImageAUROCMetric(CumulativeIterationMetric):
    """Image-level ROC AUC, accumulated over batches (see :func:`compute_image_auroc`).

    Call it with ``y_pred`` = [B] or [B, 1] anomaly scores and ``y`` = [B] or [B, 1] binary labels (or lists of
    per-image values, as after ``decollate_batch``); ``aggregate()`` returns a float. ``reset()`` clears the data.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return _image_level(y_pred, y, type(self).__name__)

    def aggregate(self) -> float:
        scores, labels = _buffered(self)
        return compute_image_auroc(scores, labels)


class F1MaxMetric(CumulativeIterationMetric):
    """Maximum F1 over all thresholds, accumulated over batches (see :func:`compute_f1_max_threshold`).

    Image level by default (``y_pred`` [B] or [B, 1] scores, ``y`` labels); with ``pixel_level=True``, ``y_pred``
    are anomaly maps and ``y`` masks, and every pixel counts as a sample. ``aggregate()`` returns the F1-max and
    stores the threshold reaching it in ``self.threshold``.

    Args:
        pixel_level: False (image scores) or True (all pixels of anomaly maps).
    """

    def __init__(self, pixel_level: bool = False) -> None:
        super().__init__()
        self.pixel_level = pixel_level
        self.threshold: float | None = None

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.pixel_level:
            return _pixel_level(y_pred, y, type(self).__name__)
        return _image_level(y_pred, y, type(self).__name__)

    def aggregate(self) -> float:
        scores, labels = _buffered(self)
        if self.pixel_level:
            m, g = _maps_and_masks(scores, labels, spatial=False)
            scores, labels = m.ravel(), g.ravel()
        f1, self.threshold = compute_f1_max_threshold(scores, labels)
        return f1


class PixelAUROCMetric(CumulativeIterationMetric):
    """Pixel-level ROC AUC over all accumulated anomaly maps (see :func:`compute_pixel_auroc`).

    Call it with ``y_pred`` = anomaly maps [B, 1, H, W] (or [B, H, W], [B, 1, D, H, W]) and ``y`` = binary masks of
    the same shape; all maps must have the same spatial size. ``aggregate()`` returns a float.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return _pixel_level(y_pred, y, type(self).__name__)

    def aggregate(self) -> float:
        maps, masks = _buffered(self)
        return compute_pixel_auroc(maps, masks)


class AUPROMetric(CumulativeIterationMetric):
    """Normalised area under the per-region-overlap curve over all accumulated maps (see :func:`compute_aupro`).

    Call it with ``y_pred`` = anomaly maps [B, 1, H, W] (or [B, H, W], [B, 1, D, H, W]) and ``y`` = binary masks of
    the same shape; all maps must have the same spatial size. ``aggregate()`` returns a float.

    Args:
        fpr_limit: the upper integration limit of the false-positive rate, in (0, 1].
        num_thresholds: None (exact) or the number of evenly spaced thresholds (approximate).
    """

    def __init__(self, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> None:
        super().__init__()
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}.")
        self.fpr_limit = fpr_limit
        self.num_thresholds = num_thresholds

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return _pixel_level(y_pred, y, type(self).__name__)

    def aggregate(self) -> float:
        maps, masks = _buffered(self)
        return compute_aupro(maps, masks, fpr_limit=self.fpr_limit, num_thresholds=self.num_thresholds)


class DiceAtThresholdMetric(CumulativeIterationMetric):
    """Dice of ``maps >= threshold`` against the masks, over all accumulated images (see
    :func:`compute_dice_at_threshold`).

    Only three counts per image are buffered (intersection, predicted and true anomalous pixels), not the maps.

    Args:
        threshold: pixels with ``map >= threshold`` are predicted anomalous.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        if np.isnan(threshold):
            raise ValueError("threshold is NaN.")
        self.threshold = float(threshold)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        p, g = _pixel_level(y_pred, y, type(self).__name__)
        counts = []
        for i in range(p.shape[0]):
            m_i, g_i = _maps_and_masks(p[i : i + 1], g[i : i + 1], spatial=False)
            counts.append(_dice_counts(m_i, g_i, self.threshold))
        return torch.tensor(counts, dtype=torch.float64).reshape(-1, 3)

    def aggregate(self) -> float:
        (counts,) = _buffered(self)
        intersection, pred_size, mask_size = counts.sum(dim=0).tolist()
        return _dice_from_counts(intersection, pred_size, mask_size)
