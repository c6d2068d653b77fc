from __future__ import annotations

from .calibration import (
    DEFAULT_WEIGHTS,
    SCORE_NAMES,
    AnomalyCalibration,
    fit_scores,
    load_calibration,
    save_calibration,
    simplex_grid,
)
from .latent_density import WPlusGaussian, ledoit_wolf_covariance
