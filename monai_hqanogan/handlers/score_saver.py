"""Image scores and decisions of an inference run, written as CSV and JSON files when the run completes."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.data.image_files import item_file_name
from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.utils.strict_json import finite_or_none, strict_json

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AnomalyScoreSaver"]


class AnomalyScoreSaver:
    """Handler that writes every image's score and decision to ``<output_dir>/<filename>.csv`` and ``.json``.

    Rows: ``image`` (file), ``score``, ``label`` (1 abnormal at the calibrated threshold), ``threshold``, and for
    volumes ``slice`` (the highest-scoring slice index) and the per-slice scores (JSON only). The JSON file also
    names the calibrated ``pixel_threshold`` of the run's label maps (PNG maps are relative to it: see
    :class:`~monai_hqanogan.handlers.SaveAnomalyMapsd`). Written atomically when the run completes. The JSON file
    is standard JSON: a value that is not a finite number is ``null`` there and empty in the CSV file (never ``NaN``
    or ``Infinity``).

    Args:
        output_dir: folder of the files (created).
        filename: file name without suffix.
        image_key: key of the input image, whose meta data name the file.
    """

    def __init__(self, output_dir: str | os.PathLike, filename: str = "scores", image_key: str = "image") -> None:
        self.output_dir, self.filename, self.image_key = Path(output_dir), filename, image_key
        self.rows: list[dict[str, Any]] = []
        self.pixel_threshold: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.pixel_threshold = [], None

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            # full precision, as the score: rounding would break "score == max(slice_scores)" for small scores
            slices = [float(v) if math.isfinite(v) else None for v in torch.as_tensor(item["slice_scores"]).tolist()]
            if "pixel_threshold" in item:
                self.pixel_threshold = float(item["pixel_threshold"])
            self.rows.append({
                "image": item_file_name(item, self.image_key),
                "score": float(item["pred_score"]),
                "label": int(item["pred_image_label"]),
                "threshold": float(item["image_threshold"]),
                "slice": int(item["panel_slice"]) if len(slices) > 1 else None,
                "slice_scores": slices if len(slices) > 1 else None,
            })  # fmt: skip

    def write(self, engine: Engine | None = None) -> tuple[Path, Path]:
        """Write the CSV and JSON files; returns their paths."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = self.output_dir / f"{self.filename}.csv", self.output_dir / f"{self.filename}.json"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["image", "score", "label", "threshold", "slice"], extrasaction="ignore")
        writer.writeheader()
        rows = finite_or_none(self.rows)
        writer.writerows(rows)
        write_text_atomic(csv_path, buffer.getvalue())
        summary = {"images": len(rows), "flagged": sum(r["label"] for r in rows), "rows": rows}
        if self.pixel_threshold is not None:
            summary = {"pixel_threshold": finite_or_none(self.pixel_threshold), **summary}
        write_text_atomic(json_path, strict_json(summary))
        logging.getLogger(type(self).__name__).info(
            f"scores of {len(self.rows)} images ({summary['flagged']} above threshold) -> {csv_path}"
        )
        return csv_path, json_path
