"""Evaluation of anomaly detectors: metrics of several methods on several sets, and the JSON/Markdown report."""

from __future__ import annotations

from .report import DEFAULT_MAX_PIXELS, evaluate_detection, write_evaluation_report
