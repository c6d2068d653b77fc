"""Sheets of inputs and their pseudo-normal reconstructions during encoder training (PNG and TensorBoard)."""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.handlers.samples import ImageSheetHandler

Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ReconstructionSampleHandler"]


class ReconstructionSampleHandler(ImageSheetHandler):
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
        transpose: swap the last two axes for display (data read from PNG/JPEG by MONAI is (width, height)).
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
        transpose: bool = False,
    ) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}.")
        super().__init__(
            output_dir, summary_writer, log_dir, interval, tag, file_prefix, scale, what="sheets", transpose=transpose
        )
        self.images = images

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

    def sheet(self, engine: Engine) -> tuple[torch.Tensor, int | None]:
        return self.render(engine), self.images.shape[0]
