"""The datalist writer of a preparation, shared by :func:`~monai_hqanogan.data.prepare_br35h` and
:func:`~monai_hqanogan.data.prepare_image_folder`.

A preparation stores every image as an 8-bit grey PNG, groups near-duplicate images (or the slices of one volume),
splits whole groups into training / validation / test (training holds normal images only), adds two localisation
sets with synthetic lesions and exact masks, and writes ``datalist.json`` in MONAI's decathlon layout::

    {"training": [...], "validation": [...], "test": [...],
     "localisation_validation": [...], "localisation_test": [...], "info": {...}}

Each item is ``{"image": "images/...png", "label": 0 or 1, "group": int, "source": "<original file>"}``; the
localisation items (and the validation/test items when real masks were given) also have ``"mask"``. Paths are
relative to the datalist's folder, so ``monai.data.load_decathlon_datalist(path, data_list_key="training",
base_dir=folder)`` resolves them.

:func:`write_prepared_datalist` groups the stored images (:mod:`monai_hqanogan.data.grouping`), splits whole groups,
adds the localisation sets, writes ``datalist.json``, ``README.md`` and ``preview.png`` in the staging folder and
commits them (:mod:`monai_hqanogan.data.output_folder`). The settings of a preparation (:func:`preparation_settings`)
are its reuse key.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from monai_hqanogan.data.grouping import (
    DEFAULT_ABNORMAL_FRACTIONS,
    DEFAULT_NORMAL_FRACTIONS,
    DEFAULT_THRESHOLD,
    LOCALISATION_KEYS,
    SPLIT_KEYS,
    check_fractions,
    describe_groups,
    group_near_duplicates,
    renumber_groups,
    split_groups,
)
from monai_hqanogan.data.output_folder import commit_staging, jsonable
from monai_hqanogan.data.synthetic import add_synthetic_lesions, brain_mask

__all__ = [
    "DEFAULT_LESIONS",
    "PREPARATION_FORMAT",
    "PreparedImage",
    "check_preparation_settings",
    "lesion_settings",
    "preparation_settings",
    "resize_longest",
    "save_grey_png",
    "load_grey_png",
    "write_prepared_datalist",
]

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
    check_fractions(normal_fractions, 3, "normal_fractions")
    check_fractions(abnormal_fractions, 2, "abnormal_fractions")
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
    return jsonable({**DEFAULT_LESIONS, "radius_range": radius_range, "contrast_range": contrast_range})


def preparation_settings(
    dataset: str,
    sources: Mapping[str, Any],
    max_size: int,
    seed: int,
    threshold: float,
    thumbnail_size: int,
    normal_fractions: Sequence[float],
    abnormal_fractions: Sequence[float],
    lesion_radius_range: Sequence[float],
    lesion_contrast_range: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of a preparation: its reuse key (:func:`~monai_hqanogan.data.output_folder.reuse_existing`),
    stored as ``info["settings"]``. In this order: ``dataset``, the ``sources`` entries (fingerprints of the inputs),
    the storage, grouping and split settings, the ``extra`` entries (settings of one kind of input), the checked
    lesion settings (:func:`lesion_settings`) and :data:`PREPARATION_FORMAT`.

    Args:
        dataset: the kind of preparation (``"br35h"``, ``"image_folder"``).
        sources: fingerprints of the inputs (see :func:`~monai_hqanogan.data.output_folder.fingerprint_files`).
        max_size: longest side of the stored images.
        seed: seed of the split and of the synthetic lesions.
        threshold: thumbnail correlation threshold of the near-duplicate groups.
        thumbnail_size: side of the grouping thumbnails.
        normal_fractions: fractions of normal images in training, validation, test.
        abnormal_fractions: fractions of abnormal images in validation, test.
        lesion_radius_range: see :func:`lesion_settings`.
        lesion_contrast_range: see :func:`lesion_settings`.
        extra: further settings, stored after the split settings.
    """
    return {
        "dataset": dataset,
        **sources,
        "max_size": int(max_size),
        "seed": int(seed),
        "threshold": float(threshold),
        "thumbnail_size": int(thumbnail_size),
        "normal_fractions": [float(f) for f in normal_fractions],
        "abnormal_fractions": [float(f) for f in abnormal_fractions],
        **(extra or {}),
        "lesions": lesion_settings(lesion_radius_range, lesion_contrast_range),
        "format": PREPARATION_FORMAT,
    }


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
    groups = renumber_groups([f"{a}:{b}" for a, b in keys])
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
        "settings": jsonable(settings),
        "seed": seed,
        "normal_fractions": jsonable(list(normal_fractions)),
        "abnormal_fractions": jsonable(list(abnormal_fractions)),
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
            **jsonable(lesions),
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
    return commit_staging(staging, output_dir)


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
