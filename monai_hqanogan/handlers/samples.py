"""Fixed-latent sample sheets of a generator, saved as PNG and logged to TensorBoard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.engines.distributed import is_main_process
from monai_hqanogan.visualize.grid import make_image_grid, save_image_grid

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

__all__ = ["GeneratorSampleHandler", "ImageSheetHandler"]


class ImageSheetHandler:
    """Base of handlers that write an image sheet every ``interval`` epochs and at the end of the run, as a PNG
    ``{file_prefix}_iteration={n}.png`` in ``output_dir`` and/or a TensorBoard image. Subclasses implement
    ``sheet(engine) -> (images [N, C, H, W], images per row or None)``.

    Under ``torch.distributed`` only rank 0 renders, writes PNGs and creates or writes the TensorBoard log (the
    replicas are equal), so the handler can be attached on every rank. A ``SummaryWriter`` for ``log_dir`` is
    created at the first sheet. ``transpose`` shows every image with its last two axes swapped: MONAI reads PNG and
    JPEG files as (width, height) arrays, so sheets of such data need it to show the anatomy as in the files.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None,
        summary_writer: Any,
        log_dir: str | os.PathLike | None,
        interval: int,
        tag: str,
        file_prefix: str,
        scale: int,
        what: str,
        transpose: bool = False,
    ) -> None:
        if output_dir is None and summary_writer is None and log_dir is None:
            raise ValueError(f"give output_dir, summary_writer or log_dir: the {what} must go somewhere.")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.writer = summary_writer
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.interval, self.tag, self.file_prefix, self.scale = interval, tag, file_prefix, scale
        self.transpose = transpose
        self.last_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def sheet(self, engine: Engine) -> tuple[torch.Tensor, int | None]:
        raise NotImplementedError

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if self.writer is None and self.log_dir is not None:
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        images, nrow = self.sheet(engine)
        if self.transpose:
            images = images.transpose(-1, -2)
        it = engine.state.iteration
        if self.output_dir is not None:
            path = self.output_dir / f"{self.file_prefix}_iteration={it}.png"
            self.last_path = save_image_grid(images, path, nrow=nrow, scale=self.scale)
        if self.writer is not None:
            self.writer.add_image(self.tag, make_image_grid(images, nrow=nrow), global_step=it)
            self.writer.flush()


class GeneratorSampleHandler(ImageSheetHandler):
    """Every ``interval`` epochs (and at the end), render the same latents with the engine's generator.

    The latents come from a private ``torch.Generator`` and the synthesis uses constant noise, so the global RNG
    is untouched: attaching this handler does not change training, and resumption stays exact.

    Args:
        output_dir: where to write ``{file_prefix}_iteration={n}.png`` (None: no files).
        summary_writer: a TensorBoard ``SummaryWriter`` to log the grid to.
        log_dir: create a ``SummaryWriter`` here when ``summary_writer`` is None (None: no TensorBoard).
        interval: epochs between sheets.
        num_samples: images per sheet.
        seed: seed of the fixed latents.
        truncation_psi: truncation of the latents (1: none).
        generator_attr: engine attribute holding the generator (``"generator_ema"``).
        tag: TensorBoard image tag.
        file_prefix: PNG file name prefix.
        scale: PNG enlargement factor (nearest neighbour).
        transpose: swap the last two axes for display (data read from PNG/JPEG by MONAI is (width, height)).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        summary_writer: Any = None,
        log_dir: str | os.PathLike | None = None,
        interval: int = 1,
        num_samples: int = 16,
        seed: int = 0,
        truncation_psi: float = 1.0,
        generator_attr: str = "generator_ema",
        tag: str = "samples",
        file_prefix: str = "samples",
        scale: int = 1,
        transpose: bool = False,
    ) -> None:
        super().__init__(
            output_dir, summary_writer, log_dir, interval, tag, file_prefix, scale, what="samples", transpose=transpose
        )
        self.num_samples, self.seed = num_samples, seed
        self.truncation_psi, self.generator_attr = truncation_psi, generator_attr

    @torch.no_grad()
    def render(self, generator: torch.nn.Module) -> torch.Tensor:
        """The sample batch [num_samples, C, R, R] for the fixed latents."""
        rng = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.num_samples, generator.z_dim, generator=rng)
        device = next(generator.parameters()).device
        was_training = generator.training
        generator.eval()
        try:
            return generator(z.to(device), truncation_psi=self.truncation_psi, noise_mode="const").float().cpu()
        finally:
            generator.train(was_training)

    def sheet(self, engine: Engine) -> tuple[torch.Tensor, int | None]:
        return self.render(getattr(engine, self.generator_attr)), None
