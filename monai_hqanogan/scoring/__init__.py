from __future__ import annotations

from .calibration import (
    DEFAULT_WEIGHTS,
    SCORE_NAMES,
    AnomalyCalibration,
    fit_scores,
    load_calibration,
    save_calibration,
)
from .latent_density import WPlusGaussian, ledoit_wolf_covariance
from .selection import (
    FAMILY_NAMES,
    PROTOCOLS,
    ScoreSelection,
    best_width,
    check_protocol,
    choice_uncertainty,
    combine_with,
    fit_image_threshold,
    foreground_mask,
    reconstruction_scores,
    select_weights,
    simplex_grid,
)
