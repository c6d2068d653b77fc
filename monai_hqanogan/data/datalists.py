"""Group-aware datalists for anomaly detection, shared by the Br35H and the image-folder preparations.

A preparation stores every image as an 8-bit grey PNG, groups near-duplicate images (or the slices of one volume),
splits whole groups into training / validation / test (training holds normal images only), adds two localisation
sets with synthetic lesions and exact masks, and writes ``datalist.json`` in MONAI's decathlon layout::

    {"training": [...], "validation": [...], "test": [...],
     "localisation_validation": [...], "localisation_test": [...], "info": {...}}

Each item is ``{"image": "images/...png", "label": 0 or 1, "group": int, "source": "<original file>"}``; the
localisation items (and the validation/test items when real masks were given) also have ``"mask"``. Paths are
relative to the datalist's folder, so ``monai.data.load_decathlon_datalist(path, data_list_key="training",
base_dir=folder)`` resolves them.

The output folder is written atomically: everything goes to a staging folder first, and ``datalist.json`` is moved
in last, so an interrupted preparation never leaves a datalist that points at missing files. A rerun with the same
settings returns the existing datalist at once; other settings are refused unless ``overwrite=True``.

A preparation never deletes what it did not write: it marks the output folder as its own with
:data:`PREPARED_MARKER`, replaces only its own entries (``datalist.json``, ``images/``, ``masks/``, ``README.md``,
``preview.png``) and only in a marked folder, refuses a non-empty unmarked folder (with ``overwrite=True`` too when
one of those names is already there), and refuses an output folder that is, contains or lies inside an input folder
(see :func:`check_preparation_settings` and :func:`check_output_dir`). A symbolic link among those entries (or inside
``images/`` and ``masks/``) is refused, never deleted or written through (:func:`check_no_links`). The staging folder
``.staging`` carries an owner file: the next preparation removes one whose process has ended (``kill -9``) and
refuses one whose process still runs or that has no owner file (:func:`new_staging_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from monai_hqanogan.data.synthetic import add_synthetic_lesions, brain_mask
from monai_hqanogan.utils.staging import create_staging_dir

__all__ = [
    "SPLIT_KEYS",
    "LOCALISATION_KEYS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THUMBNAIL_SIZE",
    "DEFAULT_NORMAL_FRACTIONS",
    "DEFAULT_ABNORMAL_FRACTIONS",
    "DEFAULT_LESIONS",
    "PREPARATION_FORMAT",
    "PREPARED_MARKER",
    "PreparedImage",
    "lesion_settings",
    "check_preparation_settings",
    "resize_longest",
    "image_thumbnail",
    "group_near_duplicates",
    "split_groups",
    "check_groups_disjoint",
    "describe_groups",
    "fingerprint_files",
    "check_output_dir",
    "reuse_existing",
    "new_staging_dir",
    "check_no_links",
    "write_prepared_datalist",
    "save_grey_png",
    "load_grey_png",
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
#: synthetic lesions of the localisation sets: semi-axes as fractions of the brain mask's equivalent diameter,
#: contrast as a fraction of the 8-bit range (half brighter, half darker), edge steepness, texture amplitude, and
#: the brain mask's erosion (fraction of its equivalent diameter)
DEFAULT_LESIONS = {
    "radius_range": (0.08, 0.25),
    "contrast_range": (0.25, 0.6),
    "sharpness_range": (0.5, 4.0),
    "texture_range": (0.0, 0.5),
    "erosion": 0.08,
}

#: stored in the settings: bump when the stored outputs change, so that older preparations are not reused
PREPARATION_FORMAT = 1

#: the file that marks a folder as the output of a preparation: only in a marked folder are earlier outputs replaced
PREPARED_MARKER = ".monai_hqanogan_prepared"

_STAGING = ".staging"
_OUTPUTS = ("images", "masks", "README.md", "preview.png")
#: every entry a preparation writes into its output folder, besides the marker
_OWNED = ("datalist.json", *_OUTPUTS, _STAGING)
_MARKER_TEXT = (
    "This folder holds the output of monai_hqanogan.data.prepare. A later preparation into it replaces the entries\n"
    "that a preparation writes (datalist.json, images/, masks/, README.md, preview.png) and nothing else.\n"
)


@dataclass
class PreparedImage:
    """One stored 2D image of a preparation.

    Args:
        image: PNG path relative to the output folder.
        label: 0 normal, 1 abnormal.
        source: the original file (relative to its class folder; ``file#k`` for slice k of a volume).
        thumbnail: the flattened thumbnail used for near-duplicate grouping (see :func:`image_thumbnail`).
        volume: images with the same non-None key (the slices of one volume) form one group; None: grouped by
            thumbnail correlation.
        mask: mask PNG path relative to the output folder (abnormal images with real masks), or None.
        from_normal: read from the normal source (only these seed the synthetic localisation sets).
    """

    image: str
    label: int
    source: str
    thumbnail: np.ndarray
    volume: str | None = None
    mask: str | None = None
    from_normal: bool = True


def check_preparation_settings(
    max_size: int,
    threshold: float,
    normal_fractions: Sequence[float],
    abnormal_fractions: Sequence[float],
    output_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> None:
    """Raise ``ValueError`` for preparation settings that would fail late: called before any image is read.

    Not the bundle's :func:`monai_hqanogan.workflows.check_settings`, which checks a bundle's settings dict.

    Args:
        max_size: longest side of the stored images (at least 8).
        threshold: correlation threshold, in (-1, 1].
        normal_fractions: three fractions summing to 1.
        abnormal_fractions: two fractions summing to 1.
        output_dir: the output folder, which must not be an input folder, lie inside one or contain one.
        inputs: the input folders (None entries and paths that are not folders are ignored).
    """
    if max_size < 8:
        raise ValueError(f"max_size must be at least 8, got {max_size}.")
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (-1, 1], got {threshold}.")
    _check_fractions(normal_fractions, 3, "normal_fractions")
    _check_fractions(abnormal_fractions, 2, "abnormal_fractions")
    out = Path(output_dir).expanduser().resolve()
    for folder in inputs:
        if folder is not None and Path(folder).expanduser().is_dir():
            root = Path(folder).expanduser().resolve()
            if out == root:
                raise ValueError(
                    f"the output folder {out} is the input folder {root}: choose an output folder outside every "
                    "input folder."
                )
            if root in out.parents:
                raise ValueError(
                    f"the output folder {out} lies inside the input folder {root}: choose an output folder outside "
                    "every input folder."
                )
            if out in root.parents:
                raise ValueError(
                    f"the input folder {root} lies inside the output folder {out}, where the preparation writes and "
                    "replaces its outputs: choose an output folder outside every input folder."
                )


# deprecated alias (the name clashed with the bundle's monai_hqanogan.workflows.check_settings)
check_settings = check_preparation_settings


def lesion_settings(
    radius_range: Sequence[float] = DEFAULT_LESIONS["radius_range"],
    contrast_range: Sequence[float] = DEFAULT_LESIONS["contrast_range"],
) -> dict[str, Any]:
    """:data:`DEFAULT_LESIONS` with the given ranges, checked (JSON-ready lists).

    Args:
        radius_range: lesion semi-axes, fractions of the brain mask's equivalent diameter, 0 < min <= max.
        contrast_range: lesion contrast, fractions of the 8-bit range, 0 < min <= max <= 1.
    """
    for name, (lo, hi), top in (("radius_range", radius_range, 2.0), ("contrast_range", contrast_range, 1.0)):
        if not 0 < lo <= hi <= top:
            raise ValueError(f"lesion {name} must satisfy 0 < min <= max <= {top}, got ({lo}, {hi}).")
    return _jsonable({**DEFAULT_LESIONS, "radius_range": radius_range, "contrast_range": contrast_range})


def resize_longest(image: np.ndarray, max_size: int, resample: int = Image.LANCZOS) -> np.ndarray:
    """Shrink a 2D uint8 image so that its longest side is at most ``max_size``, keeping the aspect ratio.

    Args:
        image: [H, W] uint8 array.
        max_size: the longest side after resizing (images already that small are returned unchanged).
        resample: PIL filter; Lanczos (the default) anti-aliases by widening its kernel with the reduction factor.
    """
    h, w = image.shape
    if max(h, w) <= max_size:
        return image
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample))


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
    return _renumber(components)


def _renumber(keys: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Group ids 0, 1, ... in order of first appearance of each distinct key."""
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in np.asarray(keys).tolist()], dtype=np.int64)


def _check_fractions(fractions: Sequence[float], count: int, name: str) -> np.ndarray:
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
    fn = _check_fractions(normal_fractions, 3, "normal_fractions")
    fa = np.concatenate([[0.0], _check_fractions(abnormal_fractions, 2, "abnormal_fractions")])
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
    sizes = np.bincount(_renumber(groups))
    return {
        "groups": int(len(sizes)),
        "normal_groups": len(normal),
        "abnormal_groups": len(abnormal),
        "mixed_groups": len(normal & abnormal),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "singletons": int((sizes == 1).sum()),
    }


def fingerprint_files(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """SHA-256 of the sorted (relative path, size) list of files: cheap, changes when files are added or replaced.

    Args:
        paths: files to fingerprint.
        root: paths are taken relative to it (default: as given).
    """
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        name = p.relative_to(root).as_posix() if root is not None else p.as_posix()
        h.update(f"{name}\t{p.stat().st_size}\n".encode())
    return "sha256:" + h.hexdigest()


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that a preparation may write into ``output_dir``, create it if needed and check with a test write that
    it can be written; return it as a Path. Nothing that was there is changed.

    A new or empty folder is marked as the preparation's own with :data:`PREPARED_MARKER`. A marked folder (or one
    holding the ``datalist.json`` of a preparation by a version that wrote no marker) is accepted: its outputs are
    reused, or replaced with ``overwrite``. A non-empty unmarked folder is refused, unless ``overwrite``, and then
    still refused when it holds any entry that the preparation would replace (``datalist.json``, ``images``,
    ``masks``, ``README.md``, ``preview.png``, ``.staging``): its other files are never touched.

    Args:
        output_dir: the output folder.
        overwrite: allow a non-empty unmarked folder that holds none of the preparation's entries, and the
            replacement of an earlier preparation made with other settings (see :func:`reuse_existing`).

    Raises:
        FileExistsError: a non-empty folder not marked as a preparation's output, without ``overwrite``, or with
            ``overwrite`` when it already holds an entry the preparation writes; a symbolic link among the entries
            a preparation replaces (:func:`check_no_links`).
        PermissionError: the folder cannot be read, created or written.
    """
    out = Path(output_dir).expanduser()
    try:
        fresh = not out.exists() or (out.is_dir() and next(out.iterdir(), None) is None)
        owned = not fresh and out.is_dir() and _prepared_here(out)
    except OSError as e:
        raise PermissionError(f"cannot read the output folder {out}: {e}") from e
    if out.is_dir() and not fresh and not owned:
        unmarked = f"the output folder {out} is not empty and was not written by a preparation (no {PREPARED_MARKER})"
        if not overwrite:
            raise FileExistsError(
                f"{unmarked}: choose a new or empty folder, or pass overwrite=True (--overwrite) to write the "
                "preparation next to its files, which are never deleted."
            )
        clashes = [str(out / name) for name in _OWNED if (out / name).exists() or (out / name).is_symlink()]
        if clashes:
            raise FileExistsError(
                f"{unmarked} and holds {', '.join(clashes)}, which the preparation would replace: move "
                f"{'it' if len(clashes) == 1 else 'them'} away or choose a new or empty folder (overwrite=True "
                "replaces only the outputs of an earlier preparation)."
            )
    if out.is_dir():
        check_no_links(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)  # a new name: clobbers nothing
        os.close(handle)
        os.unlink(probe)
        if fresh:
            _mark(out)
    except OSError as e:
        raise PermissionError(f"cannot write to the output folder {out}: {e}") from e
    return out


def _prepared_here(output_dir: Path) -> bool:
    """Whether ``output_dir`` carries :data:`PREPARED_MARKER`, or a ``datalist.json`` whose ``info.settings`` a
    preparation wrote (versions before the marker)."""
    if (output_dir / PREPARED_MARKER).is_file():
        return True
    try:
        settings = json.loads((output_dir / "datalist.json").read_text())["info"]["settings"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return isinstance(settings, dict) and {"dataset", "format"} <= settings.keys()


def _mark(output_dir: Path) -> None:
    marker = output_dir / PREPARED_MARKER
    if not marker.is_file():
        marker.write_text(_MARKER_TEXT)


def _jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python: the form the settings take after a JSON round trip."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _datalist_files(datalist: Mapping[str, Any]) -> list[str]:
    return [
        item[k]
        for key in (*SPLIT_KEYS, *LOCALISATION_KEYS)
        for item in datalist.get(key, [])
        for k in ("image", "mask")
        if k in item
    ]


def reuse_existing(output_dir: Path, settings: Mapping[str, Any], overwrite: bool) -> Path | None:
    """The existing ``datalist.json`` of ``output_dir`` when it was prepared with the same ``settings``, else None.

    Raises ``ValueError`` when a datalist with other settings exists and ``overwrite`` is False, and
    ``RuntimeError`` when the matching datalist points at missing files (rerun with ``overwrite=True``).
    """
    path = output_dir / "datalist.json"
    if not path.is_file():
        return None
    settings = _jsonable(settings)
    try:
        existing = json.loads(path.read_text())
        old = existing["info"]["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        if overwrite:
            return None
        raise ValueError(f"{path} exists but is not a datalist of this preparation ({e}); pass overwrite=True.") from e
    if old == settings:
        missing = [f for f in _datalist_files(existing) if not (output_dir / f).is_file()]
        if missing and not overwrite:
            raise RuntimeError(
                f"{path} matches these settings but {len(missing)} of its files are missing (first: {missing[0]}); "
                "pass overwrite=True (--overwrite) to prepare it again."
            )
        if not missing:
            return path
        return None
    if overwrite:
        return None
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    details = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
    raise ValueError(
        f"{path} was prepared with other settings ({details}). Pass overwrite=True (--overwrite) to replace it, "
        "or choose another output folder."
    )


def new_staging_dir(output_dir: Path) -> Path:
    """A new staging folder inside ``output_dir``, with an owner file naming this process
    (:func:`~monai_hqanogan.utils.staging.create_staging_dir`). The staging folder of a preparation that was killed
    (its owner file names a process that has ended) is removed first; one of a preparation that still runs, or one
    without the owner file, is refused with an error naming it, and is not changed.

    Raises:
        FileExistsError: see above; also a symbolic link among the entries a preparation replaces
            (:func:`check_no_links`).
    """
    check_no_links(output_dir)
    return create_staging_dir(output_dir / _STAGING, f"a data preparation into {output_dir}")


def check_no_links(output_dir: Path) -> None:
    """Refuse, before any change, a symbolic link among the entries a preparation writes and replaces in
    ``output_dir`` (``datalist.json``, ``images``, ``masks``, ``README.md``, ``preview.png``, ``.staging``, the
    marker) or anywhere inside its ``images`` and ``masks`` folders: a preparation never creates links, so one there
    was made by someone else and may lead to their data; replacing the entry would delete or write through it.

    Raises:
        FileExistsError: naming the link and where it points.
    """
    found = [output_dir / name for name in (*_OWNED, PREPARED_MARKER) if (output_dir / name).is_symlink()]
    for name in ("images", "masks"):
        folder = output_dir / name
        if found or folder.is_symlink() or not folder.is_dir():
            continue
        for here, dirs, files in os.walk(folder):  # does not follow links
            found += [Path(here, n) for n in (*dirs, *files) if Path(here, n).is_symlink()]
            if found:
                break
    if found:
        link = found[0]
        raise FileExistsError(
            f"{link} is a symbolic link (to {os.readlink(link)}), which a preparation never creates: replacing the "
            f"preparation's outputs in {output_dir} would delete or write through it. Remove the link (its target is "
            "not touched) or choose another output folder; nothing was changed."
        )


def _commit(staging: Path, output_dir: Path) -> Path:
    """Move the staged outputs into ``output_dir``, replacing only the entries a preparation writes (checked by
    :func:`check_output_dir` and, again just before, :func:`check_no_links`), and mark it; the datalist goes last,
    so it never points at missing files."""
    check_no_links(output_dir)
    _mark(output_dir)  # a folder accepted unmarked (its other files kept, or a preparation without a marker)
    final = output_dir / "datalist.json"
    final.unlink(missing_ok=True)  # first: an interruption below must not leave the old datalist in place
    for name in _OUTPUTS:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (staging / name).exists():
            os.replace(staging / name, target)
    os.replace(staging / "datalist.json", final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def save_grey_png(array: np.ndarray, path: Path) -> None:
    """Write a 2D array (values in [0, 255]) as an 8-bit grey PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, compress_level=1)  # fast; 10% larger


def load_grey_png(path: Path) -> np.ndarray:
    """Read a PNG as a 2D uint8 array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def _derived_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _localisation_set(
    staging: Path,
    items: list[dict[str, Any]],
    name: str,
    seed: int,
    lesions: Mapping[str, Any],
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each normal item once unaltered (label 0, empty mask) and once with a pasted lesion (label 1, its mask)."""
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    set_index = LOCALISATION_KEYS.index(name)
    rng = np.random.default_rng(_derived_seed(seed, set_index))
    signs = rng.permutation(np.resize([1, -1], len(items)))  # exactly half brighter, half darker
    with _single_torch_thread():
        for k, item in enumerate(tqdm(items, desc=name, disable=not progress, leave=False)):
            _add_lesion(staging, item, name, seed, set_index, k, signs[k], lesions, out, skipped)
    return out, skipped


@contextlib.contextmanager
def _single_torch_thread():
    """One intra-op thread: these per-image tensor ops are tiny, and worker threads spinning on a busy CPU made
    them 200 times slower (measured: 0.86 s instead of 4 ms per lesion on 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _add_lesion(
    staging: Path,
    item: dict[str, Any],
    name: str,
    seed: int,
    set_index: int,
    k: int,
    sign: int,
    lesions: Mapping[str, Any],
    out: list[dict[str, Any]],
    skipped: list[dict[str, str]],
) -> None:
    """Append ``item`` unaltered and a lesioned copy of it to ``out`` (or record it in ``skipped``)."""
    lo, hi = lesions["contrast_range"]
    image = load_grey_png(staging / item["image"])
    inside = brain_mask(image, erosion=lesions["erosion"])
    if not inside.any():
        skipped.append({"file": item["source"], "reason": f"{name}: no foreground for a lesion"})
        return
    x = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)[None, None]
    lesioned, mask = add_synthetic_lesions(
        x,
        seed=_derived_seed(seed, set_index, k),
        radius_range=tuple(lesions["radius_range"]),
        contrast_range=(2.0 * lo, 2.0 * hi),  # fractions of the 8-bit range -> [-1, 1] units
        sharpness_range=tuple(lesions["sharpness_range"]),
        texture_range=tuple(lesions["texture_range"]),
        foreground=torch.from_numpy(inside)[None, None],
        radius_reference="foreground",
        polarity="brighter" if sign > 0 else "darker",
    )
    stem = Path(item["image"]).stem
    lesion_png = f"images/{name}/{stem}_lesion.png"
    lesion_mask, empty_mask = f"masks/{name}/{stem}_lesion.png", f"masks/{name}/{stem}_normal.png"
    save_grey_png(np.rint((lesioned[0, 0].numpy() + 1.0) * 127.5).clip(0, 255), staging / lesion_png)
    save_grey_png(mask[0, 0].numpy() * 255, staging / lesion_mask)
    save_grey_png(np.zeros_like(image), staging / empty_mask)
    base = {"group": item["group"], "source": item["source"]}
    out.append({"image": item["image"], "label": 0, **base, "mask": empty_mask})
    out.append({"image": lesion_png, "label": 1, **base, "mask": lesion_mask})


def _counts(items: list[dict[str, Any]]) -> dict[str, int]:
    abnormal = sum(int(i["label"]) for i in items)
    return {"normal": len(items) - abnormal, "abnormal": abnormal, "total": len(items)}


def write_prepared_datalist(
    staging: Path,
    output_dir: Path,
    records: list[PreparedImage],
    settings: Mapping[str, Any],
    info: Mapping[str, Any],
    threshold: float = DEFAULT_THRESHOLD,
    normal_fractions: Sequence[float] = DEFAULT_NORMAL_FRACTIONS,
    abnormal_fractions: Sequence[float] = DEFAULT_ABNORMAL_FRACTIONS,
    seed: int = 0,
    lesions: Mapping[str, Any] | None = None,
    progress: bool = True,
    title: str = "prepared data",
    started: float | None = None,
) -> Path:
    """Group, split, add the localisation sets, write the datalist, README and preview, and commit atomically.

    Args:
        staging: staging folder holding the stored PNGs (``records[i].image`` relative to it).
        output_dir: the final folder.
        records: the stored images.
        settings: the reuse key, stored as ``info["settings"]``.
        info: extra ``info`` entries (source, skipped files, ...).
        threshold: thumbnail correlation threshold of the near-duplicate groups.
        normal_fractions: see :func:`split_groups`.
        abnormal_fractions: see :func:`split_groups`.
        seed: seed of the split and of the synthetic lesions.
        lesions: synthetic lesion settings (default :data:`DEFAULT_LESIONS`).
        progress: show progress bars.
        title: a heading for the README.
        started: ``time.time()`` at the start of the preparation (for ``info["time"]``).

    Returns:
        path of ``output_dir / "datalist.json"``.
    """
    started = time.time() if started is None else started
    lesions = {**DEFAULT_LESIONS, **(lesions or {})}
    if not records:
        raise ValueError("no images to write.")
    labels = np.array([r.label for r in records], dtype=np.int64)
    # group keys: the volume for slices of 3D volumes, the thumbnail-correlation component for 2D images
    keys: list[Any] = [("volume", r.volume) for r in records]
    flat = [i for i, r in enumerate(records) if r.volume is None]
    if flat:
        components = group_near_duplicates(np.stack([records[i].thumbnail for i in flat]), threshold)
        for i, c in zip(flat, components.tolist()):
            keys[i] = ("thumbnail", c)
    groups = _renumber([f"{a}:{b}" for a, b in keys])
    splits = split_groups(groups, labels, normal_fractions, abnormal_fractions, seed)
    with_masks = any(r.mask is not None for r in records)

    datalist: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        items = []
        for i in splits[key].tolist():
            r = records[i]
            item = {"image": r.image, "label": int(r.label), "group": int(groups[i]), "source": r.source}
            if with_masks and key != "training":
                if r.mask is None:
                    r.mask = f"masks/{key}/{Path(r.image).stem}_empty.png"
                    save_grey_png(np.zeros_like(load_grey_png(staging / r.image)), staging / r.mask)
                item["mask"] = r.mask
            items.append(item)
        datalist[key] = items
    if not datalist["training"]:
        raise ValueError("no normal image was assigned to training: give more normal images or groups.")

    skipped = list(info.get("skipped", []))
    for key, split in zip(LOCALISATION_KEYS, ("validation", "test")):
        normals = [it for it, i in zip(datalist[split], splits[split].tolist()) if records[i].from_normal]
        normals = [it for it in normals if it["label"] == 0]
        datalist[key], missed = _localisation_set(staging, normals, key, seed, lesions, progress)
        skipped += missed
        if not normals:
            warnings.warn(f"{split} holds no normal image: {key} is empty.", stacklevel=2)

    group_stats = describe_groups(groups, labels)
    volume_items = len(records) - len(flat)
    mixed = []
    for key in SPLIT_KEYS:
        for g in np.unique(groups[splits[key]]).tolist():
            members = labels[groups == g]
            if members.min() == 0 and members.max() == 1:
                mixed.append(
                    {"group": g, "split": key, "normal": int((members == 0).sum()), "abnormal": int(members.sum())}
                )
    mixed_note = (
        f"{group_stats['mixed_groups']} group(s) mix normal and abnormal images; each was kept whole in validation "
        "or test (its normal images go with it)"
        if group_stats["mixed_groups"]
        else "no group mixes normal and abnormal images"
    )
    full_info = {
        "description": f"{title}: group-aware splits for anomaly detection (training holds normal images only).",
        **dict(info),
        "settings": _jsonable(settings),
        "seed": seed,
        "normal_fractions": _jsonable(list(normal_fractions)),
        "abnormal_fractions": _jsonable(list(abnormal_fractions)),
        "counts": {key: _counts(datalist[key]) for key in (*SPLIT_KEYS, *LOCALISATION_KEYS)},
        "grouping": {
            "method": (
                "near-duplicate groups: each image's thumbnail (resized to a square, box filter) is standardised; "
                "pairs with Pearson correlation >= threshold are linked; groups are the connected components. "
                "Slices of one volume always form one group. Whole groups are split."
            ),
            "thumbnail_size": int(round(records[0].thumbnail.size ** 0.5)),
            "threshold": threshold,
            **group_stats,
            "images_grouped_by_volume": volume_items,
            "mixed_note": mixed_note,
            "mixed": mixed,
        },
        "split": (
            "whole groups, deterministic for the seed: groups of normal images only go to training / validation / "
            "test by normal_fractions of the normal images, groups holding abnormal images to validation / test by "
            "abnormal_fractions of the abnormal images (largest groups first, each to a split drawn in proportion "
            "to its remaining room); no group is in two splits"
        ),
        "lesions": {
            "method": (
                "copies of the normal validation/test images with one pasted elliptical lesion each "
                "(add_synthetic_lesions), placed inside the eroded brain_mask (threshold at half Otsu, largest "
                "component, holes filled); semi-axes are fractions of the mask's equivalent diameter, contrast a "
                "fraction of the 8-bit range, half brighter and half darker; masks are exact (0/255 PNGs)"
            ),
            **_jsonable(lesions),
        },
        "skipped": skipped,
        "time": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 2),
        },
        "version": _versions(),
    }
    datalist["info"] = full_info
    (staging / "datalist.json").write_text(json.dumps(datalist, indent=1))
    (staging / "README.md").write_text(_readme(title, datalist))
    try:
        _save_preview(staging, datalist, staging / "preview.png", lesions["erosion"])
    except Exception as e:  # a figure problem must not lose a finished preparation
        warnings.warn(f"could not draw preview.png: {e}", stacklevel=2)
    return _commit(staging, output_dir)


def _versions() -> dict[str, str]:
    import monai_hqanogan

    try:
        monai_version = importlib.metadata.version("monai")  # without importing monai (seconds on a busy CPU)
    except importlib.metadata.PackageNotFoundError:
        monai_version = "unknown"
    return {"monai_hqanogan": monai_hqanogan.__version__, "monai": monai_version, "numpy": np.__version__}


def _readme(title: str, datalist: Mapping[str, Any]) -> str:
    info = datalist["info"]
    lines = [
        f"# {title}",
        "",
        "Prepared by `monai_hqanogan.data` for anomaly detection. Load a split with",
        "`monai.data.load_decathlon_datalist('datalist.json', data_list_key='training', base_dir='.')`.",
        "",
        "| split | normal | abnormal | total |",
        "|---|---|---|---|",
    ]
    for key, c in info["counts"].items():
        lines.append(f"| {key} | {c['normal']} | {c['abnormal']} | {c['total']} |")
    g = info["grouping"]
    lines += [
        "",
        "- `datalist.json`: the splits; each item has `image`, `label` (0 normal, 1 abnormal), `group` and `source`;",
        "  localisation items also have `mask`. `info` records the source, settings, counts and timings.",
        "- `images/`: 8-bit grey PNGs (longest side at most "
        f"{info['settings'].get('max_size')} px); `images/localisation_*`: copies with a synthetic lesion.",
        "- `masks/`: 0/255 PNG masks of the localisation sets (all-zero for the unaltered images).",
        "- `preview.png`: examples of each split; lesions outlined in red, the brain mask in cyan.",
        "",
        f"Groups: {g['groups']} ({g['normal_groups']} with normal images, {g['abnormal_groups']} with abnormal "
        f"ones, largest {g['largest_group']} images), thumbnail correlation threshold {g['threshold']}; "
        f"{g['mixed_note']}. No group is in two splits; training holds normal images only.",
        "",
    ]
    if info.get("skipped"):
        lines += [f"Skipped {len(info['skipped'])} unreadable file(s): see `info['skipped']`.", ""]
    return "\n".join(lines)


def _save_preview(staging: Path, datalist: Mapping[str, Any], path: Path, erosion: float, per_row: int = 8) -> None:
    """A grid of examples: training; validation and test (normal then abnormal); lesioned localisation images."""
    from matplotlib.figure import Figure

    def pick(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        if len(items) <= n:
            return list(items)
        return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]

    rows: list[tuple[str, list[dict[str, Any]]]] = [("training", pick(datalist["training"], per_row))]
    for key in ("validation", "test"):
        normal = [i for i in datalist[key] if i["label"] == 0]
        abnormal = [i for i in datalist[key] if i["label"] == 1]
        half = per_row // 2 if abnormal else per_row
        rows.append((key, pick(normal, half) + pick(abnormal, per_row - len(pick(normal, half)))))
    for key in LOCALISATION_KEYS:
        rows.append((key, pick([i for i in datalist[key] if i["label"] == 1], per_row)))
    rows = [(name, items) for name, items in rows if items]
    fig = Figure(figsize=(1.6 * per_row, 1.75 * len(rows)))
    axes = fig.subplots(len(rows), per_row, squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(items):
                continue
            item = items[c]
            image = load_grey_png(staging / item["image"])
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if name in LOCALISATION_KEYS:
                ax.contour(brain_mask(image, erosion=erosion), levels=[0.5], colors="c", linewidths=0.6)
            if "mask" in item and item["label"] == 1:
                mask = load_grey_png(staging / item["mask"])
                if mask.any():
                    ax.contour(mask > 127, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{name if c == 0 else ''}\n{'abnormal' if item['label'] else 'normal'}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
