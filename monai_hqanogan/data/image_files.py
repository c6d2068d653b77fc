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
    and the shape in a PNG/JPEG/BMP/TIFF or NIfTI header passes :func:`check_image_shape`: a 2D image or 3D volume
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
        if any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            _require_pydicom(path, label)
            return path
        raise ValueError(f"{label} {str(path)!r} is a folder without DICOM (.dcm) files, not an image.")
    if path.stat().st_size == 0:
        raise ValueError(f"{label} {str(path)!r} is empty (0 bytes).")
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
    """(spatial shape, channels) of an image file from its header alone, no pixel data read (nibabel's
    ``header.get_data_shape()``, Pillow's ``Image.open(...).size``), as MONAI's ``LoadImage`` lays the data out:
    PNG/JPEG/BMP/TIFF (width, height) with their bands as channels; NIfTI as :func:`_nifti_layout`. None for the
    formats without a header reader here (DICOM, NRRD, MHA). A header that cannot be read raises (Pillow's and
    nibabel's own errors, e.g. ``PIL.Image.DecompressionBombError``)."""
    path = Path(path)
    suffix = image_suffix(path)
    if path.is_dir() or suffix not in RASTER_SUFFIXES + NIFTI_SUFFIXES:
        return None
    if suffix in RASTER_SUFFIXES:
        return _raster_header(path)
    import nibabel as nib

    return _nifti_layout(nib.load(str(path)).header.get_data_shape())


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
