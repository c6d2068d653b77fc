from __future__ import annotations

from typing import Any

from .br35h import find_br35h_source, load_grey_image, prepare_br35h
from .datalists import (
    LOCALISATION_KEYS,
    SPLIT_KEYS,
    check_groups_disjoint,
    describe_groups,
    group_near_duplicates,
    image_thumbnail,
    split_groups,
)
from .image_files import (
    IMAGE_SUFFIXES,
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    check_image_shape,
    check_size_caps,
    check_slice_axis,
    image_header_shape,
    image_suffix,
    verify_image_file,
)
from .synthetic import (
    TOY_LESIONS,
    TOY_SHAPES,
    add_synthetic_lesions,
    brain_mask,
    make_ellipse_images,
    make_toy_lesion_set,
)


def __getattr__(name: str) -> Any:
    # the image-folder preparation lives next to its command line (``python -m monai_hqanogan.data.prepare``);
    # importing it lazily keeps that module out of sys.modules until it runs as __main__
    if name == "prepare_image_folder":
        from .prepare import prepare_image_folder

        return prepare_image_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
