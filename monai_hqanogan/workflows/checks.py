"""Checks of user input at the bundles' entry points: datalists and bundle settings.

Every check runs before long work starts and raises an error that names the file or value and says what is wrong
with it, instead of letting a reader, a transform or torch fail later with a traceback from deep inside. The checks
of image files (:data:`IMAGE_SUFFIXES`, :func:`verify_image_file`, the size caps, ...) live in
:mod:`monai_hqanogan.data.image_files`, below every reader of images; they are imported here under their old path.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai_hqanogan.data.image_files import (
    IMAGE_SUFFIXES,
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    SLICE_AXES,
    check_image_shape,
    check_size_caps,
    check_slice_axis,
    image_header_shape,
    verify_image_file,
)
from monai_hqanogan.utils.validation import MAX_RESOLUTION, MIN_RESOLUTION, as_bool, check_resolution

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "SETTING_RULES",
    "SETTINGS_KEYS",
    "SLICE_AXES",
    "verify_image_file",
    "image_header_shape",
    "check_image_shape",
    "check_size_caps",
    "read_json_object",
    "datalist_items",
    "load_settings",
    "check_settings",
    "check_overrides",
    "check_slice_axis",
    "did_you_mean",
    "as_bool",
]


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
    """The items of list ``key`` of a MONAI datalist with absolute paths, after checking their structure: a
    non-empty list of objects, each with a non-empty ``"image"`` path (and a ``"mask"`` path if any).

    Raises:
        ValueError: the datalist has no list ``key``, or it is not a list, is empty, or holds an item that is not
            such an object; the message names the datalist and the list.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    content = read_json_object(path) if content is None else content
    if key not in content:
        raise ValueError(f"datalist {str(path)!r} has no list {key!r}; it has {sorted(content)}.")
    items = content[key]
    if not isinstance(items, list):
        raise ValueError(f"datalist {str(path)!r}: {key!r} is a {type(items).__name__}, expected a list of items.")
    if not items:  # MONAI's loader raises a bare IndexError on an empty "test" list
        raise ValueError(
            f"datalist {str(path)!r}: list {key!r} is empty; it must hold at least one item such as "
            '{"image": "images/a.png"}.'
        )
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


def _slice_axis(value: Any) -> bool:
    try:
        check_slice_axis(value)
    except ValueError:
        return False
    return True


#: setting (or top-level override) -> (check, what it must be)
SETTING_RULES = {
    "resolution": (_resolution, f"a power of two between {MIN_RESOLUTION} and {MAX_RESOLUTION}"),
    **{k: (_positive_int, "a positive integer") for k in _POSITIVE_INTS},
    **{k: (_non_negative_int, "an integer >= 0") for k in _COUNTS},
    **{k: (_positive_number, "a positive number") for k in _POSITIVE_NUMBERS},
    "amp": (lambda v: as_bool(v, None) is not None, "true or false"),
    # optional wall-clock budgets (safety caps next to the kimg budgets) of the trainers, in seconds
    "generator_seconds": (_positive_number, "a positive number of seconds"),
    "encoder_seconds": (_positive_number, "a positive number of seconds"),
    # inference.json's axis of 3D volumes (SliceAnomalyInferer); any other integer would wrap around silently
    "slice_axis": (_slice_axis, "a spatial axis of a 3D volume, an integer from -3 to 2 (-1: the last)"),
    # the configs' progress-bar switch (--progress false; the main job's --no-progress)
    "progress": (lambda v: as_bool(v, None) is not None, "true or false"),
    # inference.json's number of detection panels (-1 wrote none, silently)
    "max_panels": (_non_negative_int, "an integer >= 0 (0: no panels)"),
}
_OVERRIDE_ONLY = ("total_kimg", "seed", "slice_axis", "progress", "max_panels")
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
    """Check a bundle's settings dict before any work: every key of :data:`SETTING_RULES` but ``total_kimg``, ``seed``,
    ``slice_axis``, ``progress`` and ``max_panels`` (top-level values of the configs) and the optional wall-clock caps
    must be present with the right type. An override such as ``--settings '{"resolution": 64}'`` replaces the whole
    dict, so it must hold every entry (copy one of ``configs/settings.json`` and change values); single values are
    overridden through the top-level ids ``--resolution``, ``--batch_size``, ``--total_kimg`` (see
    :func:`check_overrides`). Keys outside
    :data:`SETTINGS_KEYS` (the rules' keys and ``description``) are refused, naming the nearest known key: a misspelt
    entry would otherwise be ignored and its default used.

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
