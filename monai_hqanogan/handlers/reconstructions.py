"""Sheets of inputs and their pseudo-normal reconstructions during encoder training (PNG and TensorBoard)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.visualize.grid import make_image_grid, save_image_grid

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

__all__ = ["ReconstructionSampleHandler"]


class ReconstructionSampleHandler:
    """Every ``interval`` epochs (and at the end), reconstruct a fixed batch with ``engine.reconstruct(images)``
    (``EncoderTrainer`` provides it) and save a two-row sheet: inputs on top, G(E(x)) below.

    The encoder is switched to eval mode for the sheet and back; no global RNG is used.

    Args:
        images: a fixed batch [N, C, R, R] of (normal or abnormal) images in [-1, 1].
        output_dir: where to write ``{file_prefix}_iteration={n}.png`` (None: no files).
        summary_writer: a TensorBoard ``SummaryWriter`` (or ``log_dir`` to create one).
        log_dir: TensorBoard directory used when ``summary_writer`` is None.
        interval: epochs between sheets.
        tag: TensorBoard image tag.
        file_prefix: PNG file name prefix.
        scale: PNG enlargement factor.
    """

    def __init__(
        self,
        images: torch.Tensor,
        output_dir: str | os.PathLike | None = None,
        summary_writer: Any = None,
        log_dir: str | os.PathLike | None = None,
        interval: int = 1,
        tag: str = "reconstructions",
        file_prefix: str = "reconstructions",
        scale: int = 1,
    ) -> None:
        if output_dir is None and summary_writer is None and log_dir is None:
            raise ValueError("give output_dir, summary_writer or log_dir: the sheets must go somewhere.")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}.")
        self.images = images
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.writer = summary_writer if summary_writer is not None or log_dir is None else SummaryWriter(str(log_dir))
        self.interval, self.tag, self.file_prefix, self.scale = interval, tag, file_prefix, scale
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    @torch.no_grad()
    def render(self, engine: Engine) -> torch.Tensor:
        """[2N, C, R, R]: the inputs followed by their reconstructions."""
        encoder = engine.encoder
        was_training = encoder.training
        encoder.eval()
        try:
            device = next(encoder.parameters()).device
            _, rec = engine.reconstruct(self.images.to(device))
        finally:
            encoder.train(was_training)
        return torch.cat([self.images.float().cpu(), rec.float().cpu()])

    def __call__(self, engine: Engine) -> None:
        sheet = self.render(engine)
        n, it = self.images.shape[0], engine.state.iteration
        if self.output_dir is not None:
            path = self.output_dir / f"{self.file_prefix}_iteration={it}.png"
            self.last_path = save_image_grid(sheet, path, nrow=n, scale=self.scale)
        if self.writer is not None:
            self.writer.add_image(self.tag, make_image_grid(sheet, nrow=n), global_step=it)
            self.writer.flush()
