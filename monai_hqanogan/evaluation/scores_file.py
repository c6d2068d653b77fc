"""Every image's score, per method, as a CSV next to the evaluation report, and paired comparisons between two of them.

The report's metrics say how well each method did; the scores file says on which images. It also lets a later run be
compared with an earlier one on the same images (a candidate model against the shipped one, a 64 px model against a
32 px one: the slices are the same, only the grid differs) with the paired group bootstrap of
:func:`~monai_hqanogan.metrics.bootstrap_auroc_difference`, without scoring anything again.

File layout (``scores_<set>.csv``): one row per image, in the set's order; the columns ``index`` (position in the
datalist's list), ``image`` (the datalist's path, when known), ``group`` (near-duplicate group), ``label`` (0 normal,
1 abnormal), then one column per method with its image score (``repr`` of the float, so reading it back is exact).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_hqanogan.metrics import bootstrap_auroc_difference
from monai_hqanogan.utils.checkpoint import write_text_atomic

__all__ = ["write_scores_csv", "read_scores_csv", "compare_score_files", "SCORES_FIXED_COLUMNS"]

#: the columns before the methods' scores
SCORES_FIXED_COLUMNS = ("index", "image", "group", "label")


def _values(x: Any) -> list[float]:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def write_scores_csv(path: str | os.PathLike, methods: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write one set's scores: a row per image, a column per method (atomically: a reader never sees half a file).

    Args:
        path: the CSV file.
        methods: method -> ``{"scores": [N], "labels": [N], "groups": [N]?, "names": [N]?}``, every method on the same
            images in the same order (the first method's labels, groups and names are written).

    Raises:
        ValueError: no methods, a reserved or repeated method name, or methods of different lengths.
    """
    if not methods:
        raise ValueError("no methods to write.")
    clash = [m for m in methods if m in SCORES_FIXED_COLUMNS]
    if clash:
        raise ValueError(f"method names {clash} clash with the file's own columns {list(SCORES_FIXED_COLUMNS)}.")
    first = next(iter(methods.values()))
    labels = [int(v) for v in _values(first["labels"])]
    scores = {m: _values(e["scores"]) for m, e in methods.items()}
    wrong = {m: len(s) for m, s in scores.items() if len(s) != len(labels)}
    if wrong:
        raise ValueError(f"every method needs one score per image ({len(labels)}), got {wrong}.")
    groups = list(first.get("groups") or [""] * len(labels))
    names = list(first.get("names") or [""] * len(labels))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*SCORES_FIXED_COLUMNS, *methods])
    for i, label in enumerate(labels):
        writer.writerow([i, names[i], groups[i], label, *(repr(scores[m][i]) for m in methods)])
    return write_text_atomic(Path(path), buffer.getvalue())


def read_scores_csv(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file of :func:`write_scores_csv`.

    Returns:
        ``{"image": [N] str, "group": [N] str, "label": [N] int array, "scores": {method: [N] float array}}``.

    Raises:
        ValueError: a missing column, a label that is not 0 or 1, a score that is not a finite number (naming the
            row): a NaN score means a broken run, never a normal image.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][: len(SCORES_FIXED_COLUMNS)]) != SCORES_FIXED_COLUMNS:
        raise ValueError(f"{path} is not a scores file: its header must start with {list(SCORES_FIXED_COLUMNS)}.")
    methods = rows[0][len(SCORES_FIXED_COLUMNS) :]
    if not methods:
        raise ValueError(f"{path} holds no method's scores.")
    out: dict[str, Any] = {"image": [], "group": [], "label": [], "scores": {m: [] for m in methods}}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ValueError(f"{path}, line {line}: {len(row)} cells, the header has {len(rows[0])}.")
        if row[3] not in ("0", "1"):
            raise ValueError(f"{path}, line {line}: label {row[3]!r} is not 0 or 1.")
        out["image"].append(row[1])
        out["group"].append(row[2])
        out["label"].append(int(row[3]))
        for m, cell in zip(methods, row[len(SCORES_FIXED_COLUMNS) :]):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"{path}, line {line}: the score of {m!r} is {cell!r}, not a finite number.")
            out["scores"][m].append(value)
    out["label"] = np.asarray(out["label"], dtype=np.int64)
    out["scores"] = {m: np.asarray(v) for m, v in out["scores"].items()}
    return out


def compare_score_files(
    file_a: str | os.PathLike,
    method_a: str,
    file_b: str | os.PathLike,
    method_b: str,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC of ``method_a`` in ``file_a`` minus that of ``method_b`` in ``file_b``, with a paired group bootstrap.

    The two files must rate the same images in the same order (same images, groups and labels: e.g. two evaluations
    of one datalist); otherwise the first row that differs is named.

    Returns:
        :func:`~monai_hqanogan.metrics.bootstrap_auroc_difference`'s dict plus ``"a"`` and ``"b"`` (file and method).
    """
    a, b = read_scores_csv(file_a), read_scores_csv(file_b)
    for name, data, path in ((method_a, a, file_a), (method_b, b, file_b)):
        if name not in data["scores"]:
            raise ValueError(f"{path} has no method {name!r}; it has {sorted(data['scores'])}.")
    if len(a["label"]) != len(b["label"]):
        raise ValueError(f"{file_a} has {len(a['label'])} images, {file_b} {len(b['label'])}: not the same images.")
    for key in ("image", "group", "label"):
        differ = [i for i, (x, y) in enumerate(zip(a[key], b[key])) if x != y]
        if differ:
            i = differ[0]
            raise ValueError(
                f"the files differ in {key!r} at row {i} ({a[key][i]!r} vs {b[key][i]!r}) and {len(differ) - 1} more "
                "rows: a paired comparison needs the same images in the same order."
            )
    groups = a["group"] if any(a["group"]) else None
    diff = bootstrap_auroc_difference(
        a["scores"][method_a], b["scores"][method_b], a["label"], groups, num_samples, confidence, seed
    )
    return {"a": f"{file_a}:{method_a}", "b": f"{file_b}:{method_b}", **diff}
