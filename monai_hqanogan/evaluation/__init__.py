"""Evaluation of anomaly detectors: metrics of several methods on several sets, and the JSON/Markdown report."""

from __future__ import annotations

from .protocol import (
    FAMILY_FOREGROUND,
    best_width,
    family_scores,
    family_smoothing,
    method_components,
    select_method_scores,
    selection_summary,
)
from .report import (
    DEFAULT_BOOTSTRAP_SAMPLES,
    DEFAULT_MAX_PIXELS,
    evaluate_detection,
    format_interval,
    format_value,
    markdown_table,
    paired_comparisons,
    write_evaluation_report,
)
