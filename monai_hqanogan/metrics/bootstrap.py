"""How sure is an image AUROC? Group-aware bootstrap intervals for one method and for the difference of two.

A test set of brain slices is not a set of independent images: Br35H holds near-duplicates (the same slice
re-windowed or re-encoded), and the group-aware split keeps each group of them whole, so the test set's 375 normal
slices come from only 55 groups, one of them 74 slices strong. Resampling images one by one would treat each copy as
new evidence and give intervals far too narrow. These functions resample whole groups instead (the cluster
bootstrap), within each class so that every resample holds both classes (a group holding both classes, such as a
normal slice and the same slice with a synthetic lesion pasted in, is drawn whole), and weight each image by the
number of times its group was drawn. With one group per image they are the ordinary stratified bootstrap.

What the intervals cover: which test images happened to be drawn (from the groups of the population they stand for).
They do not cover the training's randomness (seeds, data order): for that, train several seeds and report their
spread beside these intervals.

References:
    - Efron, Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993,
      https://doi.org/10.1201/9780429246593 (percentile intervals, chapter 13).
    - Field, Welsh, "Bootstrapping clustered data", Journal of the Royal Statistical Society B 69(3), 2007,
      https://doi.org/10.1111/j.1467-9868.2007.00593.x (resampling whole clusters).
    - Hanley, McNeil, "The meaning and use of the area under a receiver operating characteristic (ROC) curve",
      Radiology 143(1), 1982, https://doi.org/10.1148/radiology.143.1.7063747 (AUROC as the Mann-Whitney
      probability, ties counted 1/2).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .anomaly import _scores_and_labels, compute_image_auroc

__all__ = ["bootstrap_image_auroc", "bootstrap_auroc_difference", "weighted_image_aurocs"]

_CHUNK_ELEMENTS = 4_000_000  # resamples x images per pass: about 32 MB of float64 per array


def weighted_image_aurocs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The image AUROC under each row of ``weights`` (ties count 1/2), as if image ``i`` were there ``w[b, i]`` times.

    With integer weights this is exactly the AUROC of the data with each image repeated that many times.

    Args:
        scores: [N] float scores, higher = more anomalous (no NaN).
        labels: [N] bool, True = anomalous.
        weights: [B, N] non-negative weights; every row needs weight on both classes.

    Returns:
        [B] float64 AUROCs.
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # the first image of each run of equal scores
    out = np.empty(weights.shape[0])
    step = max(1, _CHUNK_ELEMENTS // max(1, len(s)))
    for b in range(0, weights.shape[0], step):
        w = weights[b : b + step][:, order]
        neg = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)  # [b, U] normal weight at each distinct score
        pos = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # normal weight strictly below each distinct score
        total = pos.sum(1) * neg.sum(1)
        if not bool((total > 0).all()):
            raise ValueError("a weight row leaves one class empty: the AUROC needs weight on both classes.")
        out[b : b + step] = (pos * (below + 0.5 * neg)).sum(1) / total
    return out


def _group_weights(
    labels: np.ndarray, groups: Sequence[Hashable] | None, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, int]]:
    """[num_samples, N] weights of a bootstrap that draws whole groups, and the number of groups holding each class.

    Groups are drawn within strata by the classes they hold (only normal, only abnormal, both), so every resample
    holds both classes and a group holding both (a normal slice and the same slice with a lesion pasted in) is drawn
    as one unit.
    """
    n = labels.size
    if groups is None:
        keys: list[Any] = list(range(n))
    else:
        keys = list(groups)
        if len(keys) != n:
            raise ValueError(f"groups must have one entry per image ({n}), got {len(keys)}.")
    ids: dict[Any, int] = {}
    try:
        member = np.array([ids.setdefault(k, len(ids)) for k in keys])
    except TypeError as e:
        raise ValueError(f"groups must be hashable values (numbers or strings): {e}") from e
    has_normal = np.bincount(member, weights=~labels, minlength=len(ids)) > 0
    has_abnormal = np.bincount(member, weights=labels, minlength=len(ids)) > 0
    draws = np.zeros((num_samples, len(ids)))
    for stratum in (has_normal & ~has_abnormal, has_abnormal & ~has_normal, has_normal & has_abnormal):
        index = np.flatnonzero(stratum)
        if index.size:
            draws[:, index] = rng.multinomial(index.size, np.full(index.size, 1.0 / index.size), size=num_samples)
    counts = {"normal": int(has_normal.sum()), "abnormal": int(has_abnormal.sum())}
    return draws[:, member], counts


def _check_args(num_samples: int, confidence: float) -> None:
    if int(num_samples) != num_samples or num_samples < 100:
        raise ValueError(f"num_samples must be an integer >= 100, got {num_samples!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")


def _summary(values: np.ndarray, confidence: float, counts: dict[str, int]) -> dict[str, Any]:
    """The percentile interval of the resampled ``values``, their spread, and how they were made."""
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"low": float(low), "high": float(high), "sd": float(values.std(ddof=1)), "confidence": confidence,
            "num_samples": int(values.size), "num_groups": counts}  # fmt: skip


def bootstrap_image_auroc(
    scores: Any,
    labels: Any,
    groups: Sequence[Hashable] | None = None,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The image AUROC with a percentile bootstrap interval that resamples whole groups within each class.

    Args:
        scores: [N] image scores, higher = more anomalous.
        labels: [N] binary labels, 1 = anomalous; both classes needed.
        groups: [N] group ids (numbers or strings; e.g. the datalist's ``group`` of near-duplicates). None: each image
            is its own group. Groups are drawn within strata by the classes they hold, so a group that holds both
            classes (a slice and the same slice with a synthetic lesion) is drawn whole, both images together.
        num_samples: bootstrap resamples (at least 100).
        confidence: the interval's coverage, e.g. 0.95.
        seed: the resamples' seed (the same inputs and seed give the same interval).

    Returns:
        ``{"auroc", "low", "high", "sd", "confidence", "num_samples", "num_groups": {"normal", "abnormal"}}``: the AUROC
        of the data as given, the interval's ends, the resamples' standard deviation.

    Raises:
        ValueError: NaN scores, non-binary labels, one class only, ``groups`` of the wrong length, bad arguments.
    """
    _check_args(num_samples, confidence)
    s, y = _scores_and_labels(scores, labels, "a bootstrap AUROC interval")
    weights, counts = _group_weights(y, groups, int(num_samples), np.random.default_rng(seed))
    values = weighted_image_aurocs(s, y, weights)
    return {"auroc": compute_image_auroc(s, y), **_summary(values, confidence, counts)}


def bootstrap_auroc_difference(
    scores_a: Any,
    scores_b: Any,
    labels: Any,
    groups: Sequence[Hashable] | None = None,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) of two methods scored on the same images, with a paired group bootstrap interval.

    Both methods are rated on the same resamples, so what the images have in common (easy and hard slices) cancels
    out, and the interval is narrower than the two single intervals would suggest.

    Args:
        scores_a: [N] scores of method a on the images.
        scores_b: [N] scores of method b on the same images, in the same order.
        labels: [N] binary labels, 1 = anomalous.
        groups: as in :func:`bootstrap_image_auroc`.
        num_samples: bootstrap resamples (at least 100).
        confidence: the interval's coverage.
        seed: the resamples' seed.

    Returns:
        ``{"difference", "low", "high", "sd", "share_not_above", "confidence", "num_samples", "num_groups"}``:
        ``share_not_above`` is the share of resamples where a's AUROC is not above b's (a one-sided bootstrap p-value
        for "a is better").

    Raises:
        ValueError: as :func:`bootstrap_image_auroc`, or scores of different lengths.
    """
    _check_args(num_samples, confidence)
    a, y = _scores_and_labels(scores_a, labels, "a bootstrap AUROC difference")
    b, _ = _scores_and_labels(scores_b, labels, "a bootstrap AUROC difference")
    weights, counts = _group_weights(y, groups, int(num_samples), np.random.default_rng(seed))
    values = weighted_image_aurocs(a, y, weights) - weighted_image_aurocs(b, y, weights)
    return {"difference": compute_image_auroc(a, y) - compute_image_auroc(b, y), **_summary(values, confidence, counts),
            "share_not_above": float(np.mean(values <= 0))}  # fmt: skip
