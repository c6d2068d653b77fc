"""What the MONAI bundles call between and around the trainers: checks, stage files, calibration, inference."""

from __future__ import annotations

from .checks import (
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    SETTINGS_KEYS,
    as_bool,
    check_image_shape,
    check_overrides,
    check_settings,
    check_size_caps,
    check_slice_axis,
    datalist_items,
    did_you_mean,
    image_header_shape,
    load_settings,
    read_json_object,
    verify_image_file,
)
from .configs import COMMON_CONFIG, STANDALONE_CONFIGS, bundle_config_files, check_config_files, parse_config_id
from .evaluate import evaluate_detector, machine_description
from .inference import (
    IMAGE_SUFFIXES,
    OUTPUT_EXTS,
    OUTPUT_MANIFEST,
    PNG_THRESHOLD_LEVEL,
    AnomalyPanelSaver,
    AnomalyScoreSaver,
    FlattenAnomalyRecordd,
    InferenceOutputFolder,
    SaveAnomalyMapsd,
    SliceAnomalyInferer,
    anomaly_map_ext,
    check_output_ext,
    list_inference_inputs,
    output_stem,
)
from .stages import (
    SHIPPED_SETTING,
    calibrate_detector,
    check_datalist,
    check_model_file,
    check_writable,
    export_detector,
    load_bundle_detector,
    load_model_file,
    load_split,
    load_stage,
    mask_transforms,
    model_dir,
    require_file,
    round_networks_to_half,
    save_stage,
)
from .tracking import ResultsPublisher, flatten_results, log_step_outputs, step_output_scalars
