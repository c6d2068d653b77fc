"""Near-duplicate grouping and group-aware splits of a preparation (:mod:`monai_hqanogan.data.datalist_writer`).

Near-duplicate images (a slice re-windowed or re-encoded, neighbouring slices of one scan) in two splits leak: a
model scored on an image it trained on looks better than it is. :func:`group_near_duplicates` links images whose
standardised thumbnails (:func:`image_thumbnail`) correlate at or above a threshold and takes the connected
components as groups; :func:`split_groups` assigns whole groups to training / validation / test (training holds
normal images only), deterministically for a seed, and :func:`check_groups_disjoint` checks that no group is in two
splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "SPLIT_KEYS",
    "LOCALISATION_KEYS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THUMBNAIL_SIZE",
    "DEFAULT_NORMAL_FRACTIONS",
    "DEFAULT_ABNORMAL_FRACTIONS",
    "image_thumbnail",
    "group_near_duplicates",
    "renumber_groups",
    "check_fractions",
    "split_groups",
    "check_groups_disjoint",
    "describe_groups",
]

#: the image-level splits, in order; training holds normal images only
SPLIT_KEYS = ("training", "validation", "test")
#: the synthetic-lesion sets made from the normal images of validation and test
LOCALISATION_KEYS = ("localisation_validation", "localisation_test")
#: Pearson correlation of 24 x 24 thumbnails above which two images are linked (measured on Br35H, see br35h.py)
DEFAULT_THRESHOLD = 0.95
DEFAULT_THUMBNAIL_SIZE = 24
#: fractions of the normal images in (training, validation, test)
DEFAULT_NORMAL_FRACTIONS = (0.6, 0.15, 0.25)
#: fractions of the abnormal images in (validation, test)
DEFAULT_ABNORMAL_FRACTIONS = (1 / 3, 2 / 3)


def image_thumbnail(image: np.ndarray, size: int = DEFAULT_THUMBNAIL_SIZE) -> np.ndarray:
    """A ``size`` x ``size`` thumbnail (box-filtered, squashed to a square), flattened to float32.

    Args:
        image: [H, W] array of any numeric type.
        size: side of the thumbnail.
    """
    thumb = Image.fromarray(np.asarray(image, dtype=np.float32)).resize((size, size), Image.BOX)
    return np.asarray(thumb, dtype=np.float32).ravel()


def group_near_duplicates(
    thumbnails: np.ndarray, threshold: float = DEFAULT_THRESHOLD, block: int = 2048
) -> np.ndarray:
    """Group near-duplicate images: connected components of the graph of thumbnail pairs correlated >= threshold.

    Each thumbnail is standardised (zero mean, unit variance), so the Pearson correlation of two thumbnails is their
    mean product, which ignores re-windowing (any positive affine change of intensity) and is robust to re-encoding
    and small resampling differences. Pairs with correlation >= ``threshold`` are linked and the connected
    components are the groups (single linkage: chains of links merge, so a lower threshold gives fewer, larger
    groups). The correlation matrix is computed in row blocks, so memory stays O(block x N). Constant thumbnails
    correlate with nothing and stay alone.

    Args:
        thumbnails: [N, ...] thumbnails (flattened per image), e.g. from :func:`image_thumbnail`.
        threshold: correlation at or above which two images are linked, in (-1, 1].
        block: rows of the correlation matrix computed at once.

    Returns:
        int64 group ids [N], numbered 0, 1, ... in order of first appearance (deterministic).
    """
    x = np.asarray(thumbnails, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"thumbnails must be [N, ...] with N >= 1, got shape {x.shape}.")
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (-1, 1], got {threshold}.")
    x = x.reshape(x.shape[0], -1)
    x = x - x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    x = np.where(std > 0, x / np.where(std > 0, std, 1.0), 0.0) / math.sqrt(x.shape[1])
    n = x.shape[0]
    rows, cols = [], []
    for start in range(0, n, block):
        corr = x[start : start + block] @ x.T
        r, c = np.nonzero(corr >= threshold - 1e-9)
        keep = r + start < c  # each pair once, no self-links
        rows.append(r[keep] + start)
        cols.append(c[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, components = connected_components(graph, directed=False)
    return renumber_groups(components)


def renumber_groups(keys: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Group ids 0, 1, ... in order of first appearance of each distinct key."""
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in np.asarray(keys).tolist()], dtype=np.int64)


def check_fractions(fractions: Sequence[float], count: int, name: str) -> np.ndarray:
    """``fractions`` normalised to sum 1; ``ValueError`` naming ``name`` unless they are ``count`` non-negative
    fractions that sum to 1 (within 1e-3)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (count,) or (f < 0).any() or not abs(f.sum() - 1.0) <= 1e-3:
        raise ValueError(f"{name} must be {count} non-negative fractions that sum to 1, got {tuple(fractions)}.")
    return f / f.sum()


def _assign(sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign groups of the given sizes to len(fractions) bins, so that bin totals approach the fractions.

    Groups are visited largest first (random order among equal sizes); each goes to a bin drawn with probability
    proportional to the bin's remaining deficit, so the large groups land in random bins while there is room and
    the small ones fill the remainders exactly. When every bin is full the least-overfull allowed bin is used.
    """
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    targets = fractions * sizes.sum()
    filled = np.zeros(len(fractions))
    allowed = fractions > 0
    out = np.empty(len(sizes), dtype=np.int64)
    for g in order:
        deficit = targets - filled
        weights = np.where(allowed, np.clip(deficit, 0, None), 0.0)
        if weights.sum() > 0:
            k = int(rng.choice(len(fractions), p=weights / weights.sum()))
        else:
            k = int(np.argmax(np.where(allowed, deficit / np.maximum(targets, 1e-12), -np.inf)))
        out[g] = k
        filled[k] += sizes[g]
    return out


def split_groups(
    groups: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    normal_fractions: Sequence[float] = DEFAULT_NORMAL_FRACTIONS,
    abnormal_fractions: Sequence[float] = DEFAULT_ABNORMAL_FRACTIONS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split items into training / validation / test by whole groups, deterministically for a seed.

    Groups of normal images only are distributed over (training, validation, test) by ``normal_fractions`` of the
    normal images; groups holding any abnormal image (including the rare mixed groups, whose normal images go with
    them) over (validation, test) by ``abnormal_fractions`` of the abnormal images. So training holds normal images
    only, and no group is in two splits (checked before returning).

    Args:
        groups: group id per item.
        labels: 0 (normal) or 1 (abnormal) per item.
        normal_fractions: fractions of normal images in training, validation, test (sum 1).
        abnormal_fractions: fractions of abnormal images in validation, test (sum 1).
        seed: seed of the split.

    Returns:
        ``{"training": indices, "validation": indices, "test": indices}``, sorted int64 arrays.
    """
    groups, labels = np.asarray(groups, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if groups.shape != labels.shape or groups.ndim != 1:
        raise ValueError(f"groups and labels must be 1D of equal length, got {groups.shape} and {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal).")
    fn = check_fractions(normal_fractions, 3, "normal_fractions")
    fa = np.concatenate([[0.0], check_fractions(abnormal_fractions, 2, "abnormal_fractions")])
    ids, inverse = np.unique(groups, return_inverse=True)
    abnormal_count = np.bincount(inverse, weights=labels, minlength=len(ids))
    normal_count = np.bincount(inverse, weights=1 - labels, minlength=len(ids))
    has_abnormal = abnormal_count > 0
    rng = np.random.default_rng(seed)
    split_of_group = np.empty(len(ids), dtype=np.int64)
    if (~has_abnormal).any():
        split_of_group[~has_abnormal] = _assign(normal_count[~has_abnormal], fn, rng)
    if has_abnormal.any():
        split_of_group[has_abnormal] = _assign(abnormal_count[has_abnormal], fa, rng)
    item_split = split_of_group[inverse]
    splits = {key: np.nonzero(item_split == k)[0] for k, key in enumerate(SPLIT_KEYS)}
    check_groups_disjoint(splits, groups)
    if labels[splits["training"]].any():
        raise RuntimeError("internal error: an abnormal image was assigned to training.")
    return splits


def check_groups_disjoint(splits: Mapping[str, Sequence[int]], groups: Sequence[int] | np.ndarray) -> None:
    """Raise ``RuntimeError`` when a group has items in two splits (``splits`` maps names to item indices)."""
    groups = np.asarray(groups)
    seen: dict[int, str] = {}
    for name, index in splits.items():
        for g in np.unique(groups[np.asarray(index, dtype=np.int64)]).tolist():
            if seen.setdefault(g, name) != name:
                raise RuntimeError(f"group {g} is in two splits ({seen[g]!r} and {name!r}): the split would leak.")


def describe_groups(groups: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Counts of groups: with normal images, with abnormal images, mixing both, the largest, and singletons."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    normal, abnormal = set(groups[labels == 0].tolist()), set(groups[labels == 1].tolist())
    sizes = np.bincount(renumber_groups(groups))
    return {
        "groups": int(len(sizes)),
        "normal_groups": len(normal),
        "abnormal_groups": len(abnormal),
        "mixed_groups": len(normal & abnormal),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "singletons": int((sizes == 1).sum()),
    }
