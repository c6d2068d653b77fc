from __future__ import annotations

from .grid import make_image_grid, save_image_grid
from .panels import figure_to_image, plot_detection_panels, plot_roc_curves, plot_score_histogram, save_figure
