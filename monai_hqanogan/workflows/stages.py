"""The steps between the bundle's training configs: checks before long work, stage weights, loading a datalist split
as tensors, and calibration of the detector.

Every function is called from a bundle config (``"$monai_hqanogan.workflows.<name>(...)"``), so each one checks its
inputs and fails with a message that says which config to run or which file to fix.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Resized,
    SpatialPadd,
    ThresholdIntensityd,
)
from torch import nn

from monai_hqanogan.data.image_files import verify_image_file
from monai_hqanogan.transforms.dictionary import ToSingleChanneld
from monai_hqanogan.transforms.presets import gan_image_transforms
from monai_hqanogan.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_atomic, write_text_atomic
from monai_hqanogan.utils.progress import progress_bar
from monai_hqanogan.workflows.checks import as_bool, datalist_items, read_json_object

__all__ = [
    "check_writable",
    "check_datalist",
    "save_stage",
    "load_stage",
    "load_split",
    "mask_transforms",
    "calibrate_detector",
    "export_detector",
    "round_networks_to_half",
    "SHIPPED_SETTING",
    "model_dir",
    "require_file",
    "json_ready",
    "check_model_file",
    "load_model_file",
    "load_bundle_detector",
]

logger = logging.getLogger(__name__)


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove that a file can be written there; a clear error otherwise."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as err:
        raise PermissionError(f"output folder {str(folder)!r} cannot be written: {err}") from err
    return folder


def check_datalist(
    datalist: str | os.PathLike,
    keys: Sequence[str] = ("training",),
    base_dir: str | os.PathLike | None = None,
    verify_images: bool = True,
    min_items: int = 1,
    normal_keys: Sequence[str] = ("training",),
    labelled_keys: Sequence[str] = (),
    resolution: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Load the ``keys`` lists of a MONAI datalist and check every listed file before training starts.

    Every listed image and mask must exist, be non-empty, have an image ending (:data:`IMAGE_SUFFIXES`) and be 2D
    (a NIfTI volume with more than one slice is refused: slice it with ``python -m monai_hqanogan.data.prepare``);
    headers are read. With ``verify_images`` every file is also decoded completely (truncated PNG/JPEG/NIfTI files
    are refused, and 2D NIfTI images with NaN or inf), one at a time, so memory stays bounded. The lists of
    ``normal_keys`` (the ``training`` list: G, E, the W+ Gaussian and the baselines learn "normal" from it) must hold
    normal items only, ``label`` 0 or none; abnormal ones are refused before any file is read, naming how many and
    the first few. The lists of ``labelled_keys`` (those metrics or choices are computed from: the evaluation's test
    and synthetic-lesion lists, the validation list of the ``labelled-validation`` protocol) need ``"label": 0`` or
    ``1`` on every item: elsewhere a missing label means normal (:func:`is_normal_item`), which would silently turn
    an unlabelled abnormal image into a normal one in the metrics, so items without a label (or with another one)
    are refused there, naming them. In every list, a label that is not a number is refused, naming the item.

    Args:
        datalist: the datalist JSON (as written by ``python -m monai_hqanogan.data.prepare``).
        keys: lists that must be present and non-empty.
        base_dir: base of relative paths (default: the datalist's folder).
        verify_images: also decode every file.
        min_items: fewest items each list must hold.
        normal_keys: those of ``keys`` that must hold normal items only.
        labelled_keys: those of ``keys`` whose every item needs a label 0 or 1.
        resolution: the model resolution: images whose short side would round under 2 px when resized to it are
            refused (:func:`~monai_hqanogan.data.image_files.check_image_shape`).

    Returns:
        ``{key: items}`` with absolute paths.

    Raises:
        FileNotFoundError: the datalist or a listed file is missing (the message says how to prepare the data).
        ValueError: the datalist is not a JSON object of lists of ``{"image": path}`` items, a list is missing or
            too short, an item has a label that is not a number, a list of ``normal_keys`` holds abnormal items, a
            list of ``labelled_keys`` holds items without a label 0 or 1, or a file is empty, unreadable, truncated,
            not an image or a 3D volume.
        ImportError: a DICOM file is listed and pydicom is not installed.
    """
    path = Path(datalist).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"datalist {str(path)!r} does not exist. Prepare the data first, e.g. "
            f"'python -m monai_hqanogan.data.prepare br35h --download --output {path.parent}', or point "
            "'--dataset_dir' at a folder prepared from your own images "
            "('python -m monai_hqanogan.data.prepare folder --help')."
        )
    content = read_json_object(path)
    out = {}
    for key in keys:
        items = datalist_items(path, key, base_dir=base_dir, content=content)
        if len(items) < min_items:
            raise ValueError(f"datalist {str(path)!r} list {key!r} holds {len(items)} items; need >= {min_items}.")
        for i, entry in enumerate(content[key]):  # the labels as written (MONAI's loader turns strings into paths)
            _item_label(entry, path, key, i)  # a label that is not a number: named
        if key in normal_keys:
            _check_normal_only(path, key, content[key], items)
        if key in labelled_keys:
            _check_labelled(path, key, content[key], items)
        for item in items:
            for field in ("image", "mask"):
                if field in item:
                    verify_image_file(
                        item[field], f"{field} listed in the datalist", spatial_2d=True, decode=verify_images,
                        resolution=resolution,
                    )  # fmt: skip
        out[key] = items
    return out


def _item_label(item: Mapping[str, Any], path: Path, key: str, index: int) -> float:
    """An item's ``label`` as a number (0 when absent or null); a ValueError naming the item otherwise."""
    label = item.get("label", 0)
    if label is None:
        return 0.0
    try:
        value = float(label)
    except (TypeError, ValueError):
        value = float("nan")
    if value != value:  # NaN: not a number
        raise ValueError(
            f"datalist {str(path)!r}: item {index} of {key!r} ({item.get('image')!r}) has label {label!r}; expected "
            "0 (normal) or 1 (abnormal)."
        )
    return value


def _check_normal_only(
    path: Path, key: str, raw: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], shown: int = 5
) -> None:
    """Refuse abnormal items (``label`` other than 0 in ``raw``, the list as written) in a list that must be normal,
    naming how many and the first ``shown`` files (of ``items``, the same list with absolute paths)."""
    abnormal = [item for i, (entry, item) in enumerate(zip(raw, items)) if _item_label(entry, path, key, i) != 0]
    if not abnormal:
        return
    names = [Path(str(item["image"])).name for item in abnormal[:shown]]
    more = f" and {len(abnormal) - shown} more" if len(abnormal) > shown else ""
    raise ValueError(
        f"datalist {str(path)!r}: list {key!r} holds {len(abnormal)} abnormal item(s) (label != 0) of {len(items)}: "
        f"{', '.join(names)}{more}. The {key!r} list teaches the models what normal looks like, so it must hold "
        "normal images only (label 0 or no label): move abnormal images to 'validation' or 'test' (python -m "
        "monai_hqanogan.data.prepare folder --abnormal <folder> does), or set label 0 if they are normal."
    )


def _check_labelled(
    path: Path, key: str, raw: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], shown: int = 5
) -> None:
    """Refuse items of ``raw`` (the list as written) without a label or with a label other than 0 and 1 in a list
    that metrics are computed from, naming how many and the first ``shown`` (index and file, from ``items``)."""
    missing, other = [], []
    for i, (entry, item) in enumerate(zip(raw, items)):
        if entry.get("label") is None:
            missing.append(f"item {i} ({Path(str(item['image'])).name})")
        elif _item_label(entry, path, key, i) not in (0.0, 1.0):
            other.append(f"item {i} ({Path(str(item['image'])).name}: {entry['label']!r})")
    problems = []
    for found, what in ((missing, "without a label"), (other, "with a label other than 0 or 1")):
        if found:
            more = f" and {len(found) - shown} more" if len(found) > shown else ""
            problems.append(f"{len(found)} item(s) {what}: {', '.join(found[:shown])}{more}")
    if problems:
        raise ValueError(
            f"datalist {str(path)!r}: list {key!r} ({len(items)} items) holds {'; '.join(problems)}. Metrics are "
            f'computed from the labels of {key!r}, so every item needs "label": 0 (normal) or 1 (abnormal); an item '
            "without one would silently count as normal. Label every item, or leave unlabelled images out of it."
        )


# ---------------------------------------------------------------------- stage weights
def save_stage(path: str | os.PathLike, **modules: nn.Module) -> Path:
    """Save the state dicts of ``modules`` (name -> module) into one file, atomically; returns the path."""
    state = {name: module.state_dict() for name, module in modules.items()}
    path = save_checkpoint_atomic(state, path)
    logger.info(f"saved {', '.join(modules)} -> {path}")
    return path


def _load_state(module: nn.Module, state: Mapping[str, Any], name: str, path: str | os.PathLike) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{name} in {str(path)!r} does not fit the configured network (was it trained with other settings, "
            f"e.g. another resolution or channel count?): {str(err).splitlines()[0]}"
        ) from err


def load_stage(path: str | os.PathLike, produced_by: str = "the previous step", **modules: nn.Module) -> None:
    """Load a file written by :func:`save_stage` into ``modules`` (name -> module), strictly.

    Args:
        path: the stage file.
        produced_by: what writes that file (named in the error when it is missing, e.g. ``"train_generator.json"``).
        modules: the modules to fill, by the names used when saving.
    """
    state = load_checkpoint(require_file(path, produced_by))
    for name, module in modules.items():
        if name not in state:
            raise CheckpointError(f"{str(path)!r} holds {sorted(state)}, not {name!r}.")
        _load_state(module, state[name], name, path)


# ---------------------------------------------------------------------- data
def mask_transforms(resolution: int, keys: Sequence[str] | str = ("mask",)) -> Compose:
    """Lesion masks onto the model grid with the geometry of :func:`gan_image_transforms` (nearest neighbour, padded
    with 0, values {0, 1})."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    return Compose([
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        ToSingleChanneld(keys),
        Resized(keys, spatial_size=resolution, size_mode="longest", mode="nearest"),
        SpatialPadd(keys, spatial_size=(resolution, resolution), mode="constant", value=0.0),
        ThresholdIntensityd(keys, threshold=0.5, above=False, cval=1.0),  # > 0.5 -> 1
        ThresholdIntensityd(keys, threshold=0.5, above=True, cval=0.0),  # <= 0.5 -> 0
        EnsureTyped(keys, dtype="float32", track_meta=False),
    ])  # fmt: skip


def is_normal_item(item: Mapping[str, Any]) -> bool:
    """Whether a datalist item is normal (``label`` 0, absent or null): what the normal-only protocol may read.
    A label that is not a number raises a ValueError naming the item."""
    label = item.get("label")
    try:
        return label is None or float(label) == 0
    except (TypeError, ValueError):
        raise ValueError(
            f"datalist item {item.get('image')!r} has label {label!r}; expected 0 (normal) or 1 (abnormal)."
        ) from None


def _relative_to(image: Any, base: str | os.PathLike) -> str:
    """``image`` relative to ``base`` (as a datalist names it), or as it is where it cannot be (another drive)."""
    try:
        return Path(os.path.relpath(Path(image).expanduser().absolute(), Path(base).expanduser().absolute())).as_posix()
    except ValueError:
        return str(image)


def load_split(
    datalist: str | os.PathLike,
    key: str,
    resolution: int,
    base_dir: str | os.PathLike | None = None,
    with_masks: bool = False,
    limit: int | None = None,
    num_workers: int = 0,
    upper_percentile: float = 99.5,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    require_labels: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """One list of a datalist as tensors on the model grid.

    ``keep`` (item -> bool) selects items before anything is read (e.g. only the normal ones); ``limit`` then caps
    their number. An item without a label (or ``null``) counts as normal (label 0), as in :func:`is_normal_item`,
    unless ``require_labels``: then every item of the list needs a label 0 or 1 (for metrics; see
    :func:`check_datalist`'s ``labelled_keys``). A label that is not a number is refused, naming the item. With
    ``progress``, a bar over the images read shows on stderr when it is a terminal
    (:func:`~monai_hqanogan.utils.progress_bar`).

    Returns:
        ``{"images": [N, 1, R, R], "labels": [N] long (0 where an item has no label), "names": [N] str (file names),
        "paths": [N] str (the images relative to the datalist's base folder, as the datalist names them), "groups":
        [N]}`` plus ``"masks": [N, 1, R, R]`` with ``with_masks`` (items without a mask get an empty one).
        ``groups`` holds each item's ``group`` (its near-duplicate group, as ``prepare`` writes it; the bootstrap
        intervals of the evaluation resample whole groups), and a group of its own (``"item <i>"``) for an item
        without one.
    """
    labelled = [key] if require_labels else []
    items = check_datalist(
        datalist, [key], base_dir=base_dir, verify_images=False, labelled_keys=labelled, resolution=resolution
    )[key]
    path = Path(datalist).expanduser()
    items = [{**item, "label": int(_item_label(item, path, key, i))} for i, item in enumerate(items)]  # numbers
    if keep is not None:
        items = [item for item in items if keep(item)]
        if not items:
            raise ValueError(f"no item of the datalist's {key!r} list is kept (e.g. no normal image).")
    if limit is not None:
        items = items[:limit]
    image_tf = gan_image_transforms(resolution, keys=("image",), upper_percentile=upper_percentile)
    mask_tf = mask_transforms(resolution) if with_masks else None

    def transform(item: Mapping[str, Any]) -> dict[str, Any]:
        out = image_tf({"image": item["image"]})
        if mask_tf is not None:
            out["mask"] = (
                mask_tf({"mask": item["mask"]})["mask"] if "mask" in item else torch.zeros_like(out["image"][:1])
            )
        out["label"] = item["label"]  # a number: checked above
        return out

    loader = DataLoader(Dataset(items, transform), batch_size=32, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {"images": [], "labels": [], "masks": []}
    with progress_bar(progress=progress, total=len(items), desc=f"loading {key}", unit="img") as bar:
        for batch in loader:
            parts["images"].append(torch.as_tensor(batch["image"]).float())
            parts["labels"].append(torch.as_tensor(batch["label"]).long())
            if with_masks:
                parts["masks"].append(torch.as_tensor(batch["mask"]).float())
            bar.update(len(parts["labels"][-1]))
    out: dict[str, Any] = {
        "images": torch.cat(parts["images"]),
        "labels": torch.cat(parts["labels"]),
        "names": [Path(item["image"]).name for item in items],
        "paths": [_relative_to(item["image"], base_dir if base_dir is not None else path.parent) for item in items],
        "groups": [item["group"] if item.get("group") is not None else f"item {i}" for i, item in enumerate(items)],
    }
    if with_masks:
        out["masks"] = torch.cat(parts["masks"])
    return out


# ---------------------------------------------------------------------- calibration
def calibrate_detector(
    detector: nn.Module,
    datalist: str | os.PathLike,
    resolution: int,
    model_file: str | os.PathLike,
    report_file: str | os.PathLike | None = None,
    fit_key: str = "training",
    val_key: str = "validation",
    pixel_key: str | None = "localisation_validation",
    fit_limit: int | None = 2000,
    fpr: float = 0.05,
    pixel_fpr: float = 0.01,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    base_dir: str | os.PathLike | None = None,
    protocol: str = "normal-only",
    storage_dtype: str | None = None,
    progress: bool | str = True,
    smoothing_factors: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Calibrate an :class:`HQAnoGANDetector` on a datalist and save it as the bundle's ``model.pt``.

    With ``storage_dtype="float16"`` the networks are rounded to float16 precision before anything is scored
    (:func:`round_networks_to_half`) and stored in float16, so the file is half the size and the loaded model
    reproduces the calibration exactly.

    The W+ Gaussian is fitted on ``fit_key`` (normal training images). Then, by ``protocol`` (DESIGN.md section 4a):

    - ``"normal-only"`` (default): only the normal items of ``val_key`` are read (abnormal items are counted in the
      report and ignored); the score weights give the best AUROC on ``pixel_key`` (normal validation images with
      synthetic lesions pasted in; :data:`~monai_hqanogan.scoring.DEFAULT_WEIGHTS` when ``pixel_key`` is None), the
      image threshold sits at ``fpr`` on the normal validation images, the pixel threshold at the Dice maximum of
      the synthetic lesions (``pixel_fpr`` of normal pixels without them).
    - ``"labelled-validation"`` (opt-in): the weights give the best AUROC on the labelled ``val_key`` images (normal
      and real abnormal), the threshold is at their F1 maximum; the pixel threshold as above.

    An item without a label counts as normal in ``val_key`` under ``normal-only``; the lists whose labels a choice
    is made from (``pixel_key``, and ``val_key`` under ``labelled-validation``) need a label 0 or 1 on every item,
    and are refused before any image is read otherwise.

    ``progress`` (true or false, also as a string: the bundle's ``--progress false``) shows bars over the images read
    and scored, on stderr and only when it is a terminal (:func:`~monai_hqanogan.utils.progress_bar`); the report
    and the model file are the same either way.

    ``smoothing_factors`` (e.g. ``[1, 1.5, 2, 3]``) let the calibration choose the anomaly map's smoothing width too,
    as multiples of the detector's own, on the same images the weights are chosen on
    (:meth:`HQAnoGANDetector.calibrate`); the evaluation then lets every baseline choose among the same widths.

    Returns:
        the calibration report (also written to ``report_file`` as JSON, and kept in the detector's calibration);
        its ``protocol`` entry names the protocol and ``weights_from`` / ``threshold_from`` what each choice was made
        from.
    """
    from monai_hqanogan.scoring import check_protocol

    check_protocol(protocol)
    progress = as_bool(progress, "progress")
    detector._smoothing_candidates(smoothing_factors, protocol, pixel_key)  # a bad list fails before any reading
    start = time.perf_counter()
    if storage_dtype is not None:
        round_networks_to_half(detector)
    detector = detector.to(device).eval()
    keys = [fit_key, val_key] + ([pixel_key] if pixel_key else [])
    normal_only = protocol == "normal-only"
    labelled = ([] if normal_only else [val_key]) + ([pixel_key] if pixel_key else [])  # labels the choices use
    lists = check_datalist(datalist, keys, base_dir=base_dir, verify_images=False, labelled_keys=labelled)
    fit = load_split(datalist, fit_key, resolution, base_dir=base_dir, limit=fit_limit, progress=progress)
    val_items = lists[val_key]
    val = load_split(
        datalist, val_key, resolution, base_dir=base_dir, keep=is_normal_item if normal_only else None,
        require_labels=not normal_only, progress=progress,
    )  # fmt: skip
    if not normal_only and not bool(val["labels"].any()):
        raise ValueError(
            f"protocol 'labelled-validation' needs abnormal items (label 1) in the datalist's {val_key!r} list; it "
            "has none. Use the default protocol 'normal-only'."
        )
    loc = None
    if pixel_key:
        loc = load_split(
            datalist, pixel_key, resolution, base_dir=base_dir, with_masks=True, require_labels=True, progress=progress
        )
    report = detector.calibrate(
        fit["images"], val["images"], None if normal_only else val["labels"], fpr=fpr, pixel_fpr=pixel_fpr,
        batch_size=batch_size, protocol=protocol, selection_images=None if loc is None else loc["images"],
        selection_labels=None if loc is None else loc["labels"], selection_masks=None if loc is None else loc["masks"],
        progress=progress, smoothing_factors=smoothing_factors,
        selection_groups=None if loc is None else loc["groups"],
    )  # fmt: skip
    if normal_only:
        report["ignored_abnormal"] = len(val_items) - len(val["images"])
    report["counts"] = {
        "fit": len(fit["images"]),
        "validation": len(val["images"]),
        "validation_abnormal": int(val["labels"].sum()),
        "selection": 0 if loc is None or not normal_only else len(loc["images"]),
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    detector.calibration.info = dict(report)
    export_detector(detector, model_file, storage_dtype)
    if report_file is not None:
        write_text_atomic(report_file, json.dumps(json_ready(report), indent=1))
    logger.info(f"calibrated: {json.dumps(json_ready(report))}")
    return report


#: the parts of the detector's state dict that :func:`export_detector` may store in float16 (not the calibration)
NETWORK_PREFIXES = ("encoder.", "generator.", "discriminator.")


def round_networks_to_half(detector: nn.Module) -> nn.Module:
    """Round the floating-point parameters and buffers of the detector's networks (not its calibration) to float16
    precision in place, keeping their dtype, so the detector computes exactly what a float16-stored copy loaded
    back into float32 computes (float16 -> float32 is exact). Calibrate after this, then export with
    ``storage_dtype="float16"``: the fingerprint and every score then survive the round trip bit for bit."""
    for prefix in NETWORK_PREFIXES:
        module = getattr(detector, prefix[:-1], None)
        if module is None:
            continue
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().to(t.dtype))
    return detector


def export_detector(
    detector: nn.Module, model_file: str | os.PathLike, storage_dtype: str | torch.dtype | None = None
) -> Path:
    """Save the detector's state dict (E, G, D and the calibration) as the bundle's model file, atomically.

    Args:
        detector: the calibrated detector.
        model_file: where to write.
        storage_dtype: ``"float16"`` stores the networks' floating-point tensors in half precision (half the size;
            loading casts them back to the networks' float32); the calibration always stays float32. None: as is.
    """
    state = detector.state_dict()
    if storage_dtype is not None:
        dtype = getattr(torch, storage_dtype) if isinstance(storage_dtype, str) else storage_dtype
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"storage_dtype must be float16, bfloat16 or float32, got {storage_dtype!r}.")
        state = {
            k: v.to(dtype)
            if isinstance(v, torch.Tensor) and v.is_floating_point() and k.startswith(NETWORK_PREFIXES)
            else v
            for k, v in state.items()
        }
    path = save_checkpoint_atomic(state, model_file)
    logger.info(f"detector -> {path}")
    return path


def json_ready(value: Any) -> Any:
    """JSON-friendly copy: tensors to lists/floats, tuples to lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() > 1 else float(value)
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


#: the setting of the weights shipped in the bundle's ``models/model.pt``: what inference, evaluation, MONAI Label and
#: ``main_job --pretrained`` use when nothing else is said
SHIPPED_SETTING = "cpu"


def model_dir(bundle_root: str | os.PathLike, setting: str, run_dir: str | os.PathLike) -> str:
    """Where a config reads the detector from: the bundle's shipped ``models/`` for the shipped setting at its
    default run folder (no ``--setting`` or ``--run_dir`` given), else ``<run_dir>/models`` (what ``calibrate.json``
    writes). ``--model_file`` overrides both."""
    default_run = Path(bundle_root, "runs", SHIPPED_SETTING).expanduser().resolve()
    if setting == SHIPPED_SETTING and Path(run_dir).expanduser().resolve() == default_run:
        return os.path.join(bundle_root, "models")
    return os.path.join(run_dir, "models")


def require_file(path: str | os.PathLike, produced_by: str) -> Path:
    """``path`` if it is a file; otherwise a FileNotFoundError that says which step writes it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: run {produced_by} first (same settings).")
    return path


def check_model_file(path: str | os.PathLike, produced_by: str) -> Path:
    """``path`` if it exists and loads with ``weights_only=True`` (tensors and plain data only, so a file that would
    run code is refused before anything else reads it); a FileNotFoundError naming ``produced_by`` or a
    :class:`CheckpointError` naming the file otherwise."""
    path = require_file(path, produced_by)
    load_checkpoint(path)
    return path


def load_model_file(network: nn.Module, path: str | os.PathLike, produced_by: str) -> nn.Module:
    """Load the state dict in ``path`` (``weights_only=True``) into ``network`` strictly; returns ``network``.

    Raises:
        FileNotFoundError: ``path`` is missing (the message names ``produced_by``).
        CheckpointError: the file is unreadable, refused for safety, or does not fit ``network``.
    """
    path = require_file(path, produced_by)
    state = load_checkpoint(path)
    # NaN anywhere, or inf in a network's weights (an uncalibrated threshold is +inf on purpose), is a broken file
    bad = [
        k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
        and (bool(torch.isnan(v).any()) or (k.startswith(NETWORK_PREFIXES) and not bool(torch.isfinite(v).all())))
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds NaN or inf values in {bad[:5]}{' ...' if len(bad) > 5 else ''}: the weights or the "
            "calibration are broken; retrain or recalibrate (nothing was scored with them)."
        )
    _load_state(network, state, "the model", path)
    calibration = getattr(network, "calibration", None)
    if calibration is not None and bool(getattr(calibration, "calibrated", False)) and hasattr(network, "fingerprint"):
        if calibration.fingerprint != network.fingerprint():
            raise CheckpointError(
                f"the calibration in {str(path)!r} was made for other networks (fingerprint {calibration.fingerprint}, "
                f"these weights {network.fingerprint()}): run calibrate.json again for these weights."
            )
    return network


def load_bundle_detector(
    bundle_root: str | os.PathLike,
    model_file: str | os.PathLike,
    setting: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The detector as the bundle's ``configs/inference.json`` builds it (its ``network_def`` for ``setting``, or for
    a whole ``settings`` dict when given), with the weights and calibration of ``model_file`` loaded by
    :func:`load_model_file`, in eval mode. ``setting`` None keeps the config's default.

    Example::

        detector = load_bundle_detector("bundles/brain_mri_anomaly_hqanogan", "runs/cpu/models/model.pt", "cpu")
        record = detector.detect(images)  # pred_score, pred_label, anomaly_map, reconstruction, ...
    """
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle_root)})
    if setting is not None:
        parser.update({"setting": setting})
    if settings is not None:
        parser["settings"] = dict(settings)
    network = parser.get_parsed_content("network_def", instantiate=True)
    return load_model_file(network, model_file, "the bundle's calibrate.json").eval()
