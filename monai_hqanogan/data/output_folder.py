"""The output folder of a preparation: ownership, reuse, staging and the atomic commit.

The output folder is written atomically: everything goes to a staging folder first, and ``datalist.json`` is moved
in last, so an interrupted preparation never leaves a datalist that points at missing files. A rerun with the same
settings returns the existing datalist at once; other settings are refused unless ``overwrite=True``.

A preparation never deletes what it did not write: it marks the output folder as its own with
:data:`PREPARED_MARKER`, replaces only its own entries (``datalist.json``, ``images/``, ``masks/``, ``README.md``,
``preview.png``) and only in a marked folder, refuses a non-empty unmarked folder (with ``overwrite=True`` too when
one of those names is already there), and refuses an output folder that is, contains or lies inside an input folder
(see :func:`~monai_hqanogan.data.datalist_writer.check_preparation_settings` and :func:`check_output_dir`). A
symbolic link among those entries (or inside ``images/`` and ``masks/``) is refused, never deleted or written
through (:func:`check_no_links`). The staging folder ``.staging`` carries an owner file: the next preparation removes
one whose process has ended (``kill -9``) and refuses one whose process still runs or that has no owner file
(:func:`new_staging_dir`).

:func:`run_in_staging` runs these steps in order around a preparation's writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_hqanogan.data.grouping import LOCALISATION_KEYS, SPLIT_KEYS
from monai_hqanogan.utils.staging import create_staging_dir

__all__ = [
    "PREPARED_MARKER",
    "fingerprint_files",
    "check_output_dir",
    "reuse_existing",
    "new_staging_dir",
    "check_no_links",
    "commit_staging",
    "run_in_staging",
    "jsonable",
]

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


def jsonable(value: Any) -> Any:
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
    settings = jsonable(settings)
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


def commit_staging(staging: Path, output_dir: Path) -> Path:
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


def run_in_staging(
    output_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    overwrite: bool,
    write: Callable[[Path, Path], Path],
) -> Path:
    """The steps around a preparation: check the output folder (:func:`check_output_dir`); return the datalist of an
    earlier preparation with the same ``settings`` (:func:`reuse_existing`); else call ``write(staging, output)``
    with a new staging folder (:func:`new_staging_dir`) and return what it returns, the committed ``datalist.json``
    (``write`` ends with :func:`commit_staging`). A failed or interrupted ``write`` leaves no partial output: the
    staging folder is removed and the error raised again.

    Args:
        output_dir: the output folder.
        settings: the reuse key (see :func:`reuse_existing`).
        overwrite: see :func:`check_output_dir` and :func:`reuse_existing`.
        write: stores the images in the staging folder, writes the datalist and commits it.
    """
    out = check_output_dir(output_dir, overwrite)
    existing = reuse_existing(out, settings, overwrite)
    if existing is not None:
        return existing
    staging = new_staging_dir(out)
    try:
        return write(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed or interrupted run leaves no partial output
        raise
