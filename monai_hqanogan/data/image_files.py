"""Image files: the file endings the tools read, the size caps, and the checks of an image file before it is read.

One place for every entry point that reads images (``prepare``, the Br35H preparation, inference, the training data
check): :data:`IMAGE_SUFFIXES` lists what they read, and :func:`verify_image_file` checks a file from its header
(size, shape, truncation) before any pixel is loaded, with an error that names the file and says what is wrong with
it, instead of letting a reader, a transform or torch fail later with a traceback from deep inside.
:func:`output_stem` names the files written for an input image as MONAI's ``SaveImage`` names them.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import numbers
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import create_file_basename

__all__ = [
    "RASTER_SUFFIXES",
    "NIFTI_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "MAX_HEADER_BYTES",
    "SLICE_AXES",
    "image_suffix",
    "verify_image_file",
    "image_header_shape",
    "check_image_shape",
    "check_size_caps",
    "check_slice_axis",
    "output_stem",
    "item_file_name",
]

#: the 2D raster formats (read by Pillow, which MONAI's ``PILReader`` uses, as (width, height) arrays)
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: NIfTI files (``.nii.gz`` is one ending)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: file endings read as images (a folder of ``.dcm`` files is read as one DICOM series)
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + (".dcm", ".nrrd", ".mha")
# The size caps: one set for prepare, inference and the training data check, compared with the shape in the file's
# header (nibabel's header, Pillow's ``Image.open(...).size``) before any pixel is read. Each entry point takes them
# as arguments (``max_slice_pixels``, ``max_volume_voxels``) to raise them where the memory is there.
#: the largest 2D image (or volume slice) accepted, in pixels (8192 x 8192); larger ones are refused before loading.
#: For PNG/JPEG it is below Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), which also holds.
MAX_SLICE_PIXELS = 8192 * 8192
#: the largest image accepted in all, in voxels, channels (the 4th NIfTI dimension) included: 512 x 512 x 2048, 2 GiB
#: as float32; larger volumes are refused before loading
MAX_VOLUME_VOXELS = 512 * 512 * 2048
#: the shortest side, in pixels, of a 2D image or volume slice that the networks can use: in the file and after its
#: longest side is resized to the model resolution (a side that rounds to 0 px there crashes the resize, one of 1 px
#: carries no 2D structure)
MIN_SIDE = 2

#: the spatial axes of a 3D volume [H, W, D] that volumes may be sliced along (negative: from the end)
SLICE_AXES = (-3, -2, -1, 0, 1, 2)


def image_suffix(path: str | os.PathLike) -> str:
    """The file ending of ``path`` in lower case, with its dot; ``.nii.gz`` counts as one ending.

    Args:
        path: a file name or path.
    """
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def check_slice_axis(slice_axis: Any) -> int:
    """``slice_axis`` if it is a spatial axis of a 3D volume (:data:`SLICE_AXES`, -3 to 2); a ValueError naming the
    value otherwise (``SliceAnomalyInferer`` takes the axis modulo 3, so 7 would silently become axis 1).

    Args:
        slice_axis: the axis along which 3D volumes are sliced (a bundle's ``--slice_axis``).

    Raises:
        ValueError: ``slice_axis`` is not an integer in :data:`SLICE_AXES` (a bool is refused).
    """
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, numbers.Integral) or slice_axis not in SLICE_AXES:
        raise ValueError(
            "bad bundle overrides: slice_axis must be a spatial axis of a 3D volume, an integer from -3 to 2 "
            f"(-1: the last), got {slice_axis!r} ({type(slice_axis).__name__})."
        )
    return int(slice_axis)


def _require_pydicom(path: Path, label: str) -> None:
    if importlib.util.find_spec("pydicom") is None:
        raise ImportError(f"{label} {str(path)!r} is DICOM: reading it needs pydicom (pip install pydicom).")


def verify_image_file(
    path: str | os.PathLike,
    label: str = "image",
    spatial_2d: bool = False,
    decode: bool = True,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
    max_volume_voxels: int = MAX_VOLUME_VOXELS,
    resolution: int | None = None,
    slice_axis: int = -1,
) -> Path:
    """Check that ``path`` is an image MONAI's ``LoadImage`` can read, without keeping it in memory.

    Always: the file exists and is not empty, its ending is one of :data:`IMAGE_SUFFIXES` (a folder must hold
    ``.dcm`` files, and DICOM needs pydicom), PNG/JPEG headers open (Pillow refuses decompression bombs there),
    and the shape in the header (PNG/JPEG/BMP/TIFF, NIfTI, NRRD, MHA, DICOM: :func:`image_header_shape`) passes
    :func:`check_image_shape`: a 2D image or 3D volume
    (a 4th NIfTI dimension holds channels), slices of at most ``max_slice_pixels``, at most ``max_volume_voxels`` in
    all, no side under :data:`MIN_SIDE` pixels, none at ``resolution`` either. With ``decode``: PNG/JPEG
    files decode completely (truncated files fail), NIfTI files hold all the data their header announces (read in
    chunks, so memory stays bounded), and a 2D NIfTI holds no NaN or inf.

    Args:
        path: the file (or DICOM folder).
        label: how the message names it, e.g. ``"image listed in the datalist"``.
        spatial_2d: refuse 3D volumes (more than one slice): training, calibration and evaluation need 2D images.
        decode: read the whole file, not only its header.
        max_slice_pixels: the largest 2D image or volume slice accepted (:data:`MAX_SLICE_PIXELS`).
        max_volume_voxels: the largest image accepted in all, channels included (:data:`MAX_VOLUME_VOXELS`).
        resolution: the model resolution the image's longest side is resized to; None: not checked.
        slice_axis: the spatial axis along which volumes are sliced.

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: DICOM without pydicom.
        ValueError: anything else, naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{label} {str(path)!r} does not exist.")
    if path.is_dir():
        if not any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            raise ValueError(f"{label} {str(path)!r} is a folder without DICOM (.dcm) files, not an image.")
        suffix = ".dcm"
    elif path.stat().st_size == 0:
        raise ValueError(f"{label} {str(path)!r} is empty (0 bytes).")
    else:
        suffix = image_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{label} {str(path)!r} is not an image file (ending {suffix or 'none'!r}); "
            f"supported: {', '.join(IMAGE_SUFFIXES)}."
        )
    check_size_caps(max_slice_pixels, max_volume_voxels)
    caps = {"max_slice_pixels": max_slice_pixels, "max_volume_voxels": max_volume_voxels}
    shape_rules = {"slice_axis": slice_axis, "resolution": resolution, **caps}
    if suffix == ".dcm":
        _require_pydicom(path, label)
        _verify_header_shape(path, label, spatial_2d, shape_rules)
    elif suffix in _TEXT_HEADER_SUFFIXES:
        _verify_header_shape(path, label, spatial_2d, shape_rules)
    elif suffix in RASTER_SUFFIXES:
        _verify_raster(path, label, decode, shape_rules)
    elif suffix in NIFTI_SUFFIXES:
        _verify_nifti(path, label, spatial_2d, decode, shape_rules)
    return path


def _raster_header(path: Path) -> tuple[tuple[int, ...], int]:
    """((width, height), bands) from a PNG/JPEG/BMP/TIFF header, in MONAI's layout (``PILReader`` reads (W, H)).
    Pillow's decompression-bomb warning is silenced here (the caps decide); its error is raised."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:  # reads the header only
            return (int(img.size[0]), int(img.size[1])), len(img.getbands())


def _nifti_layout(shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """(spatial shape, channels) of a NIfTI of header shape ``shape`` as MONAI's ``NibabelReader`` +
    ``EnsureChannelFirst`` lay it out: up to 3 dimensions are spatial; beyond that, the last one holds channels
    (a 24 x 24 x 1 x 3 image is a 24 x 24 x 1 grid with 3 channels)."""
    shape = tuple(int(s) for s in shape)
    return (shape, 1) if len(shape) <= 3 else (shape[:-1], shape[-1])


def image_header_shape(path: str | os.PathLike) -> tuple[tuple[int, ...], int] | None:
    """(spatial shape, channels) of an image file from its header alone, no pixel data read, as MONAI's
    ``LoadImage`` lays the data out:

    - PNG/JPEG/BMP/TIFF: (width, height) from Pillow's ``Image.open(...).size``, the bands as channels;
    - NIfTI: nibabel's ``header.get_data_shape()``, as :func:`_nifti_layout`;
    - NRRD: the ``sizes`` of its text header, in file order; axes whose ``kinds`` is not spatial (``RGB-color``,
      ``vector``, ...) are channels (as MONAI's ``ITKReader`` reads them);
    - MHA (MetaImage): its ``DimSize``, with ``ElementNumberOfChannels`` channels;
    - DICOM (a ``.dcm`` file or a folder of them, one series), only when pydicom is installed: ``Rows``,
      ``Columns``, ``NumberOfFrames`` and ``SamplesPerPixel`` of each file, read with ``stop_before_pixels``, laid
      out as MONAI's ``PydicomReader`` does (the first two axes of the pixel array swapped; a series stacks its
      slices last), the samples as channels.

    None for a DICOM file or folder without pydicom. A header that cannot be read raises (Pillow's and nibabel's
    own errors, e.g. ``PIL.Image.DecompressionBombError``; a ValueError naming the file for NRRD, MHA and DICOM).

    Args:
        path: the image file (or DICOM folder).
    """
    return _header_shape(Path(path), repr(str(path)))


def _header_shape(path: Path, what: str) -> tuple[tuple[int, ...], int] | None:
    """:func:`image_header_shape`, its errors naming the file as ``what``."""
    suffix = ".dcm" if path.is_dir() else image_suffix(path)
    if suffix == ".dcm":
        return _dicom_header(path, what) if importlib.util.find_spec("pydicom") is not None else None
    if suffix == ".nrrd":
        return _nrrd_header(path, what)
    if suffix == ".mha":
        return _mha_header(path, what)
    if suffix in RASTER_SUFFIXES:
        return _raster_header(path)
    if suffix not in NIFTI_SUFFIXES:
        return None
    import nibabel as nib

    return _nifti_layout(nib.load(str(path)).header.get_data_shape())


#: the formats whose header is text that :func:`image_header_shape` parses itself (NRRD, MetaImage)
_TEXT_HEADER_SUFFIXES = (".nrrd", ".mha")
#: the most bytes of an NRRD or MHA header read: a file whose header does not end within them is refused
MAX_HEADER_BYTES = 1 << 16
#: the NRRD axis kinds that are spatial (with ``???``/``none``: unknown); the others (``RGB-color``, ``vector``,
#: ``list``, ...) hold channels
_NRRD_SPATIAL_KINDS = ("domain", "space", "time", "???", "none")


def _text_header(path: Path, what: str, fmt: str, end: Any) -> list[str]:
    """The lines of the text header at the start of ``path``, up to the line for which ``end(line)`` is true (or
    the end of the file), reading at most :data:`MAX_HEADER_BYTES`."""
    if not path.is_file():  # a FIFO or a device would block or never end
        raise ValueError(f"{what} is not a readable {fmt} file: not a regular file.")
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
        more = bool(f.read(1))
    pieces = head.split(b"\n")
    lines = [raw.decode("latin-1").rstrip("\r") for raw in (pieces[:-1] if more else pieces)]  # the last may be cut
    for i, line in enumerate(lines):
        if end(line):
            return lines[: i + 1]
    if more:
        raise ValueError(
            f"{what} is not a readable {fmt} file: its header does not end within its first {MAX_HEADER_BYTES} bytes."
        )
    return lines


def _header_ints(value: str, what: str, fmt: str, field: str) -> tuple[int, ...]:
    """The integers (>= 0) of a header field (sizes), or a ValueError naming the file and the field."""
    try:
        values = tuple(int(v) for v in value.split())
    except ValueError:
        values = ()
    if not values or any(n < 0 for n in values):
        raise ValueError(f"{what} is not a readable {fmt} file: its {field} is {value.strip()[:80]!r}.")
    return values


def _fields(lines: Sequence[str], sep: str, what: str, fmt: str) -> dict[str, str]:
    """``{field: value}`` of header lines ``field<sep>value``; a field given twice is refused (which one a reader
    uses is not to be guessed)."""
    fields: dict[str, str] = {}
    for line in lines:
        if sep not in line:
            continue
        key, value = line.split(sep, 1)
        key = key.strip()
        if key in fields:
            raise ValueError(f"{what} is not a readable {fmt} file: its header gives {key!r} twice.")
        fields[key] = value.strip()
    return fields


def _nrrd_header(path: Path, what: str) -> tuple[tuple[int, ...], int]:
    """(spatial shape, channels) from an NRRD header (text up to the first empty line)."""
    lines = _text_header(path, what, "NRRD", lambda line: line == "")
    if not lines or not lines[0].startswith("NRRD000"):
        raise ValueError(f"{what} is not a readable NRRD file: it does not start with the NRRD magic 'NRRD000x'.")
    body = [line for line in lines[1:] if line and not line.startswith("#") and ":=" not in line]
    fields = {k.lower(): v for k, v in _fields(body, ": ", what, "NRRD").items()}
    if "sizes" not in fields:
        raise ValueError(f"{what} is not a readable NRRD file: its header has no 'sizes' field.")
    sizes = _header_ints(fields["sizes"], what, "NRRD", "sizes")
    dimension = _header_ints(fields.get("dimension", str(len(sizes))), what, "NRRD", "dimension")
    if dimension != (len(sizes),):
        raise ValueError(
            f"{what} is not a readable NRRD file: its dimension {fields.get('dimension')!r} does not match its "
            f"{len(sizes)} sizes."
        )
    kinds = fields.get("kinds", "").split() or ["domain"] * len(sizes)
    if len(kinds) != len(sizes):
        raise ValueError(f"{what} is not a readable NRRD file: {len(kinds)} kinds for {len(sizes)} sizes.")
    spatial = tuple(n for n, k in zip(sizes, kinds) if k.lower() in _NRRD_SPATIAL_KINDS)
    return spatial, math.prod(n for n, k in zip(sizes, kinds) if k.lower() not in _NRRD_SPATIAL_KINDS)


def _mha_header(path: Path, what: str) -> tuple[tuple[int, ...], int]:
    """(spatial shape, channels) from a MetaImage (``.mha``) header (text up to its ``ElementDataFile`` line)."""
    lines = _text_header(path, what, "MHA", lambda line: line.split("=", 1)[0].strip() == "ElementDataFile")
    fields = _fields(lines, "=", what, "MHA")
    if "DimSize" not in fields:
        raise ValueError(f"{what} is not a readable MHA (MetaImage) file: its header has no 'DimSize' field.")
    sizes = _header_ints(fields["DimSize"], what, "MHA", "DimSize")
    if "NDims" in fields and _header_ints(fields["NDims"], what, "MHA", "NDims") != (len(sizes),):
        raise ValueError(
            f"{what} is not a readable MHA (MetaImage) file: its NDims {fields['NDims']!r} does not match its "
            f"DimSize {fields['DimSize']!r}."
        )
    channels = _header_ints(fields.get("ElementNumberOfChannels", "1"), what, "MHA", "ElementNumberOfChannels")
    return sizes, math.prod(channels)


def _dicom_header(path: Path, what: str) -> tuple[tuple[int, ...], int]:
    """(spatial shape, channels) of a DICOM file or series folder from its files' headers (pydicom,
    ``stop_before_pixels``; values over 1 MiB are not read), as MONAI's ``PydicomReader`` lays the data out."""
    import pydicom

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm") if path.is_dir() else [path]
    planes, frames, channels = [], 0, 1
    for file in files:
        if not file.is_file():  # a FIFO or a device would block or never end
            raise ValueError(f"{what} is not a readable DICOM image: {file.name!r} is not a regular file.")
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, defer_size=1 << 20)
            rows, columns = int(ds.Rows), int(ds.Columns)
            count = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
        except Exception as err:  # pydicom raises InvalidDicomError, AttributeError, ValueError, ... for bad files
            name = what if file == path else f"{what} (its file {file.name!r})"
            raise ValueError(f"{name} is not a readable DICOM image: {type(err).__name__}: {str(err)[:200]}") from err
        if min(rows, columns, count, samples) < 0:
            raise ValueError(f"{what} is not a readable DICOM image: negative Rows, Columns or NumberOfFrames.")
        planes.append((columns, rows))
        frames += count
        channels = max(channels, samples)
    columns, rows = max(c for c, _ in planes), max(r for _, r in planes)
    if path.is_dir():  # the slices stacked last (one slice: a 2D image)
        spatial = (columns, rows) if frames == 1 else (columns, rows, frames)
    else:  # a multi-frame file: MONAI swaps the first two axes of the pixel array [frames, rows, columns]
        spatial = (columns, rows) if frames == 1 else (rows, frames, columns)
    return spatial, channels


def _verify_header_shape(path: Path, label: str, spatial_2d: bool, shape_rules: Mapping[str, Any]) -> None:
    """Check the shape in the header of an NRRD, MHA or DICOM input (:func:`image_header_shape`) before any pixel
    is read; DICOM without pydicom is not checked here (it cannot be read either)."""
    what = f"{label} {str(path)!r}"
    try:
        found = _header_shape(path, what)
    except OSError as err:
        raise ValueError(f"{what} cannot be read: {type(err).__name__}: {err}") from err
    if found is None:
        return
    spatial, channels = found
    check_image_shape(spatial, what, channels, **shape_rules)
    if spatial_2d:
        _refuse_volume(spatial, what)


def _refuse_volume(shape: Sequence[int], what: str) -> None:
    """A ValueError for a 3D volume (more than one slice) where a step needs 2D images."""
    if any(s > 1 for s in shape[2:]):
        raise ValueError(
            f"{what} is a 3D volume (shape {tuple(shape)}), but this step needs 2D images. Slice volumes "
            "into 2D images with 'python -m monai_hqanogan.data.prepare folder --normal <folder> --output <out>'."
        )


def check_size_caps(max_slice_pixels: Any = MAX_SLICE_PIXELS, max_volume_voxels: Any = MAX_VOLUME_VOXELS) -> None:
    """A ValueError unless both caps are positive integers (they may come from a command line or a config)."""
    for name, value in (("max_slice_pixels", max_slice_pixels), ("max_volume_voxels", max_volume_voxels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer (a number of pixels), got {value!r}.")


def check_image_shape(
    shape: Sequence[int],
    what: str,
    channels: int = 1,
    slice_axis: int = -1,
    resolution: int | None = None,
    max_slice_pixels: int | None = MAX_SLICE_PIXELS,
    max_volume_voxels: int | None = MAX_VOLUME_VOXELS,
) -> tuple[int, int]:
    """Refuse an image shape the tools cannot load safely or the networks cannot use, before any pixel is read.

    The rules, in order: a 2D image or a 3D volume (2 or 3 spatial dimensions, none of size 0); at most
    ``max_volume_voxels`` voxels in all (spatial size x ``channels``); slices (the 2D image, or the volume without
    ``slice_axis``) of at most ``max_slice_pixels`` pixels; no slice side under :data:`MIN_SIDE` pixels, in the file
    and, with ``resolution``, after the slice's longest side is resized to ``resolution`` (by MONAI's ``Resize``
    rule, ``round(side * resolution / longest)``: an extreme aspect ratio rounds its short side to 0 or 1 px).

    Args:
        shape: the spatial shape (channels not included; see :func:`image_header_shape`).
        what: how the message names the image, e.g. ``"image listed for inference '/data/a.png'"``.
        channels: the number of channels (counted in the voxels).
        slice_axis: the axis of a 3D volume along which it is sliced into 2D slices.
        resolution: the model resolution; None: only the sides in the file are checked.
        max_slice_pixels: the pixel cap of one slice (None: no cap).
        max_volume_voxels: the voxel cap of the whole image (None: no cap).

    Returns:
        the shape of one 2D slice.

    Raises:
        ValueError: naming ``what``, its shape, the rule or cap it breaks and how to proceed.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s == 0 for s in shape):
        why = "a dimension of size 0" if 0 in shape else "fewer than 2 spatial dimensions"
        raise ValueError(f"{what} has spatial shape {shape}: it has no 2D slice to score ({why}).")
    if len(shape) > 3:
        raise ValueError(
            f"{what} has {len(shape)} spatial dimensions (shape {shape}, {channels} channel(s)); expected a 2D image "
            "or a 3D volume (NIfTI: at most 3 spatial dimensions, then one of channels). Save it with those "
            "dimensions, e.g. without its singleton ones."
        )
    voxels = math.prod(shape) * int(channels)
    if max_volume_voxels is not None and voxels > max_volume_voxels:
        raise ValueError(
            f"{what} has shape {shape} with {channels} channel(s): {voxels} voxels, more than the cap of "
            f"{max_volume_voxels} (max_volume_voxels): too large to load safely. Downsample or crop it first (fewer "
            "or smaller slices, fewer channels), or raise the cap max_volume_voxels if the machine has the memory."
        )
    volume = len(shape) == 3
    if volume:
        axis = check_slice_axis(slice_axis) % 3
        plane = shape[:axis] + shape[axis + 1 :]
        desc = f"has slices of {plane[0]} x {plane[1]} pixels (shape {shape}, sliced along axis {slice_axis})"
    else:
        plane = shape
        desc = f"is a 2D image of {plane[0]} x {plane[1]} pixels"
    pixels = plane[0] * plane[1]
    if max_slice_pixels is not None and pixels > max_slice_pixels:
        raise ValueError(
            f"{what} {desc}, {pixels} in all, more than {max_slice_pixels} pixels: too large to load safely. "
            "Downsample or crop it first, or raise the cap max_slice_pixels if the machine has the memory."
        )
    short, longest = min(plane), max(plane)
    other_axis = " or slice it along another axis (slice_axis)" if volume else ""
    if short < MIN_SIDE:
        raise ValueError(
            f"{what} {desc}: a side of {short} px is too thin for the networks, which need at least {MIN_SIDE} px "
            f"on each side. Crop or pad it to a 2D region{other_axis}."
        )
    if resolution is not None and int(round(short * resolution / longest)) < MIN_SIDE:
        scaled = int(round(short * resolution / longest))
        raise ValueError(
            f"{what} {desc}: with its longest side resized to {resolution} px (the model resolution; prepare: "
            f"--max-size), its short side would be {scaled} px, fewer than {MIN_SIDE}: the aspect ratio "
            f"{longest}:{short} is too extreme for the networks. Crop it to a less elongated region first{other_axis}."
        )
    return plane[0], plane[1]


def _verify_raster(path: Path, label: str, decode: bool, shape_rules: Mapping[str, Any]) -> None:
    from PIL import Image

    what = f"{label} {str(path)!r}"
    try:
        spatial, channels = _raster_header(path)  # Pillow refuses decompression bombs here
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{what} is too large to load safely ({err}; at most {shape_rules['max_slice_pixels']} pixels): "
            "downsample or crop it first."
        ) from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, UnidentifiedImageError, ... for bad files
        raise _unreadable(path, what, err) from err
    check_image_shape(spatial, what, channels, **shape_rules)
    if not decode:
        return
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except Exception as err:
        raise _unreadable(path, what, err) from err


def _unreadable(path: Path, what: str, err: BaseException) -> ValueError:
    return ValueError(
        f"{what} cannot be read: it is truncated, corrupt or not a {image_suffix(path)[1:].upper()} image "
        f"({type(err).__name__}: {err})."
    )


def _verify_nifti(path: Path, label: str, spatial_2d: bool, decode: bool, shape_rules: Mapping[str, Any]) -> None:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # header only
        shape = tuple(int(s) for s in img.header.get_data_shape())
    except Exception as err:
        raise ValueError(f"{label} {str(path)!r} is not a readable NIfTI file: {err}") from err
    spatial, channels = _nifti_layout(shape)
    check_image_shape(spatial, f"{label} {str(path)!r}", channels, **shape_rules)
    if spatial_2d:
        _refuse_volume(shape, f"{label} {str(path)!r}")
    # where the data end: the offset and dtype as stored in the file (nibabel resets the offset of img.header to 0)
    proxy = img.dataobj
    offset = int(getattr(proxy, "offset", img.header.get_data_offset()))
    itemsize = np.dtype(getattr(proxy, "dtype", img.header.get_data_dtype())).itemsize
    expected = offset + math.prod(shape) * itemsize
    gzipped = image_suffix(path) == ".nii.gz"
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


# ---------------------------------------------------------------------- names of the files written for an input
def output_stem(name: str | os.PathLike, data_root_dir: str | os.PathLike = "") -> str:
    """The output name of an input, relative to the output folder, without postfix and extension: the input's
    sub-folder below ``data_root_dir`` and its file name without extension (``.nii.gz`` counts as one), by MONAI's
    own rule (``create_file_basename``, what ``SaveImage(data_root_dir=..., separate_folder=False)`` uses).

    Args:
        name: the input's path.
        data_root_dir: the inputs' common folder ("": only the file name counts).
    """
    root = os.fspath(data_root_dir)
    return create_file_basename("", os.fspath(name), "", data_root_dir=root, separate_folder=False, makedirs=False)


def item_file_name(item: Mapping[str, Any], key: str) -> str:
    """The file name in the meta data (``filename_or_obj``) of ``item[key]``, the first one for a batch; "" if none.

    Args:
        item: a data dict (one item of an engine's output).
        key: the key of the image (a ``MetaTensor``) whose file is wanted.
    """
    value = item.get(key)
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return str(name)
