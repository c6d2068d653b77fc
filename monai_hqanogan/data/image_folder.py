"""Your own folders of images prepared for anomaly detection: :func:`prepare_image_folder`, the library side of
``python -m monai_hqanogan.data.prepare folder``.

Normal (and optionally abnormal) images and masks are found recursively (:func:`find_image_files`: PNG, JPEG, BMP,
TIFF, NIfTI and DICOM series), checked from their header before any pixel is read, read with MONAI's ``LoadImage``,
stored as 8-bit grey PNGs (3D volumes as slices) and handed to the shared writer
(:func:`~monai_hqanogan.data.datalist_writer.write_prepared_datalist`), which groups, splits and writes the datalist.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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
from monai_hqanogan.data.image_files import (
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    check_image_shape,
    check_size_caps,
    image_header_shape,
)
from monai_hqanogan.data.output_folder import fingerprint_files, run_in_staging
from monai_hqanogan.transforms.array import ToSingleChannel, intensity_window, is_background_slice
from monai_hqanogan.transforms.io import shown_colours

__all__ = ["ImageFile", "find_image_files", "prepare_image_folder"]

_MASK_SUFFIXES = ("_mask", "_seg", "_label", "-mask")


@dataclass
class ImageFile:
    """One readable input: a 2D image, a NIfTI file (2D or 3D) or a DICOM series (a folder of .dcm files).

    Args:
        path: the file (the folder for DICOM).
        relative: path relative to the class folder, POSIX style.
        kind: ``"image"``, ``"nifti"`` or ``"dicom"``.
    """

    path: Path
    relative: str
    kind: str

    @property
    def stem(self) -> str:
        """The file name without its suffix (``.nii.gz`` counts as one); the folder name for DICOM."""
        name = self.path.name
        for suffix in (*NIFTI_SUFFIXES, *RASTER_SUFFIXES):
            if self.kind != "dicom" and name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def safe_name(self) -> str:
        """A flat output name: the relative path without suffix, folders joined with ``__`` (two inputs with one
        name are refused before any work, by :func:`_check_stored_names`)."""
        parent = Path(self.relative).parent.as_posix()
        return self.stem if parent == "." else f"{parent.replace('/', '__')}__{self.stem}"


def find_image_files(folder: str | os.PathLike, what: str = "image") -> list[ImageFile]:
    """2D images (:data:`~monai_hqanogan.data.image_files.RASTER_SUFFIXES`: PNG, JPEG, BMP, TIFF), NIfTI files
    (.nii, .nii.gz) and DICOM series (each folder holding .dcm files) under ``folder``, recursively, sorted; hidden
    files are ignored.

    Args:
        folder: the folder to search.
        what: a word for error messages (``"normal"``, ``"mask"``, ...).
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} folder {root} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} folder {root} is not a folder.")
    found: list[ImageFile] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(current)
        files = sorted(f for f in files if not f.startswith("."))
        if any(f.lower().endswith(".dcm") for f in files):
            found.append(ImageFile(here, here.relative_to(root).as_posix(), "dicom"))
        for f in files:
            lower = f.lower()
            if lower.endswith(RASTER_SUFFIXES):
                found.append(ImageFile(here / f, (here / f).relative_to(root).as_posix(), "image"))
            elif lower.endswith(NIFTI_SUFFIXES):
                found.append(ImageFile(here / f, (here / f).relative_to(root).as_posix(), "nifti"))
    if not found:
        raise ValueError(
            f"{what} folder {root} holds no PNG, JPEG, NIfTI (.nii, .nii.gz), DICOM (.dcm), BMP or TIFF file."
        )
    if any(f.kind == "dicom" for f in found) and importlib.util.find_spec("pydicom") is None:
        raise ImportError(f"{what} folder {root} holds DICOM files: reading them needs pydicom (pip install pydicom).")
    return found


class _UnusableFile(Exception):
    """An input that cannot be used (unreadable, truncated, beyond a size cap, a shape the networks cannot use, no
    finite pixel, constant): skipped with a warning."""


#: the size caps of :mod:`monai_hqanogan.data.image_files`, the defaults of :func:`prepare_image_folder`
_DEFAULT_CAPS = {"max_slice_pixels": MAX_SLICE_PIXELS, "max_volume_voxels": MAX_VOLUME_VOXELS}


def _check_header(file: ImageFile, options: dict[str, Any], what: str = "image") -> None:
    """Refuse an input from its header (:func:`~monai_hqanogan.data.image_files.image_header_shape`: PNG/JPEG,
    NIfTI, and DICOM series with pydicom), before any pixel is read: beyond the size caps, not 2D or 3D, or a slice
    with a side under ``MIN_SIDE`` px in the file or once stored at ``max_size`` (by
    :func:`~monai_hqanogan.data.image_files.check_image_shape`), as ``_UnusableFile``. The spatial shape is the one
    :func:`_read` makes (channels averaged, trailing singleton dimensions dropped). A header that cannot be read is
    left to :func:`_read`, which says why."""
    try:
        found = image_header_shape(file.path)
    except Exception:  # unreadable, or beyond Pillow's decompression-bomb limit: _read names it
        return
    if found is None:
        return
    spatial, channels = found
    while len(spatial) > 2 and spatial[-1] == 1:
        spatial = spatial[:-1]
    try:
        check_image_shape(
            spatial,
            f"{what} {file.relative}",
            channels,
            slice_axis=options["slice_axis"],
            resolution=options["max_size"],
            **options.get("size_caps", _DEFAULT_CAPS),
        )
    except ValueError as e:
        raise _UnusableFile(str(e)) from e


@functools.cache
def _loader(kind: str) -> Any:
    """MONAI's ``LoadImage`` for one kind of file (``"image"``, ``"nifti"``, ``"dicom"``), built once per process: a
    ``LoadImage`` instantiates every reader MONAI has, and where pydicom is installed without nvImageCodec (any
    CPU machine) each one logs a warning, once per file when a loader was built per file."""
    from monai.data import PILReader
    from monai.transforms import LoadImage

    reader: Any = {"image": PILReader(converter=shown_colours), "nifti": "NibabelReader", "dicom": "PydicomReader"}
    return LoadImage(image_only=True, ensure_channel_first=True, reader=reader[kind])


def _read(file: ImageFile) -> np.ndarray:
    """The file as a float32 array of spatial dims (one grey channel), through MONAI's ``LoadImage``; NaN and inf
    become the minimum of the finite values (with a warning). Channels become one grey channel by
    :class:`~monai_hqanogan.transforms.ToSingleChannel`, the rule of training and inference: a 2- or 4-channel image
    is LA or RGBA, whose alpha (opacity, not intensity) is ignored, and the colour channels are averaged. Palette,
    CMYK and 1-bit PNG/JPEG images are read as the colours they show, not as palette indices or ink
    (:func:`~monai_hqanogan.transforms.shown_colours`, the loader's rule too). Unusable files raise OSError,
    RuntimeError (MONAI's readers) or ``_UnusableFile``."""
    try:
        array = np.asarray(_loader(file.kind)(str(file.path)))
    except (EOFError, zlib.error) as e:  # a truncated or corrupt .nii.gz: gzip raises these, not OSError
        raise _UnusableFile(f"truncated or corrupt file ({type(e).__name__}: {e})") from e
    array = ToSingleChannel()(array.astype(np.float32))[0]
    finite = np.isfinite(array)
    if not finite.all():
        if not finite.any():
            raise _UnusableFile("no finite value (every pixel is NaN or inf)")
        warnings.warn(
            f"{file.relative}: {int((~finite).sum())} NaN or inf pixel(s) set to the image minimum", stacklevel=2
        )
        array = np.where(finite, array, array[finite].min())
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or min(array.shape) < 2:  # DICOM: the others were checked from their header
        raise _UnusableFile(
            f"expected a 2D image or a 3D volume with every side at least 2 px, got spatial shape {array.shape}"
        )
    return array


def _to_uint8(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint(np.clip((array - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean [H, W] mask resized to ``shape`` (area-like: bilinear on 0/255, then >= 128)."""
    if mask.shape == shape:
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(resized) >= 128


def _match_masks(abnormal: list[ImageFile], masks: list[ImageFile]) -> dict[str, ImageFile]:
    """``{abnormal relative path: mask}`` by file-name stem (a mask may add _mask, _seg, _label or -mask)."""
    by_stem: dict[str, ImageFile] = {}
    for f in abnormal:
        if f.stem in by_stem:
            raise ValueError(
                f"two abnormal images share the stem {f.stem!r} ({by_stem[f.stem].relative}, {f.relative}): "
                "masks are matched by stem, so stems must be unique."
            )
        by_stem[f.stem] = f
    matched: dict[str, ImageFile] = {}
    orphans = []
    for m in masks:
        stems = [m.stem] + [m.stem[: -len(s)] for s in _MASK_SUFFIXES if m.stem.endswith(s)]
        image = next((by_stem[s] for s in stems if s in by_stem), None)
        if image is None:
            orphans.append(m.relative)
        elif image.relative in matched:
            raise ValueError(f"two masks match {image.relative}: {matched[image.relative].relative} and {m.relative}.")
        else:
            matched[image.relative] = m
    if orphans:
        raise ValueError(
            f"{len(orphans)} mask(s) match no abnormal image by file-name stem: {', '.join(orphans[:5])}"
            f"{' ...' if len(orphans) > 5 else ''}."
        )
    unmasked = [f.relative for f in abnormal if f.relative not in matched]
    if unmasked:
        raise ValueError(
            f"masks were given but {len(unmasked)} abnormal image(s) have none: {', '.join(unmasked[:5])}"
            f"{' ...' if len(unmasked) > 5 else ''}. Give a mask for every abnormal image, or no masks."
        )
    return matched


def _check_separate_inputs(folders: dict[str, str | os.PathLike | None]) -> None:
    """Refuse input folders that are one folder or lie inside each other: every folder is searched recursively, so
    the files of one would also be read as the other's (masks as abnormal images, each image its own mask; normal
    images as abnormal ones)."""
    given = {k: Path(v).expanduser().resolve() for k, v in folders.items() if v is not None and Path(v).is_dir()}
    for a, path_a in given.items():
        for b, path_b in given.items():
            if a < b and path_a == path_b:
                hint = " (masks next to the images)" if "mask" in (a, b) else ""
                raise ValueError(
                    f"the {a} folder and the {b} folder are one folder, {path_a}: its files would be read as {a} "
                    f"and as {b} images. Give each its own folder{hint}."
                )
            if a != b and path_b in path_a.parents:
                raise ValueError(
                    f"the {a} folder {path_a} lies inside the {b} folder {path_b}, which is searched recursively: its "
                    f"files would be read as {b} images too. Give folders that do not contain each other."
                )


def _check_stored_names(cls: str, files: list[ImageFile]) -> None:
    """Refuse, before any work, two inputs of one class that would be stored under one PNG name
    (``images/<cls>/<safe_name>.png``, or ``<safe_name>_sNNNN.png`` for the slices of a volume; letter case ignored,
    as on a case-insensitive disk): the second would overwrite the first, and two datalist items would point at one
    image (``x.png`` and ``x.jpg``; ``a/b.png`` and ``a__b.png``)."""
    seen: dict[str, ImageFile] = {}
    for f in files:
        key = f.safe_name.casefold()
        if key in seen:
            raise ValueError(
                f"{cls} inputs {seen[key].relative} and {f.relative} would both be stored as images/{cls}/"
                f"{f.safe_name}.png (named after the path without its extension, folders joined with '__', letter "
                "case ignored): rename one of them."
            )
        seen[key] = f
    for f in files:
        if f.kind in ("nifti", "dicom"):  # a 3D volume stores its slices as <name>_sNNNN.png
            pattern = re.compile(re.escape(f.safe_name.casefold()) + r"_s\d{4}")
            other = next((g for key, g in seen.items() if pattern.fullmatch(key)), None)
            if other is not None:
                raise ValueError(
                    f"{cls} input {other.relative} would be stored under the name of a slice of the volume "
                    f"{f.relative} (images/{cls}/{other.safe_name}.png): rename one of them."
                )


def _check_regular(file: ImageFile) -> None:
    """Refuse, as ``_UnusableFile`` and without opening it, an input that is not a regular file (through links): a
    FIFO named ``x.png`` would block its reader forever, a device (``/dev/zero``) never ends. For a DICOM series,
    each of its ``.dcm`` files."""
    paths = sorted(file.path.glob("*.dcm")) if file.kind == "dicom" else [file.path]
    for path in paths:
        if not path.is_file():
            what = "a broken link" if path.is_symlink() and not path.exists() else "a FIFO, socket or device"
            raise _UnusableFile(f"{path.name} is not a regular file ({what}): not read")


def _store(
    file: ImageFile,
    cls: str,
    label: int,
    mask_file: ImageFile | None,
    staging: Path,
    options: dict[str, Any],
) -> list[PreparedImage]:
    """Read one input, store its image(s) (and mask slices) as PNGs, and describe them."""
    for f in (file, mask_file):
        if f is not None:
            _check_regular(f)
    _check_header(file, options)
    if mask_file is not None:
        _check_header(mask_file, options, "mask")
    array = _read(file)
    mask = None
    if mask_file is not None:
        mask = _read(mask_file) > 0
        if mask.shape != array.shape:
            raise ValueError(f"mask {mask_file.relative} has shape {mask.shape} but its image has {array.shape}")
    max_size, thumbnail_size = options["max_size"], options["thumbnail_size"]
    window = intensity_window(array)
    if file.kind == "image" and array.min() >= 0 and array.max() <= 255:
        window = (0.0, 255.0)  # 8-bit images keep their grey levels
    records = []
    if array.ndim == 2 and np.ptp(array) == 0:
        raise _UnusableFile("constant image (every pixel has the same value): nothing to learn from or score")
    if array.ndim == 2:
        slices = [(None, array.T, None if mask is None else mask.T)]  # MONAI's (W, H) -> (H, W)
    else:
        axis = options["slice_axis"]
        volume = np.moveaxis(array, axis, -1)
        masks = None if mask is None else np.moveaxis(mask, axis, -1)
        slices = []
        for k in range(volume.shape[-1]):
            if is_background_slice(volume[..., k], window, options["min_foreground"]):
                continue  # empty or constant slice
            slices.append((k, volume[..., k].T, None if masks is None else masks[..., k].T))
        if not slices:
            raise ValueError(
                f"volume {file.relative} has no non-empty slice along axis {axis} (shape {array.shape}, "
                f"min_foreground={options['min_foreground']})"
            )
    for k, image, mask_slice in slices:
        grey = resize_longest(_to_uint8(image, window), max_size)
        name = file.safe_name if k is None else f"{file.safe_name}_s{k:04d}"
        relative = f"images/{cls}/{name}.png"
        save_grey_png(grey, staging / relative)
        record = PreparedImage(
            image=relative,
            label=label,
            source=file.relative if k is None else f"{file.relative}#{k}",
            thumbnail=image_thumbnail(grey, thumbnail_size),
            volume=None if k is None else f"{cls}/{file.relative}",
            from_normal=label == 0,
        )
        if mask_slice is not None:
            small = _resize_mask(mask_slice, grey.shape)
            record.mask = f"masks/{cls}/{name}.png"
            save_grey_png(small.astype(np.uint8) * 255, staging / record.mask)
            if k is not None and not small.any():
                record.label = 0  # a slice of an abnormal volume outside its mask: normal, kept in its group
        records.append(record)
    return records


def prepare_image_folder(
    output_dir: str | os.PathLike,
    normal_dir: str | os.PathLike,
    abnormal_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    max_size: int = 256,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    normal_fractions: Sequence[float] = DEFAULT_NORMAL_FRACTIONS,
    abnormal_fractions: Sequence[float] = DEFAULT_ABNORMAL_FRACTIONS,
    slice_axis: int = -1,
    min_foreground: float = 0.01,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    lesion_radius_range: Sequence[float] = DEFAULT_LESIONS["radius_range"],
    lesion_contrast_range: Sequence[float] = DEFAULT_LESIONS["contrast_range"],
    overwrite: bool = False,
    progress: bool = True,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
    max_volume_voxels: int = MAX_VOLUME_VOXELS,
) -> Path:
    """Prepare your own normal (and optionally abnormal) images for anomaly detection, like :func:`prepare_br35h`.

    Inputs, searched recursively and read with MONAI's ``LoadImage``: PNG and JPEG; NIfTI (.nii, .nii.gz), 2D or
    3D; DICOM series (each folder of .dcm files is one series; needs pydicom). Channels become one grey channel as
    :class:`~monai_hqanogan.transforms.ToSingleChannel` makes it in training and inference: the colour channels are
    averaged and the alpha channel of an RGBA or LA image (opacity, not intensity) is ignored; palette and CMYK
    images give the grey of the colours they show. 3D volumes are cut into 2D slices along
    ``slice_axis``; empty or constant slices (fewer than ``min_foreground`` of the pixels above 5% of the volume's
    intensity window) are skipped. Intensities become 8 bits (8-bit PNG/JPEG as they are; otherwise the minimum to
    0 and the 99.5th percentile to 255, per volume), and the longest side at most ``max_size``.

    Odd files: other files (text, CSV, hidden files) are ignored. Unreadable inputs (0 bytes, truncated or corrupt
    PNG/JPEG/NIfTI, images beyond Pillow's decompression-bomb limit, which are refused before decoding, constant 2D
    images, no finite pixel) are skipped with one warning naming them, and listed with the reason under
    ``info.skipped`` of the datalist. So are, from their header before any pixel is read
    (:func:`~monai_hqanogan.data.image_files.check_image_shape`), images beyond the size caps ``max_slice_pixels``
    and ``max_volume_voxels`` and shapes the networks cannot use: not 2D or 3D, or a slice with a side under 2 px in
    the file or once its longest side is ``max_size`` (an extreme aspect ratio). NaN and inf pixels are set to the
    image's finite minimum, with a warning.

    Groups: the slices of one volume form one group, so a volume never spans two splits; 2D images are grouped by
    thumbnail correlation (near-duplicates, see :func:`group_near_duplicates`). The split and the synthetic
    localisation sets are as in :func:`prepare_br35h`. Without ``abnormal_dir``, validation and test hold normal
    images only (the localisation sets still provide labelled anomalies).

    Masks (``mask_dir``) are matched to abnormal inputs by file-name stem (``case1.nii.gz`` <-> ``case1.nii.gz``,
    ``case1_mask.png``, ``case1_seg.nii.gz``, ...) and must have the same shape; then every abnormal input needs
    one, and every validation/test item gets a ``"mask"`` (all-zero for normal images). A slice of an abnormal
    volume whose mask slice is empty is labelled 0 but stays in its volume's group.

    Output folder: it must not be an input folder, lie inside one or contain one. It must be new, empty or marked
    as an earlier preparation's own (the marker file :data:`~monai_hqanogan.data.output_folder.PREPARED_MARKER`,
    written when the folder is first used); with ``overwrite``, a non-empty unmarked folder is accepted when it holds
    none of the preparation's entries. Only those entries (``datalist.json``, ``images/``, ``masks/``, ``README.md``,
    ``preview.png``) are ever replaced, so nothing the preparation did not write is deleted; see
    :func:`~monai_hqanogan.data.output_folder.check_output_dir`.

    Args:
        output_dir: output folder (created and marked if new; must be writable), outside every input folder.
        normal_dir: folder of normal images (label 0).
        abnormal_dir: optional folder of abnormal images (label 1; validation and test only).
        mask_dir: optional folder of masks of the abnormal images.
        max_size: longest side of the stored images, in pixels.
        seed: seed of the split and of the synthetic lesions.
        threshold: thumbnail correlation threshold of the near-duplicate groups (2D inputs).
        normal_fractions: fractions of normal images in training, validation, test.
        abnormal_fractions: fractions of abnormal images in validation, test.
        slice_axis: spatial axis along which 3D volumes are sliced (-1: the last, axial for RAS NIfTI).
        min_foreground: a slice needs at least this fraction of non-background pixels to be kept.
        thumbnail_size: side of the grouping thumbnails.
        lesion_radius_range: synthetic lesion semi-axes as fractions of the brain mask's equivalent diameter.
        lesion_contrast_range: synthetic lesion contrast as fractions of the 8-bit range.
        overwrite: replace the outputs of an earlier preparation with other settings (in a marked folder), or
            write into a non-empty unmarked folder that holds none of the preparation's entries.
        progress: show progress bars.
        max_slice_pixels: the pixel cap of one 2D image or volume slice
            (:data:`~monai_hqanogan.data.image_files.MAX_SLICE_PIXELS`); larger inputs are skipped unread.
        max_volume_voxels: the voxel cap of one input, channels included
            (:data:`~monai_hqanogan.data.image_files.MAX_VOLUME_VOXELS`); larger inputs are skipped unread.

    Returns:
        path of ``output_dir/datalist.json``.

    Raises:
        ValueError: bad settings or inputs; an output folder that is, contains or lies inside an input folder.
        FileExistsError: a non-empty output folder not marked as a preparation's (see ``overwrite``).
    """
    started = time.time()
    check_preparation_settings(
        max_size, threshold, normal_fractions, abnormal_fractions, output_dir, [normal_dir, abnormal_dir, mask_dir]
    )
    if slice_axis not in (-3, -2, -1, 0, 1, 2):
        raise ValueError(f"slice_axis must be a spatial axis of a 3D volume (-3 to 2), got {slice_axis}.")
    if not 0.0 <= min_foreground < 1.0:  # NaN too: it would keep every empty slice, 1 or more drop every slice
        raise ValueError(f"min_foreground must be a fraction in [0, 1), got {min_foreground}.")
    check_size_caps(max_slice_pixels, max_volume_voxels)
    if mask_dir is not None and abnormal_dir is None:
        raise ValueError("masks were given without abnormal images: masks belong to abnormal_dir's images.")
    _check_separate_inputs({"normal": normal_dir, "abnormal": abnormal_dir, "mask": mask_dir})
    inputs = {"normal": find_image_files(normal_dir, "normal")}
    if abnormal_dir is not None:
        inputs["abnormal"] = find_image_files(abnormal_dir, "abnormal")
    for cls, files in inputs.items():
        _check_stored_names(cls, files)
    matched = _match_masks(inputs["abnormal"], find_image_files(mask_dir, "mask")) if mask_dir is not None else {}

    def fingerprint(folder: str | os.PathLike | None) -> str | None:
        if folder is None:
            return None
        root = Path(folder).expanduser()
        return fingerprint_files([p for p in root.rglob("*") if p.is_file()], root=root)

    settings = preparation_settings(
        "image_folder",
        {
            "normal_fingerprint": fingerprint(normal_dir),
            "abnormal_fingerprint": fingerprint(abnormal_dir),
            "mask_fingerprint": fingerprint(mask_dir),
        },
        max_size,
        seed,
        threshold,
        thumbnail_size,
        normal_fractions,
        abnormal_fractions,
        lesion_radius_range,
        lesion_contrast_range,
        extra={"slice_axis": int(slice_axis), "min_foreground": float(min_foreground)},
    )
    caps = {"max_slice_pixels": int(max_slice_pixels), "max_volume_voxels": int(max_volume_voxels)}
    if caps != _DEFAULT_CAPS:  # other caps may prepare other files; the defaults keep earlier outputs reusable
        settings["size_caps"] = caps

    def store_and_write(staging: Path, out: Path) -> Path:
        """Read and store every input, then group, split and write (called by ``run_in_staging``)."""
        records: list[PreparedImage] = []
        skipped: list[dict[str, str]] = []
        for cls, files in inputs.items():
            before = len(records)
            for file in tqdm(files, desc=cls, disable=not progress):
                try:
                    records += _store(file, cls, int(cls == "abnormal"), matched.get(file.relative), staging, settings)
                except (OSError, RuntimeError, _UnusableFile) as e:  # MONAI's readers raise OSError, RuntimeError
                    skipped.append({"file": f"{cls}/{file.relative}", "reason": f"{type(e).__name__}: {e}"})
                except ValueError as e:
                    raise ValueError(f"{cls} input {file.relative}: {e}") from e
            if len(records) == before:
                raise ValueError(f"no readable {cls} image in {normal_dir if cls == 'normal' else abnormal_dir}.")
        if skipped:
            names = ", ".join(s["file"] for s in skipped[:5])
            warnings.warn(
                f"skipped {len(skipped)} unusable file(s) (unreadable, truncated, too large, too thin or constant; "
                f"reasons in the datalist's info.skipped): {names}",
                stacklevel=4,  # the caller of prepare_image_folder (through run_in_staging)
            )
        volumes = len({r.volume for r in records if r.volume is not None})
        info = {
            "source": {
                "dataset": "image folders",
                "normal": str(Path(normal_dir).expanduser()),
                "abnormal": None if abnormal_dir is None else str(Path(abnormal_dir).expanduser()),
                "masks": None if mask_dir is None else str(Path(mask_dir).expanduser()),
                "files": {cls: len(files) for cls, files in inputs.items()},
                "volumes": volumes,
                "masks_matched": len(matched),
            },
            "max_size": int(max_size),
            "slice_axis": int(slice_axis),
            "skipped": skipped,
        }
        return write_prepared_datalist(
            staging,
            out,
            records,
            settings,
            info,
            threshold=threshold,
            normal_fractions=normal_fractions,
            abnormal_fractions=abnormal_fractions,
            seed=seed,
            lesions=settings["lesions"],
            progress=progress,
            title=f"Image folders ({Path(normal_dir).name})",
            started=started,
        )

    return run_in_staging(output_dir, settings, overwrite, store_and_write)
