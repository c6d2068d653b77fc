"""Detection panels of an inference run: input, pseudo-normal, heat map and overlay of each image, as PNG files."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.data.image_files import item_file_name, output_stem

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["AnomalyPanelSaver"]


class AnomalyPanelSaver:
    """Handler that saves a detection panel per image: input | pseudo-normal | heat map | overlay with contours.

    For a volume the panel shows its highest-scoring slice. At most ``max_panels`` panels per run are written. A
    panel is named like the maps MONAI's ``SaveImage`` writes: ``<sub-folder>/<name>_panel.png``, where ``<name>``
    is the input's file name without extension and ``<sub-folder>`` its folder below ``data_root_dir`` (none when
    ``data_root_dir`` is empty).

    Args:
        output_dir: folder of the PNG files (created).
        max_panels: how many images get a panel (the first ones of the run), an integer >= 0 (0: none).
        image_key: key of the input image, whose file name names the panel.
        transpose: draw the slices with their two axes swapped (default): MONAI reads PNG/JPEG files as (width,
            height) arrays and NIfTI slices as (x, y), and both look as expected only when transposed.
        data_root_dir: the inputs' common folder, as given to ``SaveImage``, so that inputs with one file name in
            different folders get different panels.

    Raises:
        ValueError: ``max_panels`` is not an integer >= 0 (a negative count wrote no panel, without a word).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        max_panels: int = 64,
        image_key: str = "image",
        transpose: bool = True,
        data_root_dir: str | os.PathLike = "",
    ) -> None:
        if isinstance(max_panels, bool) or not isinstance(max_panels, numbers.Integral) or max_panels < 0:
            raise ValueError(f"max_panels must be an integer >= 0 (0: no panels), got {max_panels!r}.")
        self.output_dir, self.max_panels, self.image_key = Path(output_dir), max_panels, image_key
        self.transpose, self.data_root_dir = transpose, os.fspath(data_root_dir)
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._save)

    def _reset(self, engine: Engine) -> None:
        self.count = 0

    def _save(self, engine: Engine) -> None:
        from monai_hqanogan.visualize import plot_detection_panels, save_figure

        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            if self.count >= self.max_panels:
                return
            panel = torch.as_tensor(item["panel"]).float()
            if panel.numel() == 0:
                continue
            if self.transpose:
                panel = panel.transpose(-1, -2)
            name = item_file_name(item, self.image_key)
            stem = output_stem(name, self.data_root_dir) if name else f"image_{self.count}"
            slices = torch.as_tensor(item["slice_scores"]).numel()
            title = Path(stem).name + (f" (slice {int(item['panel_slice'])})" if slices > 1 else "")
            pixel_thr = float(item["pixel_threshold"])
            fig = plot_detection_panels(
                panel[0:1, None],
                panel[1:2, None],
                panel[2:3, None],
                pred_masks=panel[2:3, None] >= pixel_thr,
                scores=[float(item["pred_score"])],
                threshold=float(item["image_threshold"]),
                titles=[title],
            )
            path = self.output_dir / f"{stem}_panel.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_figure(fig, path)
            self.count += 1
