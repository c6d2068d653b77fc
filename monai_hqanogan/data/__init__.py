from __future__ import annotations

from .br35h import find_br35h_source, load_grey_image, prepare_br35h
from .grouping import (
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
from .image_folder import prepare_image_folder
from .synthetic import (
    TOY_LESIONS,
    TOY_SHAPES,
    add_synthetic_lesions,
    brain_mask,
    make_ellipse_images,
    make_toy_lesion_set,
)
