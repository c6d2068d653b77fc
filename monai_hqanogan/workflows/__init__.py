"""What the MONAI bundles call between and around the trainers: checks, stage files, calibration, inference."""

from __future__ import annotations

from .evaluate import evaluate_detector, machine_description
from .inference import (
    IMAGE_SUFFIXES,
    AnomalyPanelSaver,
    AnomalyScoreSaver,
    FlattenAnomalyRecordd,
    SliceAnomalyInferer,
    list_inference_inputs,
)
from .stages import (
    calibrate_detector,
    check_datalist,
    check_writable,
    export_detector,
    load_split,
    load_stage,
    mask_transforms,
    require_file,
    save_stage,
)
