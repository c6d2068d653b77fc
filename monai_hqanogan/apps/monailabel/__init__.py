"""A MONAI Label app that serves the brain MRI anomaly bundle: ``monailabel start_server --app <this folder> ...``.

Importing :mod:`.infer` needs MONAI Label (``pip install -e ".[monailabel]"`` in an environment whose torchvision
matches torch; see the bundle README). This package itself imports nothing from it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["APP_DIR", "heatmap_file_name", "heatmap_path"]

#: the folder to give ``monailabel start_server --app``
APP_DIR = Path(__file__).resolve().parent


def heatmap_file_name(
    image: str | os.PathLike | Sequence[str | os.PathLike], studies_dir: str | os.PathLike | None = None
) -> str:
    """The file name of the heat map of ``image``: unique per image, and a plain name (never a folder or ``..``).

    The image's id is its path relative to ``studies_dir`` when it lies inside (``sub/case.nii.gz``), its absolute
    path otherwise (a request may name any existing file); a DICOM series given as a list of files is their common
    folder. The name is the id made safe (folders joined with ``__``, every character but letters, digits, ``_``
    and ``-`` replaced by ``_``, so ``case.nii.gz`` and ``case.png`` stay apart as ``case_nii_gz`` and
    ``case_png``), then ``-`` and 12 hex digits of the id's SHA-256, which keep two ids apart even where the
    readable part is the same (``a/b.png`` and ``a__b.png``, or ids differing in case on a case-insensitive disk),
    then ``.nii.gz``: ``sub__case_nii_gz-1a2b3c4d5e6f.nii.gz``.
    """
    if isinstance(image, (str, os.PathLike)):
        paths = [image]
    else:
        paths = list(image) or ["image"]
    raw = os.path.commonpath([os.fspath(p) for p in paths]) if len(paths) > 1 else os.fspath(paths[0])
    path = _absolute(raw)
    identity, readable = path.as_posix(), path.name
    if studies_dir is not None:
        studies = _absolute(studies_dir)
        if path.is_relative_to(studies) and path != studies:
            identity = readable = path.relative_to(studies).as_posix()
    safe = re.sub(r"[^\w-]", "_", readable.replace("/", "__"))[:120] or "image"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe}-{digest}.nii.gz"


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute, ``..`` and symbolic links resolved (only ``..`` where the path cannot be resolved,
    e.g. it holds a NUL character)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        return Path(os.path.abspath(os.fspath(path)))


def heatmap_path(
    heatmap_dir: str | os.PathLike,
    image: str | os.PathLike | Sequence[str | os.PathLike],
    studies_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the heat map of ``image`` goes: ``heatmap_dir / heatmap_file_name(image, studies_dir)``, checked to lie
    directly in ``heatmap_dir`` (a ValueError otherwise)."""
    folder = Path(heatmap_dir).expanduser()
    path = folder / heatmap_file_name(image, studies_dir)
    if path.parent.resolve() != folder.resolve() or path.name in ("", ".", ".."):
        raise ValueError(f"the heat map of {str(image)!r} would be written outside {str(folder)!r}: refused.")
    return path
