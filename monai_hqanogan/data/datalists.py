"""Group-aware datalists for anomaly detection, shared by the Br35H and the image-folder preparations (the datalist
layout: see :mod:`monai_hqanogan.data.datalist_writer`).

The names of this module live in three modules, one job each, and are imported here under their old path:

- :mod:`monai_hqanogan.data.grouping`: near-duplicate groups and group-aware splits;
- :mod:`monai_hqanogan.data.output_folder`: the output folder (ownership marker, reuse of an earlier preparation,
  staging and the atomic commit);
- :mod:`monai_hqanogan.data.datalist_writer`: the settings, the stored PNGs, the localisation sets and the writing of
  ``datalist.json``, ``README.md`` and ``preview.png``.
"""

from __future__ import annotations

from monai_hqanogan.data.datalist_writer import (
    DEFAULT_LESIONS,
    PREPARATION_FORMAT,
    PreparedImage,
    check_preparation_settings,
    lesion_settings,
    load_grey_png,
    resize_longest,
    save_grey_png,
    write_prepared_datalist,
)
from monai_hqanogan.data.grouping import (
    DEFAULT_ABNORMAL_FRACTIONS,
    DEFAULT_NORMAL_FRACTIONS,
    DEFAULT_THRESHOLD,
    DEFAULT_THUMBNAIL_SIZE,
    LOCALISATION_KEYS,
    SPLIT_KEYS,
    check_groups_disjoint,
    describe_groups,
    group_near_duplicates,
    image_thumbnail,
    split_groups,
)
from monai_hqanogan.data.output_folder import (
    PREPARED_MARKER,
    check_no_links,
    check_output_dir,
    fingerprint_files,
    new_staging_dir,
    reuse_existing,
)

__all__ = [
    "SPLIT_KEYS",
    "LOCALISATION_KEYS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THUMBNAIL_SIZE",
    "DEFAULT_NORMAL_FRACTIONS",
    "DEFAULT_ABNORMAL_FRACTIONS",
    "DEFAULT_LESIONS",
    "PREPARATION_FORMAT",
    "PREPARED_MARKER",
    "PreparedImage",
    "lesion_settings",
    "check_preparation_settings",
    "resize_longest",
    "image_thumbnail",
    "group_near_duplicates",
    "split_groups",
    "check_groups_disjoint",
    "describe_groups",
    "fingerprint_files",
    "check_output_dir",
    "reuse_existing",
    "new_staging_dir",
    "check_no_links",
    "write_prepared_datalist",
    "save_grey_png",
    "load_grey_png",
]

# deprecated alias (the name clashed with the bundle's monai_hqanogan.workflows.check_settings)
check_settings = check_preparation_settings
