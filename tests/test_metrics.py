from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from scipy import ndimage
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from monai_hqanogan.metrics import (
    AUPRO,
    AUPROMetric,
    DiceAtThreshold,
    DiceAtThresholdMetric,
    F1Max,
    F1MaxMetric,
    ImageAUROC,
    ImageAUROCMetric,
    PixelAUROC,
    PixelAUROCMetric,
    compute_aupro,
    compute_dice_at_threshold,
    compute_f1_max,
    compute_f1_max_threshold,
    compute_image_auroc,
    compute_pixel_auroc,
    compute_pro_curve,
)

trapezoid = getattr(np, "trapezoid", None) or np.trapz


# ---------------------------------------------------------------------------------------------------------------------
# data and the slow reference


def random_scores(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.35
    labels[:2] = [True, False]  # both classes
    scores = labels * 0.8 + rng.normal(0.0, 1.0, n)
    if ties:
        scores = np.round(scores * 2) / 2  # a handful of distinct values, many ties across the classes
    return scores, labels


def blob_case(seed: int, n: int = 3, size: int = 16, strength: float = 1.0, decimals: int | None = None):
    """``n`` images with 1-3 disc-shaped anomalies each; maps = mask * strength + noise (rounded: ties)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r = int(rng.integers(1, 4))
            cy, cx = rng.integers(r, size - r, 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = masks * strength + rng.normal(0.0, 0.6, masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


def reference_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Obviously correct and slow: one threshold per distinct value, explicit loops over the components."""
    maps, masks = np.asarray(maps, dtype=float), np.asarray(masks, dtype=bool)
    structure = np.ones((3,) * (masks.ndim - 1))  # 8-connectivity in 2-D, 26 in 3-D
    components = []
    for i in range(masks.shape[0]):
        labelled, num = ndimage.label(masks[i], structure=structure)
        for k in range(1, num + 1):
            components.append((i, labelled == k))
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        overlaps = []
        for i, component in components:
            overlaps.append(pred[i][component].sum() / component.sum())
        pros.append(np.mean(overlaps))
    return np.array(fprs), np.array(pros)


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> tuple[float, bool]:
    """Reference AUPRO, and whether the limit fell strictly between two curve points (needing interpolation)."""
    fprs, pros = reference_pro_curve(maps, masks)
    keep = fprs <= fpr_limit  # a prefix: the FPR grows with falling thresholds
    x, y = list(fprs[keep]), list(pros[keep])
    between = False
    if not keep.all():
        j = int(np.argmax(~keep))  # first point beyond the limit
        x0, x1, y0, y1 = fprs[j - 1], fprs[j], pros[j - 1], pros[j]
        between = x0 < fpr_limit
        x.append(fpr_limit)
        y.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return float(trapezoid(y, x)) / fpr_limit, between


# ---------------------------------------------------------------------------------------------------------------------
# AUROC and F1-max against scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("kind", ["numpy", "torch_float32", "torch_int_labels_column", "numpy_float16"])
def test_image_auroc_equals_sklearn(seed, ties, kind):
    scores, labels = random_scores(seed, 200 + 37 * seed, ties)
    if kind == "numpy":
        args, ref_scores = (scores, labels), scores
    elif kind == "torch_float32":
        args, ref_scores = (torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)), scores.astype(np.float32)
    elif kind == "torch_int_labels_column":
        args, ref_scores = (torch.tensor(scores)[:, None], torch.tensor(labels, dtype=torch.int64)[:, None]), scores
    else:
        args, ref_scores = (scores.astype(np.float16), labels.astype(np.uint8)), scores.astype(np.float16)
    expected = roc_auc_score(labels, ref_scores)
    result = compute_image_auroc(*args)
    assert isinstance(result, float)
    assert result == pytest.approx(expected, abs=1e-10)


def test_image_auroc_counts_ties_as_half():
    # pairs (pos, neg): (0.5 vs 0.5) tie -> 1/2, (0.5 vs 0.2) -> 1, (0.9 vs 0.5) -> 1, (0.9 vs 0.2) -> 1
    assert compute_image_auroc([0.5, 0.9, 0.5, 0.2], [1, 1, 0, 0]) == pytest.approx(3.5 / 4, abs=1e-15)
    assert compute_image_auroc([0.1, 0.2, 0.3], [1, 0, 0]) == 0.0
    assert compute_image_auroc([3, 3, 3, 3], [1, 0, 1, 0]) == 0.5


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_equals_sklearn(seed, ties):
    maps, masks = blob_case(seed, n=4, size=32, decimals=1 if ties else None)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert compute_pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-10)
    # torch, channel dim on the maps only, float32 maps and bool masks
    maps32 = torch.tensor(maps, dtype=torch.float32)[:, None]
    expected32 = roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel())
    assert compute_pixel_auroc(maps32, torch.tensor(masks)) == pytest.approx(expected32, abs=1e-10)


def sklearn_f1_max(labels, scores) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("as_torch", [False, True])
def test_f1_max_equals_sklearn_and_threshold_reaches_it(seed, ties, as_torch):
    scores, labels = random_scores(seed, 150, ties)
    expected = sklearn_f1_max(labels, scores)
    args = (torch.tensor(scores), torch.tensor(labels)) if as_torch else (scores, labels.astype(float))
    assert compute_f1_max(*args) == pytest.approx(expected, abs=1e-10)
    f1, threshold = compute_f1_max_threshold(*args)
    assert f1 == pytest.approx(expected, abs=1e-10)
    assert threshold in set(scores.tolist())
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)


def test_f1_max_by_hand():
    # F1 = 2 TP / (TP + FP + #positives) with 3 positives, predicting score >= t:
    # t=0.9: 2/4 ; t=0.8: 2/5 ; t=0.7: 4/6 ; t=0.4 (tie of a positive and a negative): 6/8 ; t=0.1: 6/9
    scores = [0.9, 0.8, 0.7, 0.4, 0.4, 0.1]
    labels = [1, 0, 1, 1, 0, 0]
    assert compute_f1_max_threshold(scores, labels) == pytest.approx((0.75, 0.4), abs=1e-15)
    labels = [1, 0, 1, 0, 0, 0]  # now t=0.7 is best: 4/(3+2) = 0.8
    assert compute_f1_max_threshold(scores, labels) == pytest.approx((0.8, 0.7), abs=1e-15)


# ---------------------------------------------------------------------------------------------------------------------
# AUPRO


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("decimals", [None, 1])
def test_aupro_equals_slow_reference(seed, fpr_limit, decimals):
    maps, masks = blob_case(seed, strength=1.0 + 0.5 * seed, decimals=decimals)
    expected, _ = reference_aupro(maps, masks, fpr_limit)
    assert compute_aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)
    # torch input with a channel dim gives the same
    got = compute_aupro(torch.tensor(maps)[:, None], torch.tensor(masks)[:, None], fpr_limit=fpr_limit)
    assert got == pytest.approx(expected, abs=1e-6)


def test_aupro_limit_between_two_thresholds():
    maps, masks = blob_case(7, decimals=1)  # few distinct values: the FPR jumps in big steps
    fprs, _ = reference_pro_curve(maps, masks)
    # a limit halfway between two consecutive distinct FPR values near 0.3
    distinct = np.unique(fprs)
    j = int(np.searchsorted(distinct, 0.3))
    fpr_limit = float(distinct[j - 1] + distinct[j]) / 2
    expected, between = reference_aupro(maps, masks, fpr_limit)
    assert between
    assert compute_aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)


def test_aupro_by_hand_with_interpolation_at_the_limit():
    # one region of 2 pixels (values 0.5 and 0.1) and 4 normal pixels (0.9, 0.1, 0.1, 0.1)
    masks = np.array([[[1, 1, 0], [0, 0, 0]]])
    maps = np.array([[[0.5, 0.1, 0.9], [0.1, 0.1, 0.1]]])
    # curve: (0, 0) -> t=.9 (0.25, 0) -> t=.5 (0.25, 0.5) -> t=.1 (1, 1)
    fpr, pro, thresholds = compute_pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0.25, 0.25, 1])
    np.testing.assert_allclose(pro, [0, 0, 0.5, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5, 0.1])
    # at 0.55 the PRO is 0.5 + 0.5 * 0.3 / 0.75 = 0.7, so the area is 0.3 * (0.5 + 0.7) / 2 = 0.18
    assert compute_aupro(maps, masks, fpr_limit=0.55) == pytest.approx(0.18 / 0.55, abs=1e-12)
    assert compute_aupro(maps, masks, fpr_limit=0.25) == pytest.approx(0.0, abs=1e-12)
    assert compute_aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75 * 1.5 / 2, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0])
def test_aupro_perfect_and_constant_maps(fpr_limit):
    _, masks = blob_case(3)
    assert compute_aupro(masks.astype(float), masks, fpr_limit=fpr_limit) == pytest.approx(1.0, abs=1e-9)
    assert compute_aupro(masks * 3.0 - 1.0, masks, fpr_limit=fpr_limit) == pytest.approx(1.0, abs=1e-9)
    # constant map: the curve is one straight line from (0, 0) to (1, 1), so the normalised area is limit / 2
    assert compute_aupro(np.full(masks.shape, 0.7), masks, fpr_limit=fpr_limit) == pytest.approx(fpr_limit / 2)
    # inverted map: every region is found only after all normal pixels, the area is 0
    assert compute_aupro(1.0 - masks, masks, fpr_limit=fpr_limit) == pytest.approx(0.0, abs=1e-12)


def test_pro_curve_uses_8_connectivity_in_2d_and_full_connectivity_in_3d():
    # a diagonal pair (one region with 8-connectivity) and a lone pixel; the map hits one pixel of the pair
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1
    _, pro, _ = compute_pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.25)  # mean(1/2, 0); 4-connectivity would give mean(1, 0, 0) = 1/3
    volume_masks = np.zeros((1, 1, 4, 4, 4))
    volume_masks[0, 0, 0, 0, 0] = volume_masks[0, 0, 1, 1, 1] = volume_masks[0, 0, 3, 3, 3] = 1
    volume_maps = np.zeros((1, 1, 4, 4, 4))
    volume_maps[0, 0, 0, 0, 0] = 1
    _, pro3d, _ = compute_pro_curve(volume_maps, volume_masks)
    assert pro3d[1] == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_3d_equals_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((2, 6, 8, 8), dtype=bool)
    masks[0, 1:3, 2:5, 2:4] = True
    masks[0, 4, 6, 6] = masks[0, 5, 7, 7] = True  # diagonal neighbours in 3-D: one region
    masks[1, 2:5, 1:3, 4:7] = True
    maps = masks * 1.5 + rng.normal(0, 0.7, masks.shape)
    expected, _ = reference_aupro(maps, masks, 0.3)
    assert compute_aupro(maps[:, None], masks[:, None]) == pytest.approx(expected, abs=1e-6)


def test_aupro_approximate_mode():
    maps, masks = blob_case(5, strength=4.0)
    maps = np.clip(np.round(maps * 2 + 3), 0, 10)
    maps[0, 0, 0], maps[0, 0, 1] = 0, 10  # min 0, max 10: 11 evenly spaced thresholds are the integers
    exact = compute_aupro(maps, masks)
    assert compute_aupro(maps, masks, num_thresholds=11) == pytest.approx(exact, abs=1e-12)
    assert compute_aupro(maps, masks, num_thresholds=3) != pytest.approx(exact, abs=1e-3)
    smooth_maps, smooth_masks = blob_case(6)
    exact = compute_aupro(smooth_maps, smooth_masks)
    assert compute_aupro(smooth_maps, smooth_masks, num_thresholds=4000) == pytest.approx(exact, abs=2e-3)


def test_large_input_is_fast_and_exact():
    # ~1M pixels with ties; sort-based code takes well under a second (Python loops over pixels would not)
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 512, 512), dtype=bool)
    masks[:, 100:160, 200:300] = True
    masks[1, 300:320, 30:35] = True
    maps = np.round(masks * 0.8 + rng.normal(0, 0.5, masks.shape), 2).astype(np.float32)
    assert compute_pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-10)
    exact = compute_aupro(maps, masks)
    assert 0.0 < exact < 1.0
    assert compute_aupro(maps, masks, num_thresholds=2000) == pytest.approx(exact, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Dice


def test_dice_at_threshold_by_hand():
    maps = np.array([[[0.9, 0.2], [0.6, 0.1]], [[0.3, 0.8], [0.5, 0.5]]])
    masks = np.array([[[1, 0], [1, 1]], [[0, 0], [0, 1]]])
    # predicted (>= 0.5): 5 pixels; masks: 4 pixels; both: (0,0,0), (0,1,0), (1,1,1) -> 2 * 3 / 9
    assert compute_dice_at_threshold(maps, masks, 0.5) == pytest.approx(2 / 3, abs=1e-15)
    assert compute_dice_at_threshold(torch.tensor(maps)[:, None], torch.tensor(masks), 0.5) == pytest.approx(2 / 3)
    # threshold above the maximum: empty prediction
    assert compute_dice_at_threshold(maps, masks, 1.0) == 0.0
    # nothing predicted and nothing to find
    assert compute_dice_at_threshold(maps, np.zeros_like(masks), 2.0) == 1.0
    # over the whole set, not a mean of per-image Dice (which would be (2*2/5 + 2*1/4) / 2 = 0.65)
    assert compute_dice_at_threshold(maps, masks, 0.5) != pytest.approx(0.65)


# ---------------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "fn, args, message",
    [
        (compute_image_auroc, ([0.1, 0.2], [0, 1, 1]), "scores and labels must have the same length"),
        (compute_image_auroc, ([0.1, 0.2, 0.3], [0, 2, 1]), "labels must be binary"),
        (compute_image_auroc, ([0.1, 0.2], [1, 1]), r"labels contain only one class \(1"),
        (compute_image_auroc, ([0.1, 0.2], [0, 0]), r"labels contain only one class \(0"),
        (compute_image_auroc, ([0.1, float("nan")], [0, 1]), "scores contains 1 NaN"),
        (compute_image_auroc, ([], []), "scores is empty"),
        (compute_image_auroc, (np.zeros((2, 2)), [0, 1]), "scores must be 1-D"),
        (compute_f1_max, ([0.1, 0.2], [0, 0]), "F1-max needs both"),
        (compute_f1_max_threshold, (torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.5])), "labels must be binary"),
        (compute_pixel_auroc, (np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "maps and masks must have the same shape"),
        (compute_pixel_auroc, (np.full((1, 2, 2), np.nan), np.eye(2)[None]), "maps contains 4 NaN"),
        (compute_pixel_auroc, (np.zeros((1, 2, 2)), np.full((1, 2, 2), 255)), "masks must be binary"),
        (compute_pixel_auroc, (np.zeros((1, 2, 2)), np.zeros((1, 2, 2))), "masks contain only one class"),
        (compute_pixel_auroc, (np.zeros((0, 2, 2)), np.zeros((0, 2, 2))), "maps is empty"),
        (compute_aupro, (np.zeros((2, 4, 4)), np.zeros((2, 4, 4))), "no anomalous region"),
        (compute_aupro, (np.zeros((2, 4, 4)), np.ones((2, 4, 4))), "no normal pixel"),
        (compute_aupro, (np.zeros(4), np.array([0, 1, 0, 0])), r"must be \[N, H, W\]"),
        (compute_aupro, (np.zeros((1, 3, 3)), np.eye(3)[None], 0.0), "fpr_limit must be in"),
        (compute_aupro, (np.zeros((1, 3, 3)), np.eye(3)[None], 0.3, 1), "num_thresholds must be"),
        (compute_dice_at_threshold, (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), float("nan")), "threshold is NaN"),
        (compute_dice_at_threshold, (np.zeros((1, 2, 2)), np.zeros((1, 3, 2)), 0.5), "same shape"),
    ],
)
def test_bad_input_raises_a_clear_value_error(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


# ---------------------------------------------------------------------------------------------------------------------
# MONAI metric classes


def image_data(seed: int = 0):
    scores, labels = random_scores(seed, 40, ties=True)
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def pixel_data(seed: int = 0):
    maps, masks = blob_case(seed, n=6)
    return torch.tensor(maps, dtype=torch.float32)[:, None], torch.tensor(masks, dtype=torch.float32)[:, None]


METRIC_CASES = [
    (ImageAUROCMetric, {}, image_data, compute_image_auroc),
    (F1MaxMetric, {}, image_data, compute_f1_max),
    (PixelAUROCMetric, {}, pixel_data, compute_pixel_auroc),
    (AUPROMetric, {"fpr_limit": 0.2}, pixel_data, lambda m, g: compute_aupro(m, g, fpr_limit=0.2)),
    (F1MaxMetric, {"pixel_level": True}, pixel_data, lambda m, g: compute_f1_max(m.ravel(), g.ravel())),
    (DiceAtThresholdMetric, {"threshold": 0.5}, pixel_data, lambda m, g: compute_dice_at_threshold(m, g, 0.5)),
]


@pytest.mark.parametrize("metric_cls, kwargs, make_data, fn", METRIC_CASES)
@pytest.mark.parametrize("as_list", [False, True])
def test_metric_classes_accumulate_batches_and_reset(metric_cls, kwargs, make_data, fn, as_list):
    metric = metric_cls(**kwargs)
    y_pred, y = make_data(0)
    splits = [0, 2, 3, len(y)]  # uneven batches
    for a, b in zip(splits[:-1], splits[1:]):
        if as_list:  # decollated, channel-first items
            metric(y_pred=list(y_pred[a:b]), y=list(y[a:b]))
        else:
            metric(y_pred=y_pred[a:b], y=y[a:b])
    expected = fn(y_pred, y)
    assert metric.aggregate() == pytest.approx(expected, abs=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="has no data"):
        metric.aggregate()
    y_pred2, y2 = make_data(1)
    metric(y_pred=y_pred2, y=y2)
    assert metric.aggregate() == pytest.approx(fn(y_pred2, y2), abs=1e-12)
    assert fn(y_pred2, y2) != pytest.approx(expected)


def test_f1_max_metric_keeps_the_threshold():
    scores, labels = image_data(2)
    metric = F1MaxMetric()
    metric(scores[:10], labels[:10])
    metric(scores[10:], labels[10:])
    assert (metric.aggregate(), metric.threshold) == pytest.approx(compute_f1_max_threshold(scores, labels))


def test_metric_classes_reject_mismatched_batches():
    with pytest.raises(ValueError, match="same length"):
        ImageAUROCMetric()(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"must be \[B\] or \[B, 1\]"):
        ImageAUROCMetric()(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        AUPROMetric()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="masks must be binary"):
        DiceAtThresholdMetric(threshold=0.5)(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2.0))


# ---------------------------------------------------------------------------------------------------------------------
# ignite handlers


HANDLER_CASES = [
    (ImageAUROC, {}, image_data, compute_image_auroc),
    (F1Max, {}, image_data, compute_f1_max),
    (PixelAUROC, {}, pixel_data, compute_pixel_auroc),
    (AUPRO, {"fpr_limit": 0.3}, pixel_data, compute_aupro),
    (DiceAtThreshold, {"threshold": 0.4}, pixel_data, lambda m, g: compute_dice_at_threshold(m, g, 0.4)),
]


@pytest.mark.parametrize("handler_cls, kwargs, make_data, fn", HANDLER_CASES)
def test_handler_puts_the_epoch_value_in_engine_state_metrics(handler_cls, kwargs, make_data, fn):
    y_pred, y = make_data(3)
    batches = [slice(0, 2), slice(2, 5), slice(5, None)]

    def step(engine, batch):
        return {"pred": y_pred[batch], "label": y[batch]}

    engine = Engine(step)
    handler = handler_cls(output_transform=lambda out: (out["pred"], out["label"]), **kwargs)
    handler.attach(engine, "anomaly_metric")
    engine.run(batches, max_epochs=2)  # the second epoch starts from a reset metric
    assert engine.state.metrics["anomaly_metric"] == pytest.approx(fn(y_pred, y), abs=1e-12)


def test_handlers_in_a_monai_evaluator():
    maps, masks = blob_case(4, n=5)
    data = [
        {"image": torch.tensor(m, dtype=torch.float32)[None], "label": torch.tensor(g, dtype=torch.float32)[None]}
        for m, g in zip(maps, masks)
    ]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),  # the "anomaly map" is the image itself
        key_val_metric={"val_aupro": AUPRO(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={"val_pixel_auroc": PixelAUROC(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    assert evaluator.state.metrics["val_aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3)[0], abs=1e-6)
    expected_auroc = roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel())
    assert evaluator.state.metrics["val_pixel_auroc"] == pytest.approx(expected_auroc, abs=1e-10)
    assert evaluator.state.best_metric == pytest.approx(evaluator.state.metrics["val_aupro"])
