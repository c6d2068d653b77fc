"""Detection and localisation metrics of several methods on several test sets, written as a JSON/Markdown report.

The metrics follow the anomaly-detection conventions of MVTec AD and anomalib: image AUROC and F1-max for detection;
pixel AUROC, AUPRO up to a false-positive rate of 0.3 and Dice for localisation (Bergmann et al., IJCV 2021,
https://doi.org/10.1007/s11263-020-01400-4). Every result should be shown next to the reference baselines of
:mod:`monai_hqanogan.baselines` (mean intensity, PCA, an autoencoder) in the same table.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_hqanogan.metrics import (
    bootstrap_auroc_difference,
    bootstrap_image_auroc,
    compute_aupro,
    compute_dice_at_threshold,
    compute_f1_max_threshold,
    compute_image_auroc,
    compute_pixel_auroc,
)
from monai_hqanogan.utils.checkpoint import atomic_output, write_text_atomic

from .scores_file import write_scores_csv

__all__ = [
    "evaluate_detection",
    "write_evaluation_report",
    "paired_comparisons",
    "markdown_table",
    "format_value",
    "format_interval",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_BOOTSTRAP_SAMPLES",
]

#: above this many pixels, the sort-based pixel metrics run on a deterministic random subset (see evaluate_detection)
DEFAULT_MAX_PIXELS = 2_000_000

#: bootstrap resamples of the image AUROC intervals (see monai_hqanogan.metrics.bootstrap_image_auroc)
DEFAULT_BOOTSTRAP_SAMPLES = 2000

_RESULT_KEYS = ("scores", "labels", "maps", "masks", "pixel_threshold", "groups", "names", "image_threshold")

#: (key, column header, metric kind) of the Markdown tables, in order
_COLUMNS = (
    ("image_auroc", "image AUROC", "image"),
    ("image_auroc_ci_text", "95% interval", "image"),
    ("f1_max", "F1-max", "image"),
    ("fpr_at_threshold", "FPR at threshold", "threshold"),
    ("tpr_at_threshold", "TPR at threshold", "threshold"),
    ("pixel_auroc", "pixel AUROC", "pixel"),
    ("aupro", "AUPRO", "pixel"),
    ("dice", "Dice", "pixel"),
)


# ---------------------------------------------------------------------------------------------------------------------
# metrics


def _flat_numpy(x: Any, name: str) -> np.ndarray:
    """A 1-D numpy view of ``x`` (no copy for a contiguous CPU tensor or array)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        x = x.cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    return arr.reshape(-1)


def _length(x: Any, name: str) -> int:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) == 0:
        raise ValueError(f"{name} must have a batch dimension, got a scalar.")
    return int(shape[0])


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def format_interval(low: float, high: float, digits: int = 3) -> str:
    """A table cell for an interval: ``"[low, high]"`` with ``digits`` decimals."""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _image_metrics(
    scores: Any, labels: Any, groups: Sequence[Any] | None = None, bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES
) -> dict[str, Any]:
    y = _flat_numpy(labels, "labels")
    num_abnormal = int(np.count_nonzero(y == 1))
    num_normal = int(np.count_nonzero(y == 0))
    if num_abnormal + num_normal != y.size:
        raise ValueError("labels must be binary (0 = normal, 1 = anomalous).")
    out: dict[str, Any] = {
        "num_images": int(y.size),
        "num_normal": num_normal,
        "num_abnormal": num_abnormal,
        "image_auroc": None,
        "image_auroc_ci": None,
        "f1_max": None,
        "f1_max_threshold": None,
        "image_note": None,
    }
    if num_abnormal == 0 or num_normal == 0:
        only = "normal" if num_abnormal == 0 else "abnormal"
        out["image_note"] = (
            f"all {y.size} images are {only}: image AUROC and F1-max need both normal and abnormal images."
        )
        return out
    out["image_auroc"] = compute_image_auroc(scores, labels)
    if bootstrap_samples:
        ci = bootstrap_image_auroc(scores, labels, groups, num_samples=bootstrap_samples)
        out["image_auroc_ci"] = {k: ci[k] for k in ("low", "high", "sd", "confidence", "num_samples", "num_groups")}
    f1, threshold = compute_f1_max_threshold(scores, labels)
    out["f1_max"], out["f1_max_threshold"] = f1, _finite_or_none(threshold)
    return out


def _threshold_metrics(scores: Any, labels: Any, image_threshold: float | None) -> dict[str, Any]:
    """The share of normal (FPR) and of abnormal (TPR) images whose score is at or above the method's own image
    threshold (``score >= threshold`` flags an image, as the detector's ``pred_label``); None where a class is absent
    or no threshold is given."""
    out: dict[str, Any] = {"image_threshold": None, "fpr_at_threshold": None, "tpr_at_threshold": None}
    if image_threshold is None:
        return out
    if not math.isfinite(image_threshold):
        raise ValueError(f"image_threshold must be a finite number, got {image_threshold!r}.")
    s, y = _flat_numpy(scores, "scores").astype(np.float64), _flat_numpy(labels, "labels")
    flagged = s >= image_threshold
    out["image_threshold"] = float(image_threshold)
    if np.any(y == 0):
        out["fpr_at_threshold"] = float(flagged[y == 0].mean())
    if np.any(y == 1):
        out["tpr_at_threshold"] = float(flagged[y == 1].mean())
    return out


def _stratified_image_subset(has_lesion: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of about ``fraction`` of the images with a lesion and of those without (at least one each)."""
    chosen = []
    for group in (np.flatnonzero(has_lesion), np.flatnonzero(~has_lesion)):
        if group.size:
            k = min(group.size, max(1, round(fraction * group.size)))
            chosen.append(rng.choice(group, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _take_images(x: Any, index: np.ndarray) -> Any:
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(index, device=x.device)]
    return np.asarray(x)[index]


def _pixel_metrics(
    maps: Any,
    masks: Any,
    num_images: int,
    max_fpr_pro: float,
    pixel_threshold: float | None,
    max_pixels: int | None,
    seed: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pixel_auroc": None,
        "aupro": None,
        "aupro_fpr_limit": max_fpr_pro,
        "dice": None,
        "dice_threshold": None,
        "dice_kind": None,
        "num_pixels": None,
        "num_anomalous_pixels": None,
        "pixel_note": None,
        "pixel_subsampling": None,
    }
    if maps is None:
        out["pixel_note"] = "the method gives no anomaly map."
        return out
    if masks is None:
        out["pixel_note"] = "no ground-truth masks for this set."
        return out
    m, g = _flat_numpy(maps, "maps"), _flat_numpy(masks, "masks")
    if m.size != g.size:
        raise ValueError(
            f"maps and masks must hold the same number of pixels, got shapes {tuple(np.shape(maps))} and "
            f"{tuple(np.shape(masks))}."
        )
    positives = int(np.count_nonzero(g))
    out["num_pixels"], out["num_anomalous_pixels"] = int(g.size), positives
    if positives == 0 or positives == g.size:
        which = "no anomalous" if positives == 0 else "no normal"
        out["pixel_note"] = f"the masks have {which} pixel: pixel metrics need both."
        return out

    m_sub, g_sub, aupro_maps, aupro_masks, subsampling = m, g, maps, masks, None
    if max_pixels is not None and g.size > max_pixels:
        rng = np.random.default_rng(seed)
        # pixel AUROC and the F1 (Dice) curve have no spatial structure: one Bernoulli draw per pixel, O(n), unbiased
        keep = rng.random(g.size) < max_pixels / g.size
        if 0 < np.count_nonzero(g[keep]) < np.count_nonzero(keep):  # else a tiny anomalous area was missed: use all
            m_sub, g_sub = m[keep], g[keep]
        # AUPRO needs whole regions: exact on a random subset of whole images, stratified by lesion / no lesion
        has_lesion = g.reshape(num_images, -1).any(axis=1)
        images = _stratified_image_subset(has_lesion, max_pixels / g.size, rng)
        aupro_maps, aupro_masks = _take_images(maps, images), _take_images(masks, images)
        subsampling = {
            "seed": seed,
            "pixels_for_auroc": int(g_sub.size),
            "images_for_aupro": int(images.size),
            "note": (
                f"pixel AUROC{' and the Dice-max threshold' if pixel_threshold is None else ''} on a deterministic "
                f"random subset of {g_sub.size} of {g.size} pixels; AUPRO on a random subset of {images.size} of "
                f"{num_images} whole images (stratified: with / without a lesion); seed {seed}; Dice on all pixels."
            ),
        }
    out["pixel_auroc"] = compute_pixel_auroc(m_sub, g_sub)
    out["aupro"] = compute_aupro(aupro_maps, aupro_masks, fpr_limit=max_fpr_pro)
    del aupro_maps, aupro_masks
    if pixel_threshold is not None:
        out["dice_kind"], threshold = "at_threshold", float(pixel_threshold)
    else:
        # Dice over the whole set = pixel F1 (2 TP / (2 TP + FP + FN)), so Dice-max is the pixel F1-max
        out["dice_kind"], threshold = "max", compute_f1_max_threshold(m_sub, g_sub)[1]
    out["dice"] = compute_dice_at_threshold(m, g, threshold)
    out["dice_threshold"] = _finite_or_none(threshold)
    out["pixel_subsampling"] = subsampling
    return out


def _check_bootstrap_samples(bootstrap_samples: int) -> None:
    if int(bootstrap_samples) != bootstrap_samples or (bootstrap_samples != 0 and bootstrap_samples < 100):
        raise ValueError(f"bootstrap_samples must be 0 (no intervals) or an integer >= 100, got {bootstrap_samples!r}.")


def _same_images(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two results entries rate the same images: equal labels and equal groups (both may be None)."""
    la, lb = _flat_numpy(a["labels"], "labels"), _flat_numpy(b["labels"], "labels")
    if la.shape != lb.shape or not np.array_equal(la, lb):
        return False
    ga, gb = a.get("groups"), b.get("groups")
    return (ga is None) == (gb is None) and (ga is None or list(ga) == list(gb))


def paired_comparisons(
    methods: Mapping[str, Mapping[str, Any]], bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES
) -> dict[str, dict[str, Any]]:
    """The first method's image AUROC minus each other method's, on the same images, with a paired group bootstrap.

    Only methods whose labels (and groups) equal the first method's are compared; the set needs both classes.

    Args:
        methods: one set of :func:`write_evaluation_report`'s ``results``: method -> ``{"scores", "labels",
            "groups"?}``, the reference first.
        bootstrap_samples: resamples (0: no comparisons).

    Returns:
        other method -> :func:`~monai_hqanogan.metrics.bootstrap_auroc_difference`'s dict plus ``"reference"``.
    """
    _check_bootstrap_samples(bootstrap_samples)
    names = list(methods)
    if not bootstrap_samples or len(names) < 2:
        return {}
    ref = methods[names[0]]
    y = _flat_numpy(ref["labels"], "labels")
    if not (np.any(y == 1) and np.any(y == 0)):
        return {}
    out = {}
    for name in names[1:]:
        if _same_images(ref, methods[name]):
            diff = bootstrap_auroc_difference(
                ref["scores"], methods[name]["scores"], ref["labels"], ref.get("groups"), num_samples=bootstrap_samples
            )
            out[name] = {"reference": names[0], **diff}
    return out


def evaluate_detection(
    scores: Any,
    labels: Any,
    maps: Any = None,
    masks: Any = None,
    max_fpr_pro: float = 0.3,
    pixel_threshold: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
    image_threshold: float | None = None,
) -> dict[str, Any]:
    """Image-level detection and, with maps and masks, pixel-level localisation metrics of one method on one set.

    Image metrics (:func:`~monai_hqanogan.metrics.compute_image_auroc`,
    :func:`~monai_hqanogan.metrics.compute_f1_max_threshold`) need both classes: a set with one class gives None and
    the reason in ``image_note`` instead of an error. Pixel metrics need ``maps`` and ``masks`` with both anomalous
    and normal pixels; otherwise they are None with the reason in ``pixel_note``. All images' pixels count (the
    normal images' empty masks contribute normal pixels), as in MVTec AD.

    Cost: the pixel metrics sort all pixels, several seconds for 10-20 million. Above ``max_pixels`` pixels they
    subsample, deterministically for ``seed``: the pixel AUROC and the search for the Dice-max threshold use about
    ``max_pixels`` pixels (one Bernoulli draw per pixel); the AUPRO, which needs whole connected regions, is exact on
    a random subset of whole images holding about ``max_pixels`` pixels, drawn separately among images with and
    without a lesion; the Dice itself is counted on all pixels. ``pixel_subsampling`` then says so. About 1-2 s per
    method for 1000 maps of 128 x 128 on two CPU cores.

    The image AUROC comes with a 95 % percentile bootstrap interval (``image_auroc_ci``) that resamples whole
    ``groups`` within each class (:func:`~monai_hqanogan.metrics.bootstrap_image_auroc`): give the near-duplicate
    groups of the images (the datalist's ``group``) or the interval is too narrow wherever copies of one slice sit in
    the set. It covers the choice of test images, not the training's randomness (seeds). Under a second for 2000
    resamples of 1400 images.

    Args:
        scores: [N] image anomaly scores, higher = more anomalous.
        labels: [N] binary image labels, 1 = anomalous.
        maps: [N, 1, R, R] (or [N, R, R]) anomaly maps, or None for a method without maps.
        masks: binary ground-truth masks of the same shape as ``maps``, or None.
        max_fpr_pro: the false-positive-rate limit of the AUPRO, in (0, 1].
        pixel_threshold: Dice of ``maps >= pixel_threshold`` (e.g. the detector's calibrated threshold); None: the
            Dice-max over all thresholds (reported with the threshold that reaches it).
        max_pixels: the pixel count above which the pixel metrics subsample (None: never).
        seed: seed of the pixel and image subsets.
        groups: [N] group ids of the images (numbers or strings), resampled whole by the bootstrap; None: each image is
            its own group.
        bootstrap_samples: resamples of the AUROC interval (0: no interval; otherwise at least 100).
        image_threshold: the method's own image threshold (e.g. the detector's calibrated one, set on normal
            validation images): ``fpr_at_threshold`` and ``tpr_at_threshold`` say what it does on this set, where
            F1-max only says what the best threshold in hindsight would do.

    Returns:
        a dict of plain Python values: ``num_images``, ``num_normal``, ``num_abnormal``, ``image_auroc``,
        ``image_auroc_ci`` (None, or ``low``, ``high``, ``sd``, ``confidence``, ``num_samples``, ``num_groups``),
        ``f1_max``, ``f1_max_threshold``, ``image_threshold``, ``fpr_at_threshold``, ``tpr_at_threshold``,
        ``image_note``, ``pixel_auroc``, ``aupro``, ``aupro_fpr_limit``, ``dice``, ``dice_threshold``, ``dice_kind``
        (``"max"`` or ``"at_threshold"``), ``num_pixels``,
        ``num_anomalous_pixels``, ``pixel_note`` and ``pixel_subsampling`` (None or a dict with a ``note``).

    Raises:
        ValueError: empty or mismatched inputs, NaN scores or maps, non-binary labels or masks, bad arguments.
    """
    if not 0.0 < max_fpr_pro <= 1.0:
        raise ValueError(f"max_fpr_pro must be in (0, 1], got {max_fpr_pro!r}.")
    if max_pixels is not None and max_pixels < 1000:
        raise ValueError(f"max_pixels must be None or >= 1000, got {max_pixels!r}.")
    if pixel_threshold is not None and math.isnan(pixel_threshold):
        raise ValueError("pixel_threshold is NaN.")
    _check_bootstrap_samples(bootstrap_samples)
    n = _length(scores, "scores")
    if _length(labels, "labels") != n:
        raise ValueError(f"scores and labels must have the same length, got {n} and {_length(labels, 'labels')}.")
    for name, value in (("maps", maps), ("masks", masks)):
        if value is not None and _length(value, name) != n:
            raise ValueError(f"{name} must have one entry per image ({n}), got {_length(value, name)}.")
    if groups is not None and _length(groups, "groups") != n:
        raise ValueError(f"groups must have one entry per image ({n}), got {_length(groups, 'groups')}.")
    result = _image_metrics(scores, labels, groups, bootstrap_samples)
    result.update(_threshold_metrics(scores, labels, image_threshold))
    result.update(_pixel_metrics(maps, masks, n, max_fpr_pro, pixel_threshold, max_pixels, seed))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# writing


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unnamed"


def _unique_slugs(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = slug = _slug(name)
        k = 2
        while slug in used:
            slug, k = f"{base}-{k}", k + 1
        used.add(slug)
        out[name] = slug
    return out


def _save_figure_atomic(fig: Any, path: Path, dpi: int) -> Path:
    from monai_hqanogan.visualize import save_figure

    with atomic_output(path) as tmp:
        save_figure(fig, tmp, dpi=dpi)
    return path


def _prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(
            f"cannot write the evaluation report to {str(path)!r}: {type(e).__name__}: {e}. Choose a writable "
            "output directory."
        ) from e
    return path


def _check_results(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict {set_name: {method_name: {'scores': ..., ...}}}.")
    for set_name, methods in results.items():
        if not isinstance(methods, Mapping) or not methods:
            raise ValueError(f"results[{set_name!r}] must be a non-empty dict {{method_name: {{...}}}}.")
        for method, entry in methods.items():
            where = f"results[{set_name!r}][{method!r}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where} must be a dict with 'scores' and 'labels', got {type(entry).__name__}.")
            missing = [k for k in ("scores", "labels") if entry.get(k) is None]
            unknown = sorted(set(entry) - set(_RESULT_KEYS))
            if missing or unknown:
                raise ValueError(
                    f"{where}: missing {missing} / unknown {unknown} keys; the keys are {list(_RESULT_KEYS)} "
                    "('maps', 'masks', 'pixel_threshold' optional)."
                )


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: ``"n/a"`` for None or NaN, floats with ``digits`` decimals, anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    label: str = "method",
    digits: Mapping[str, int] | None = None,
    text_columns: Collection[str] = (),
    bold_best: bool = False,
    plain_columns: Collection[str] = (),
) -> list[str]:
    """The lines of a Markdown table: one row per entry of ``rows`` (its name in the first column, headed ``label``),
    one column per ``(key, header)`` of ``columns``; a key a row lacks shows as ``n/a``.

    Args:
        rows: row name -> the row's values by key.
        columns: the ``(key, header)`` pairs, in order.
        label: the header of the first column.
        digits: decimals of a column's floats (default 3).
        text_columns: keys of left-aligned (text) columns; the others are right-aligned numbers.
        bold_best: with more than one row, bold each numeric column's highest value, compared as shown.
        plain_columns: numeric columns that ``bold_best`` leaves alone (where higher is not better).
    """
    digits = dict(digits or {})
    best: dict[str, float] = {}
    if bold_best and len(rows) > 1:
        for key, _ in columns:
            shown = [round(r[key], digits.get(key, 3)) for r in rows.values() if isinstance(r.get(key), (int, float))]
            if shown and key not in text_columns and key not in plain_columns:
                best[key] = max(shown)
    lines = [
        f"| {label} | " + " | ".join(header for _, header in columns) + " |",
        "|---|" + "".join("---|" if key in text_columns else "---:|" for key, _ in columns),
    ]
    for name, row in rows.items():
        cells = []
        for key, _ in columns:
            value = row.get(key)
            text = format_value(value, digits.get(key, 3))
            if key in best and isinstance(value, (int, float)) and round(value, digits.get(key, 3)) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _markdown_table(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per method; the best (highest) value of each column in bold, compared at the 3 shown decimals."""
    shown = {
        "image": True,
        "pixel": any(m.get("pixel_auroc") is not None for m in metrics.values()),
        "threshold": any(m.get("image_threshold") is not None for m in metrics.values()),
    }
    show_ci = any(m.get("image_auroc_ci") for m in metrics.values())
    columns = [
        (key, header) for key, header, kind in _COLUMNS if shown[kind] and (key != "image_auroc_ci_text" or show_ci)
    ]
    rows = {
        name: {**m, "image_auroc_ci_text": format_interval(m["image_auroc_ci"]["low"], m["image_auroc_ci"]["high"])}
        if m.get("image_auroc_ci")
        else m
        for name, m in metrics.items()
    }
    return markdown_table(
        rows,
        columns,
        text_columns={"image_auroc_ci_text"},
        bold_best=True,
        plain_columns={"fpr_at_threshold", "tpr_at_threshold"},
    )


def _comparison_lines(set_name: str, comparisons: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The paired differences of one set as a Markdown paragraph and table (nothing without comparisons)."""
    if not comparisons:
        return []
    first = next(iter(comparisons.values()))
    groups = first["num_groups"]
    rows = {
        f"{c['reference']} - {name}": {
            "difference": c["difference"],
            "interval": format_interval(c["low"], c["high"]),
            "share_not_above": c["share_not_above"],
        }
        for name, c in comparisons.items()
    }
    columns = [("difference", "image AUROC difference"), ("interval", "95% interval"),
               ("share_not_above", "share of resamples <= 0")]  # fmt: skip
    return [
        f"Paired differences on {set_name} (the same images for both methods): {first['num_samples']} bootstrap "
        f"resamples of whole groups ({groups['normal']} normal, {groups['abnormal']} abnormal), so near-duplicates "
        "count once. An interval that holds 0 does not separate the two methods on this set.",
        "",
        *markdown_table(rows, columns, label="comparison", text_columns={"interval"}),
        "",
    ]


def _info_lines(info: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in info.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"- **{key}**: {text}")
    return lines


def write_evaluation_report(
    output_dir: str | os.PathLike,
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    title: str = "Anomaly detection report",
    info: Mapping[str, Any] | None = None,
    max_fpr_pro: float = 0.3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    histogram_set: str | None = "test",
    dpi: int = 120,
    bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
) -> dict[str, Path]:
    """Evaluate every method on every set and write ``report.json``, ``report.md`` and the figures.

    For each set: one ROC figure with all methods (``roc_<set>.png``; left out for a set with one class). For
    ``histogram_set`` (``"test"``, or the first set when there is none of that name): one histogram of normal and
    abnormal scores per method (``hist_<set>_<method>.png``). File names use lower-case slugs of the names. Every
    file is written to a temporary file in ``output_dir`` and renamed into place, so a reader never sees a partial
    report. Maps are only read, one method at a time: nothing is copied into the report.

    Every image AUROC gets a 95 % group bootstrap interval (:func:`evaluate_detection`), and each set a table of
    paired differences: the first method's AUROC minus each other method's on the same images
    (:func:`paired_comparisons`), in ``report.json``'s ``comparisons``. Each set's image scores go to
    ``scores_<set>.csv`` (:func:`~monai_hqanogan.evaluation.scores_file.write_scores_csv`; the methods that rate the
    same images as the first), for looking at single images and for comparing with another run
    (:func:`~monai_hqanogan.evaluation.scores_file.compare_score_files`).

    Args:
        output_dir: created if missing.
        results: ``{set_name: {method_name: {"scores": [N], "labels": [N], "maps": [N, 1, R, R] | None,
            "masks": [N, 1, R, R] | None, "pixel_threshold": float | None, "groups": [N] | None, "names": [N] | None,
            "image_threshold": float | None}}}``; all but ``scores`` and ``labels`` are optional: ``groups`` are the
            images' near-duplicate groups, ``names`` their paths (for the scores file), ``image_threshold`` the
            method's own image threshold (see :func:`evaluate_detection`). Methods keep their order as rows; the
            first is the reference of the paired differences.
        title: the report's heading.
        info: JSON-serialisable facts copied verbatim into ``report.json`` and listed in ``report.md`` (machine,
            command, timings, data counts, ...).
        max_fpr_pro: the AUPRO's false-positive-rate limit.
        max_pixels: passed to :func:`evaluate_detection`.
        histogram_set: the set whose score histograms are drawn (None: no histograms).
        dpi: figure resolution.
        bootstrap_samples: resamples of the intervals and paired differences (0: none).

    Returns:
        the written paths: ``"json"``, ``"markdown"``, one entry per figure and per scores file named by its file
        stem (e.g. ``"roc_test"``, ``"hist_test_pca"``, ``"scores_test"``).

    Raises:
        OSError: ``output_dir`` cannot be created or written.
        ValueError: malformed ``results``, ``info`` that is not JSON-serialisable, or bad metric inputs.
    """
    _check_results(results)
    _check_bootstrap_samples(bootstrap_samples)
    info = dict(info) if info is not None else {}
    try:
        info_json = json.loads(json.dumps(info, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"info must hold only JSON values (str, numbers, bool, None, lists, dicts): {e}") from e
    out_dir = _prepare_output_dir(output_dir)
    from monai_hqanogan.visualize import plot_roc_curves, plot_score_histogram

    if histogram_set is not None and histogram_set not in results:
        histogram_set = next(iter(results))
    set_slugs = _unique_slugs(list(results))
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    comparisons: dict[str, dict[str, dict[str, Any]]] = {}
    figures: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    for set_name, methods in results.items():
        metrics[set_name] = {}
        figures[set_name] = {"roc": None, "histograms": {}}
        for method, entry in methods.items():
            metrics[set_name][method] = evaluate_detection(
                entry["scores"],
                entry["labels"],
                maps=entry.get("maps"),
                masks=entry.get("masks"),
                max_fpr_pro=max_fpr_pro,
                pixel_threshold=entry.get("pixel_threshold"),
                max_pixels=max_pixels,
                groups=entry.get("groups"),
                bootstrap_samples=bootstrap_samples,
                image_threshold=entry.get("image_threshold"),
            )
        comparisons[set_name] = paired_comparisons(methods, bootstrap_samples)
        reference = next(iter(methods.values()))
        rated_alike = {m: e for m, e in methods.items() if _same_images(reference, e)}
        name = f"scores_{set_slugs[set_name]}"
        paths[name] = write_scores_csv(out_dir / f"{name}.csv", rated_alike)
        figures[set_name]["scores"] = f"{name}.csv"
        with_image_metrics = [m for m in methods if metrics[set_name][m]["image_auroc"] is not None]
        if with_image_metrics:
            curves = {m: (methods[m]["scores"], methods[m]["labels"]) for m in with_image_metrics}
            name = f"roc_{set_slugs[set_name]}"
            fig = plot_roc_curves(curves, title=f"ROC: {set_name}")
            paths[name] = _save_figure_atomic(fig, out_dir / f"{name}.png", dpi)
            figures[set_name]["roc"] = f"{name}.png"
        if set_name == histogram_set:
            method_slugs = _unique_slugs(list(methods))
            for method, entry in methods.items():
                name = f"hist_{set_slugs[set_name]}_{method_slugs[method]}"
                fig = plot_score_histogram(entry["scores"], entry["labels"])
                fig.axes[0].set_title(f"{method}: {set_name}", fontsize=10)
                fig.tight_layout()
                paths[name] = _save_figure_atomic(fig, out_dir / f"{name}.png", dpi)
                figures[set_name]["histograms"][method] = f"{name}.png"

    report = {"title": title, "info": info_json, "metrics": metrics, "comparisons": comparisons, "figures": figures}
    paths["json"] = write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["markdown"] = write_text_atomic(out_dir / "report.md", _markdown(report, max_fpr_pro))
    return paths


_INTERVAL_NOTE = (
    " The 95% interval of the image AUROC is a percentile bootstrap that resamples whole groups of near-duplicate "
    "images within each class, where the data gives groups; it covers the choice of test images, not the training's "
    "randomness."
)


def _markdown(report: Mapping[str, Any], max_fpr_pro: float) -> str:
    any_interval = any(m.get("image_auroc_ci") for s in report["metrics"].values() for m in s.values())
    lines = [f"# {report['title']}", ""]
    if report["info"]:
        lines += _info_lines(report["info"]) + [""]
    lines += [
        "Higher is better in every column but the two at the threshold; the best value of each such column is in "
        "**bold** (3 decimals). Image AUROC and F1-max rate the image scores (F1-max at the best threshold in "
        "hindsight); FPR and TPR at threshold are the shares of normal and of abnormal images that the method's own "
        "image threshold (set without these images) flags; pixel AUROC, AUPRO (up to a false-positive rate of "
        f"{max_fpr_pro:g}) and Dice rate the anomaly maps against the ground-truth masks over all pixels of the set. "
        "n/a: not available "
        "(see the notes)." + (_INTERVAL_NOTE if any_interval else ""),
        "",
    ]
    for set_name, methods in report["metrics"].items():
        first = next(iter(methods.values()))
        lines += [
            f"## {set_name}",
            "",
            f"{first['num_images']} images: {first['num_normal']} normal, {first['num_abnormal']} abnormal.",
            "",
        ]
        lines += _markdown_table(methods) + [""]
        lines += _comparison_lines(set_name, report["comparisons"].get(set_name, {}))
        notes = list(dict.fromkeys(m["image_note"] for m in methods.values() if m["image_note"]))
        for method, m in methods.items():
            if m["dice_kind"] == "max":
                notes.append(f"{method}: Dice-max, reached at pixel threshold {format_value(m['dice_threshold'])}.")
            elif m["dice_kind"] == "at_threshold":
                notes.append(f"{method}: Dice at the pixel threshold {format_value(m['dice_threshold'])}.")
            if m["pixel_note"] and any(o["pixel_auroc"] is not None for o in methods.values()):
                notes.append(f"{method}: no pixel metrics, {m['pixel_note']}")
            if m["pixel_subsampling"]:
                notes.append(f"{method}: {m['pixel_subsampling']['note']}")
        if notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
        figs = report["figures"][set_name]
        if figs.get("scores"):
            lines += [f"Every image's score: [{figs['scores']}]({figs['scores']}).", ""]
        if figs["roc"]:
            lines += [f"![ROC curves, {set_name}]({figs['roc']})", ""]
        else:
            lines += ["No ROC figure: no method has image metrics on this set.", ""]
        if figs["histograms"]:
            lines += ["Score histograms (normal vs abnormal):", ""]
            lines += [f"- [{method}]({path})" for method, path in figs["histograms"].items()] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"
