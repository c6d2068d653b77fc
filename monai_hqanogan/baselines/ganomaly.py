"""GANomaly trained and run by anomalib, as an external peer on the same images as every other method.

GANomaly (Akcay et al., ACCV 2018, https://arxiv.org/abs/1805.06725) encodes an image, decodes it and encodes the
reconstruction again; its anomaly score is the squared distance between the two latent codes. This module does not
implement GANomaly: it trains anomalib's own ``Ganomaly`` model (https://github.com/open-edge-platform/anomalib)
from scratch through anomalib's ``Engine`` and ``Folder`` data module, on our preprocessed normal images written
as PNG files, then scores our tensors with the trained network. Nothing is downloaded.

anomalib is optional: it needs torchvision, lightning and timm, and the PyPI torchvision does not import next to
the torch 2.13 that the base install uses (``pip install anomalib`` into an environment with a matching torch and
torchvision pair, e.g. torch 2.14.1 + torchvision 0.29.1). Without it, :meth:`AnomalibGANomalyBaseline.fit` raises
an ``ImportError`` that says so.
"""

from __future__ import annotations

import datetime
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ImageBatches, ReconstructionBaseline, as_image_batch

__all__ = ["AnomalibGANomalyBaseline", "anomalib_available"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def anomalib_available() -> tuple[bool, str]:
    """Whether anomalib and what it needs import here, and if not, why (the import error)."""
    try:
        import anomalib.engine  # noqa: F401
        import anomalib.models  # noqa: F401
    except Exception as err:  # ImportError, or torchvision failing to load its operators
        return False, f"{type(err).__name__}: {err}"
    return True, ""


def _write_pngs(images: torch.Tensor, folder: Path, prefix: str) -> None:
    """Images [N, 1|3, R, R] in [-1, 1] -> 8-bit PNG files ``prefix_00000.png`` ... in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    for i, img in enumerate(pixels):
        array = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        Image.fromarray(np.ascontiguousarray(array)).save(folder / f"{prefix}_{i:05d}.png")


class AnomalibGANomalyBaseline(ReconstructionBaseline):
    """anomalib's GANomaly as a reference detector: fitted on normal images only, score = latent distance.

    Images are our ``[N, C, R, R]`` tensors in [-1, 1]; for anomalib they become 3-channel images in [0, 1]
    resized to ``image_size`` and normalised with ImageNet statistics (anomalib's default pre-processing, at our
    resolution). The score is GANomaly's raw latent distance (anomalib's min-max normalisation on validation data
    does not change the ranking). GANomaly gives no anomaly map: :meth:`anomaly_map` returns None; the
    reconstruction (its generator's output) is kept for figures.

    Args:
        image_size: height and width the network is built for (a power of two >= 32).
        in_channels: channels of the images given to :meth:`fit` and :meth:`score` (1 or 3).
        n_features: channels of the first convolution (anomalib's default 64).
        latent_vec_size: size of the latent code (anomalib's default 100).
        extra_layers: extra convolution layers in encoder and decoder (anomalib's default 0).
        wadv: weight of the adversarial (feature matching) loss (anomalib's default 1).
        wcon: weight of the image reconstruction loss (anomalib's default 50).
        wenc: weight of the latent encoding loss (anomalib's default 1).
        lr: Adam learning rate of both networks (anomalib's default 2e-4).
    """

    name = "GANomaly (anomalib)"

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        n_features: int = 64,
        latent_vec_size: int = 100,
        extra_layers: int = 0,
        wadv: int = 1,
        wcon: int = 50,
        wenc: int = 1,
        lr: float = 2e-4,
    ) -> None:
        super().__init__()
        if image_size < 32 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 32 (GANomaly's DCGAN layout), got {image_size}.")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}.")
        self.image_size, self.in_channels = image_size, in_channels
        self.options = {
            "n_features": n_features, "latent_vec_size": latent_vec_size, "extra_layers": extra_layers,
            "wadv": wadv, "wcon": wcon, "wenc": wenc, "lr": lr,
        }  # fmt: skip
        self.model: torch.nn.Module | None = None  # anomalib's Ganomaly (a LightningModule), built by fit
        self.fit_info: dict[str, Any] = {}
        # a parameter to carry the device until the anomalib model exists
        self._anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def _device(self) -> torch.device:
        return self._anchor.device

    def _build(self, batch_size: int) -> torch.nn.Module:
        ok, why = anomalib_available()
        if not ok:
            raise ImportError(
                f"anomalib is needed for GANomaly and does not import here ({why}). Install it into an environment "
                "whose torchvision matches torch (e.g. torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0)."
            )
        from anomalib.models import Ganomaly
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms import v2

        pre = PreProcessor(
            transform=v2.Compose([
                v2.Resize((self.image_size, self.image_size), antialias=True),
                v2.Normalize(mean=list(_IMAGENET_MEAN), std=list(_IMAGENET_STD)),
            ])
        )  # fmt: skip
        return Ganomaly(batch_size=batch_size, pre_processor=pre, visualizer=False, evaluator=False, **self.options)

    def fit(
        self,
        images: ImageBatches,
        validation_images: torch.Tensor | None = None,
        validation_labels: torch.Tensor | None = None,
        epochs: int = 15,
        time_limit_s: float | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        seed: int = 0,
        num_workers: int = 0,
        progress: bool = False,
        workdir: str | Path | None = None,
    ) -> AnomalibGANomalyBaseline:
        """Train anomalib's GANomaly from scratch on normal images with anomalib's ``Engine``.

        The images are written as PNG files into a temporary ``Folder`` data set and ``Engine.fit`` trains for
        ``epochs`` or until ``time_limit_s`` (Lightning's ``max_time``), whichever comes first. anomalib validates
        after each epoch (GANomaly keeps the score range for its normalisation; the scores here are the raw ones): on
        ``validation_images`` when given, else on up to 64 of the training images.

        Args:
            images: normal images [N, C, R, R] in [-1, 1] (a tensor).
            validation_images: held-out images [M, C, R, R] for anomalib's validation (optional).
            validation_labels: their labels [M], 1 = abnormal (default: all normal).
            epochs: passes over the images.
            time_limit_s: wall-clock limit of the training (None: no limit).
            batch_size: images per step (GANomaly's real/fake labels are built for this size; the last partial batch
                is dropped).
            device: "cpu", "cuda" or a torch device (default: where this module is).
            seed: seeds Lightning (weights, shuffling).
            num_workers: data loader workers.
            progress: show Lightning's progress bar.
            workdir: where the PNG files and Lightning's files go (default: a temporary folder, removed after).

        Raises:
            ImportError: anomalib does not import here.
            ValueError: bad images, or fewer images than ``batch_size``.
        """
        images = as_image_batch(images, "GANomaly training images", self.in_channels, self.image_size)
        if len(images) < batch_size:
            raise ValueError(f"GANomaly needs at least batch_size={batch_size} training images, got {len(images)}.")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}.")
        model = self._build(batch_size)
        from anomalib.data import Folder
        from anomalib.engine import Engine
        from lightning.pytorch import seed_everything

        device = torch.device(device) if device is not None else self._device()
        seed_everything(seed, workers=True, verbose=False)
        kwargs: dict[str, Any] = {
            "max_epochs": epochs, "accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1,
            "enable_progress_bar": progress, "enable_model_summary": False,
        }  # fmt: skip
        if time_limit_s is not None:
            kwargs["max_time"] = datetime.timedelta(seconds=float(time_limit_s))
        if validation_images is None:
            validation_images, validation_labels = images[:64], None
        validation_images = as_image_batch(
            validation_images, "GANomaly validation images", self.in_channels, self.image_size
        )
        if validation_labels is None:
            validation_labels = torch.zeros(len(validation_images), dtype=torch.long)
        if validation_labels.shape != (len(validation_images),):
            raise ValueError(
                f"validation_labels must have shape ({len(validation_images)},), got {tuple(validation_labels.shape)}."
            )
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            root = Path(tmp)
            _write_pngs(images, root / "train_normal", "train")
            abnormal = validation_labels.bool().cpu()
            _write_pngs(validation_images[~abnormal], root / "val_normal", "val")
            if abnormal.any():
                _write_pngs(validation_images[abnormal], root / "val_abnormal", "val")
            data = Folder(
                name="normal_images", root=root, normal_dir="train_normal", normal_test_dir="val_normal",
                abnormal_dir="val_abnormal" if abnormal.any() else None, train_batch_size=batch_size,
                eval_batch_size=batch_size, num_workers=num_workers, test_split_mode="from_dir",
                val_split_mode="same_as_test", seed=seed,
            )  # fmt: skip
            engine = Engine(logger=False, default_root_dir=root / "lightning", **kwargs)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Lightning's advice about workers and missing validation
                # Lightning's banners and anomalib's advice about thresholds (no threshold is used here)
                loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "anomalib")]
                levels = [log.level for log in loggers]
                for log in loggers:
                    log.setLevel(logging.ERROR)
                try:
                    engine.fit(model=model, datamodule=data)
                finally:
                    for log, level in zip(loggers, levels):
                        log.setLevel(level)
            seconds = time.perf_counter() - start
            trainer = engine.trainer
            self.fit_info = {
                "epochs": int(trainer.current_epoch), "optimizer_steps": int(trainer.global_step), "seconds": seconds,
                "stopped_by": "time_limit" if trainer.current_epoch < epochs else "epochs",
            }  # fmt: skip
        self.model = model.to(device).eval()
        self._anchor.data = self._anchor.data.to(device)
        self.fitted.fill_(True)
        return self

    # ------------------------------------------------------------------ inference
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> anomalib's input: 3 channels in [0, 1] through the model's pre-processor."""
        x = (x.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.model.pre_processor.transform(x)  # type: ignore[union-attr]

    @torch.no_grad()
    def score(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor:
        """GANomaly's score: mean squared distance between the latent code of the image and of its reconstruction."""
        self._check_fitted()
        images = as_image_batch(images, "images", self.in_channels, self.image_size)
        net = self.model.model  # type: ignore[union-attr]
        net.eval()
        out = []
        for chunk in images.split(batch_size):
            out.append(net(self._prepare(chunk.to(self._device()))).pred_score.float().cpu())
        return torch.cat(out)

    def anomaly_map(self, images: ImageBatches, batch_size: int = 256) -> torch.Tensor | None:
        """None: GANomaly scores whole images."""
        return None

    @torch.no_grad()
    def reconstruct_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's output for one batch, back in our space (one channel when fitted on one, [-1, 1])."""
        self._check_fitted()
        from anomalib.data.utils.image import pad_nextpow2

        net = self.model.model  # type: ignore[union-attr]
        fake, _, _ = net.generator(pad_nextpow2(self._prepare(x)))
        mean = torch.tensor(_IMAGENET_MEAN, device=fake.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=fake.device).view(1, 3, 1, 1)
        rgb = (fake.float() * std + mean) * 2 - 1
        return (rgb.mean(1, keepdim=True) if self.in_channels == 1 else rgb).clamp(-1, 1)
