"""Checks of user input at the entry points: image files, datalists, bundle settings and model files.

Every check runs before long work starts and raises an error that names the file or value and says what is wrong
with it, instead of letting a reader, a transform or torch fail later with a traceback from deep inside.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import json
import math
import numbers
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_hqanogan.networks.nets.stylegan2 import check_resolution

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "SETTING_RULES",
    "SETTINGS_KEYS",
    "SLICE_AXES",
    "verify_image_file",
    "read_json_object",
    "datalist_items",
    "load_settings",
    "check_settings",
    "check_overrides",
    "check_slice_axis",
    "did_you_mean",
    "as_bool",
]

#: file endings read as images (a folder of ``.dcm`` files is read as one DICOM series)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".nrrd", ".mha")
#: the largest 2D image (or volume slice) accepted, in pixels (8192 x 8192); larger ones are refused before loading
MAX_SLICE_PIXELS = 8192 * 8192

_RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_NIFTI = (".nii", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _require_pydicom(path: Path, label: str) -> None:
    if importlib.util.find_spec("pydicom") is None:
        raise ImportError(f"{label} {str(path)!r} is DICOM: reading it needs pydicom (pip install pydicom).")


def verify_image_file(
    path: str | os.PathLike,
    label: str = "image",
    spatial_2d: bool = False,
    decode: bool = True,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
) -> Path:
    """Check that ``path`` is an image MONAI's ``LoadImage`` can read, without keeping it in memory.

    Always: the file exists and is not empty, its ending is one of :data:`IMAGE_SUFFIXES` (a folder must hold
    ``.dcm`` files, and DICOM needs pydicom), PNG/JPEG headers open (Pillow refuses decompression bombs there),
    NIfTI headers read with a shape that has a 2D slice of at most ``max_slice_pixels``. With ``decode``: PNG/JPEG
    files decode completely (truncated files fail), NIfTI files hold all the data their header announces (read in
    chunks, so memory stays bounded), and a 2D NIfTI holds no NaN or inf.

    Args:
        path: the file (or DICOM folder).
        label: how the message names it, e.g. ``"image listed in the datalist"``.
        spatial_2d: refuse 3D volumes (more than one slice): training, calibration and evaluation need 2D images.
        decode: read the whole file, not only its header.
        max_slice_pixels: the largest 2D image or volume slice accepted.

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: DICOM without pydicom.
        ValueError: anything else, naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{label} {str(path)!r} does not exist.")
    if path.is_dir():
        if any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            _require_pydicom(path, label)
            return path
        raise ValueError(f"{label} {str(path)!r} is a folder without DICOM (.dcm) files, not an image.")
    if path.stat().st_size == 0:
        raise ValueError(f"{label} {str(path)!r} is empty (0 bytes).")
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{label} {str(path)!r} is not an image file (ending {suffix or 'none'!r}); "
            f"supported: {', '.join(IMAGE_SUFFIXES)}."
        )
    if suffix == ".dcm":
        _require_pydicom(path, label)
    elif suffix in _RASTER:
        _verify_raster(path, label, decode, max_slice_pixels)
    elif suffix in _NIFTI:
        _verify_nifti(path, label, spatial_2d, decode, max_slice_pixels)
    return path


def _verify_raster(path: Path, label: str, decode: bool, max_slice_pixels: int) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only; Pillow refuses decompression bombs here
            width, height = img.size
            if width * height > max_slice_pixels:
                raise _TooLarge(f"{width} x {height} pixels")
            if decode:
                img.verify()
        if decode:
            with Image.open(path) as img:
                img.load()
    except (_TooLarge, Image.DecompressionBombError) as err:
        raise ValueError(
            f"{label} {str(path)!r} is too large to load safely ({err}; at most {max_slice_pixels} pixels): "
            "downsample it first."
        ) from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, UnidentifiedImageError, ... for bad files
        raise ValueError(
            f"{label} {str(path)!r} cannot be read: it is truncated, corrupt or not a {_suffix(path)[1:].upper()} "
            f"image ({type(err).__name__}: {err})."
        ) from err


class _TooLarge(Exception):
    pass


def _verify_nifti(path: Path, label: str, spatial_2d: bool, decode: bool, max_slice_pixels: int) -> None:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # header only
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:
        raise ValueError(f"{label} {str(path)!r} is not a readable NIfTI file: {err}") from err
    if len(shape) < 2 or any(s == 0 for s in shape):
        raise ValueError(f"{label} {str(path)!r} has shape {shape}: no 2D slice.")
    if shape[0] * shape[1] > max_slice_pixels:
        raise ValueError(
            f"{label} {str(path)!r} has slices of {shape[0]} x {shape[1]} pixels, more than {max_slice_pixels}: "
            "too large to load safely; downsample it first."
        )
    if spatial_2d and any(s > 1 for s in shape[2:]):
        raise ValueError(
            f"{label} {str(path)!r} is a 3D volume (shape {shape}), but this step needs 2D images. Slice volumes "
            "into 2D images with 'python -m monai_hqanogan.data.prepare folder --normal <folder> --output <out>'."
        )
    # where the data end: the offset and dtype as stored in the file (nibabel resets the offset of img.header to 0)
    proxy = img.dataobj
    offset = int(getattr(proxy, "offset", img.header.get_data_offset()))
    itemsize = np.dtype(getattr(proxy, "dtype", img.header.get_data_dtype())).itemsize
    expected = offset + math.prod(shape) * itemsize
    gzipped = _suffix(path) == ".nii.gz"
    if gzipped and not decode:
        return
    try:
        if gzipped:  # decompressed in chunks up to a little past the data's end; reaching the end checks the CRC
            found, cap = 0, expected + (1 << 20)
            with gzip.open(path, "rb") as stream:
                while found <= cap and (chunk := stream.read(1 << 22)):
                    found += len(chunk)
        else:  # .nii: the file size is enough (and costs nothing, so even without decode)
            found = path.stat().st_size
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{label} {str(path)!r} is truncated or corrupt: {type(err).__name__}: {err}") from err
    if found < expected:
        raise ValueError(
            f"{label} {str(path)!r} is truncated: {found} of the {expected} bytes its header announces "
            f"({offset} header bytes + {math.prod(shape)} voxels x {itemsize} bytes)."
        )
    if not decode:
        return
    if math.prod(shape[2:]) <= 1:
        data = np.asanyarray(img.dataobj)
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise ValueError(
                f"{label} {str(path)!r} holds {int((~np.isfinite(data)).sum())} NaN or inf pixels; fix the file "
                "(or prepare it with 'python -m monai_hqanogan.data.prepare folder', which sets them to the minimum)."
            )


# ---------------------------------------------------------------------- datalists
def read_json_object(path: str | os.PathLike, what: str = "datalist") -> dict[str, Any]:
    """The JSON object (dict) in ``path``; a ValueError naming the file when it is not UTF-8 JSON or not an object."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not a JSON text file (not UTF-8): {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(
            f"{what} {str(path)!r} holds a JSON {type(content).__name__}; expected an object of lists such as "
            '{"training": [{"image": "images/a.png"}, ...]}.'
        )
    return content


def datalist_items(
    path: str | os.PathLike, key: str, base_dir: str | os.PathLike | None = None, content: Mapping | None = None
) -> list[dict[str, Any]]:
    """The items of list ``key`` of a MONAI datalist with absolute paths, after checking their structure: a list of
    objects, each with a non-empty ``"image"`` path (and a ``"mask"`` path if any)."""
    from monai.data import load_decathlon_datalist

    path = Path(path)
    content = read_json_object(path) if content is None else content
    if key not in content:
        raise ValueError(f"datalist {str(path)!r} has no list {key!r}; it has {sorted(content)}.")
    items = content[key]
    if not isinstance(items, list):
        raise ValueError(f"datalist {str(path)!r}: {key!r} is a {type(items).__name__}, expected a list of items.")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            raise ValueError(
                f"datalist {str(path)!r}: item {i} of {key!r} is {str(item)[:80]!r}; expected an object such as "
                '{"image": "images/a.png", "label": 0}.'
            )
        for field in ("image", "mask"):
            if field in item and (not isinstance(item[field], str) or not item[field].strip()):
                raise ValueError(
                    f"datalist {str(path)!r}: item {i} of {key!r} has {field} {item[field]!r}; expected a file path."
                )
    return load_decathlon_datalist(path, data_list_key=key, base_dir=base_dir or path.parent)


# ---------------------------------------------------------------------- bundle settings
def as_bool(value: Any, name: str | None = "value") -> bool | None:
    """``value`` as a bool: a bool, or the strings ``"true"``/``"false"`` (any case), which is what a JSON ``true``
    in ``--settings '{...}'`` becomes through MONAI's command line (it parses Python literals, so ``false`` stays a
    string, and a non-empty string is truthy). Anything else raises a ValueError naming ``name`` (None: returns
    None instead)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if name is None:
        return None
    raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__}).")


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value) > 0


def _resolution(value: Any) -> bool:
    try:
        check_resolution(value)
    except ValueError:
        return False
    return True


_POSITIVE_INTS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "encoder_base_channels")
_POSITIVE_INTS += ("encoder_max_channels", "batch_size", "autoencoder_epochs")
_COUNTS = ("checkpoint_epochs", "sample_epochs", "num_workers", "seed")
_POSITIVE_NUMBERS = (
    "generator_lr",
    "encoder_lr",
    "generator_kimg",
    "encoder_kimg",
    "autoencoder_seconds",
    "total_kimg",
)

#: the spatial axes of a 3D volume [H, W, D] that volumes may be sliced along (negative: from the end)
SLICE_AXES = (-3, -2, -1, 0, 1, 2)


def _slice_axis(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) in SLICE_AXES


#: setting (or top-level override) -> (check, what it must be)
SETTING_RULES = {
    "resolution": (_resolution, "a power of two between 8 and 1024"),
    **{k: (_positive_int, "a positive integer") for k in _POSITIVE_INTS},
    **{k: (_non_negative_int, "an integer >= 0") for k in _COUNTS},
    **{k: (_positive_number, "a positive number") for k in _POSITIVE_NUMBERS},
    "amp": (lambda v: as_bool(v, None) is not None, "true or false"),
    # optional wall-clock budgets (safety caps next to the kimg budgets) of the trainers, in seconds
    "generator_seconds": (_positive_number, "a positive number of seconds"),
    "encoder_seconds": (_positive_number, "a positive number of seconds"),
    # inference.json's axis of 3D volumes (SliceAnomalyInferer); any other integer would wrap around silently
    "slice_axis": (_slice_axis, "a spatial axis of a 3D volume, an integer from -3 to 2 (-1: the last)"),
}
_OVERRIDE_ONLY = ("total_kimg", "seed", "slice_axis")
_OPTIONAL = ("generator_seconds", "encoder_seconds")
#: the keys a settings dict (an entry of ``configs/settings.json`` or ``--settings '{...}'``) may hold
SETTINGS_KEYS = tuple(k for k in SETTING_RULES if k not in _OVERRIDE_ONLY) + ("description",)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to ``name`` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), sorted(set(known)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_settings(bundle_root: str | os.PathLike, setting: str) -> dict[str, Any]:
    """``configs/settings.json[setting]`` of the bundle at ``bundle_root``, with a clear error for an unknown name."""
    path = Path(bundle_root) / "configs" / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is {str(bundle_root)!r} the bundle folder?")
    settings = read_json_object(path, "settings file")
    if not isinstance(setting, str) or setting not in settings:
        raise ValueError(f"unknown setting {setting!r}: {str(path)!r} has {sorted(settings)} (--setting NAME).")
    return dict(settings[setting])


def check_settings(settings: Any) -> dict[str, Any]:
    """Check a bundle's settings dict before any work: every key of :data:`SETTING_RULES` but ``total_kimg``,
    ``seed`` and ``slice_axis`` (top-level values of the configs) and the optional wall-clock caps must be
    present with the right type. An override such as ``--settings '{"resolution": 64}'`` replaces the whole dict,
    so it must hold every entry (copy one of ``configs/settings.json`` and change values); single values are
    overridden through the top-level ids ``--resolution``, ``--batch_size``, ``--total_kimg`` (see
    :func:`check_overrides`). Keys outside :data:`SETTINGS_KEYS` (the rules' keys and ``description``) are refused,
    naming the nearest known key: a misspelt entry would otherwise be ignored and its default used.

    Returns:
        a copy of ``settings``.

    Raises:
        ValueError: naming each unknown key (with the nearest known one), each missing or wrongly typed value and
            what it must be.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(
            f"settings must be a dict such as configs/settings.json's 'demo' entry, got {type(settings).__name__} "
            f"{str(settings)[:80]!r}; choose one with --setting NAME."
        )
    problems = [_unknown_setting(k) for k in settings if k not in SETTINGS_KEYS]
    missing = [k for k in SETTING_RULES if k not in settings and k not in _OVERRIDE_ONLY + _OPTIONAL]
    if missing:
        problems.append(
            f"settings lack {missing} (--settings replaces the whole dict: give every entry of configs/settings.json, "
            "or override single values with --resolution, --batch_size or --total_kimg)"
        )
    problems += _problems({k: v for k, v in settings.items() if k in SETTINGS_KEYS and k in SETTING_RULES})
    if problems:
        raise ValueError("bad bundle settings: " + "; ".join(problems) + ".")
    return dict(settings)


def _unknown_setting(key: Any) -> str:
    """What to say about a key of a settings dict outside :data:`SETTINGS_KEYS`."""
    close = difflib.get_close_matches(str(key), sorted(SETTINGS_KEYS + _OVERRIDE_ONLY), n=1, cutoff=0.6)
    if close and close[0] in _OVERRIDE_ONLY:
        what = "is a top-level value" if close[0] == key else f"is unknown (did you mean top-level {close[0]!r}?)"
        return f"settings key {key!r} {what}, not a settings entry: override it on its own with --{close[0]} VALUE"
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown settings key {key!r}{hint}; settings hold {sorted(SETTINGS_KEYS)}"


def check_slice_axis(slice_axis: Any) -> int:
    """``slice_axis`` if it is a spatial axis of a 3D volume (:data:`SLICE_AXES`, -3 to 2); a ValueError naming the
    value otherwise (``SliceAnomalyInferer`` takes the axis modulo 3, so 7 would silently become axis 1)."""
    problems = _problems({"slice_axis": slice_axis})
    if problems:
        raise ValueError("bad bundle overrides: " + problems[0] + ".")
    return int(slice_axis)


def check_overrides(**values: Any) -> dict[str, Any]:
    """Check top-level values of a bundle config (``resolution=@resolution, batch_size=@batch_size,
    total_kimg=@total_kimg``), which a command line can override one by one, by the rules of :data:`SETTING_RULES`.

    Raises:
        ValueError: naming each wrongly typed value and what it must be.
    """
    unknown = [k for k in values if k not in SETTING_RULES]
    if unknown:
        raise ValueError(f"check_overrides knows no rule for {unknown}; known: {sorted(SETTING_RULES)}.")
    problems = _problems(values)
    if problems:
        raise ValueError("bad bundle overrides: " + "; ".join(problems) + ".")
    return values


def _problems(values: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        rule, what = SETTING_RULES[key]
        if not rule(value):
            out.append(f"{key} must be {what}, got {value!r} ({type(value).__name__})")
    return out
