"""The bundle's config files: ``configs/common.json`` and the configs that are composed with it.

``common.json`` holds what the steps share (the imports, ``bundle_root``, the settings lookup, the device, the data
and run paths, the image transforms and the network definitions). MONAI composes configs as a list, the later files
adding to and overriding the earlier ones, so the training, calibration and evaluation configs run as::

    python -m monai.bundle run --config_file "['configs/common.json','configs/train_generator.json']" ...

``inference.json`` runs alone (MONAI Label's ``BundleInferTask``, ``verify_net_in_out`` and ``ckpt_export`` read that
one file): it builds ``common.json``'s detector with :func:`parse_config_id`. MONAI's own ``%file#id`` macro reads the
file relative to the working directory, not to the bundle, so it cannot be used for that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMON_CONFIG", "STANDALONE_CONFIGS", "bundle_config_files", "check_config_files", "parse_config_id"]

#: the file of ``configs/`` that the other configs are composed with, first
COMMON_CONFIG = "common.json"
#: the configs that run alone (they hold or build everything they use)
STANDALONE_CONFIGS = ("inference.json",)


def bundle_config_files(bundle_root: str | os.PathLike, config: str, *overlays: str) -> list[str]:
    """The ``--config_file`` list that runs ``config`` of the bundle (a file name such as ``"train_generator.json"``),
    then any ``overlays`` (``"multi_gpu_train_generator.json"``): ``configs/common.json`` first, except for the
    :data:`STANDALONE_CONFIGS`.

    Example:
        >>> bundle_config_files("bundle", "calibrate.json")
        ['bundle/configs/common.json', 'bundle/configs/calibrate.json']
        >>> bundle_config_files("bundle", "inference.json")
        ['bundle/configs/inference.json']
    """
    folder = Path(bundle_root) / "configs"
    names = (config, *overlays) if config in STANDALONE_CONFIGS else (COMMON_CONFIG, config, *overlays)
    return [str(folder / name) for name in names]


def parse_config_id(config_file: str | os.PathLike, id: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The parsed (instantiated) content of ``id`` in another config file, with ``overrides`` replacing that file's
    ids first: a ``%file#id`` macro that finds its file through the path it is given (e.g. built from ``@bundle_root``)
    rather than the working directory, and that is parsed with the caller's values.

    Args:
        config_file: a JSON or YAML bundle config, e.g. ``<bundle_root>/configs/common.json``.
        id: the id to parse, ``#`` separating nested keys (``"detector_def"``).
        overrides: ids of ``config_file`` to replace before parsing, e.g. ``{"settings": "@settings"}`` in the calling
            config, so that its overrides reach the parsed content.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    if id not in parser:
        raise KeyError(f"{str(config_file)!r} defines no id {id!r}.")
    parser.update(dict(overrides or {}))
    return parser.get_parsed_content(id)


def check_config_files(files: str | Sequence[str]) -> None:
    """Refuse a ``--config_file`` list that leaves out ``configs/common.json`` while its configs need it: a config
    that refers (``@id``) to an id that none of the files defines but ``common.json`` next to them does. MONAI would
    stop later with "the referring item ... is not defined"; this names the list to pass instead.

    Raises:
        ValueError: naming the ids the configs miss and the ``--config_file`` list that holds them.
    """
    from monai.bundle import ConfigParser

    names = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not names or any(Path(n).name == COMMON_CONFIG for n in names):
        return
    common = Path(names[0]).parent / COMMON_CONFIG
    if not common.is_file():
        return
    config = ConfigParser.load_config_files(names)
    referred = {ref.replace("::", "#").split("#")[0] for ref in _references(config)}
    shared = ConfigParser.load_config_file(common)
    missing = sorted(r for r in referred if r not in config and r in shared)
    if missing:
        composed = ",".join(repr(str(n)) for n in (common, *names))
        raise ValueError(
            f"{[str(n) for n in names]} refer to {missing}, which {str(common)!r} defines: compose them with it, "
            f'common.json first: --config_file "[{composed}]".'
        )


def _references(config: Any) -> set[str]:
    """Every id that the strings of ``config`` refer to (``@id``, ``$...@id...``)."""
    from monai.bundle.reference_resolver import ReferenceResolver

    if isinstance(config, str):
        return set(ReferenceResolver.match_refs_pattern(config))
    values = config.values() if isinstance(config, Mapping) else config if isinstance(config, list) else ()
    return set().union(*(_references(v) for v in values))
