"""Training the pSp encoder E: image -> W+ against a frozen StyleGAN2 (HQ-AnoGAN's second stage).

Richardson et al., "Encoding in Style" (pSp), CVPR 2021, https://arxiv.org/abs/2008.00951; Sato et al., HQ-AnoGAN,
Int J CARS 2023, https://doi.org/10.1007/s11548-023-03031-9. Written from the papers.

One iteration encodes a batch of normal images, reconstructs them with the frozen generator (constant noise, as at
inference) and minimises a weighted sum of

- ``l2`` / ``l1``: pixel residuals between ``G(E(x))`` and ``x``;
- ``feature``: the frozen discriminator's per-image feature residual (the offline perceptual term);
- ``perceptual``: an optional user-supplied perceptual loss (MONAI ``PerceptualLoss``, LPIPS) when weights exist;
- ``w_norm``: squared distance of the codes to ``w_avg``;
- ``latent_cycle``: ``|E(G(E(x))) - E(x)|^2``, optional;
- ``latent``: optional supervised term on G's own samples with known codes: ``|E(G(w)) - w|^2``.

Data-parallel training (see :class:`~monai_hqanogan.engines.base.KimgTrainer`) averages E's gradients and its
batch-norm running statistics over the ranks; G and D stay frozen and must be the same on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import default_prepare_batch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_hqanogan.engines.base import KimgTrainer
from monai_hqanogan.losses.encoder_losses import DiscriminatorFeatureLoss, image_losses, w_norm_loss
from monai_hqanogan.networks.layers.modulated import check_deterministic_noise_mode
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.utils.checkpoint import CheckpointError, model_fingerprint

__all__ = ["EncoderTrainer"]


class EncoderTrainer(KimgTrainer):
    """Trains a :class:`PSPEncoder` with the generator (its EMA copy) and the discriminator frozen.

    Args:
        device: device to train on; ``amp`` (bfloat16 autocast) applies only on CUDA.
        max_epochs: passes over ``train_data_loader`` (training also stops at ``total_kimg``).
        train_data_loader: batches of normal images in [-1, 1], [B, C, R, R].
        encoder: the encoder to train; its ``w_avg`` is set from the generator.
        generator: the trained generator (use G_ema); frozen and put in eval mode.
        optimizer: optimiser of the encoder (Adam, lr 1e-4 to 1e-3, works).
        discriminator: the trained discriminator, for the ``feature`` term (None: no feature term).
        l2_weight: weight of the pixel L2 term (1).
        l1_weight: weight of the pixel L1 term (0).
        feature_weight: weight of the discriminator-feature term (0.8, pSp's LPIPS weight).
        feature_layers: discriminator feature indices for the feature term (None: all).
        perceptual_loss: optional extra perceptual loss ``f(reconstruction, target)``.
        perceptual_weight: its weight.
        w_norm_weight: weight of the w-norm regulariser (0.005).
        latent_cycle_weight: weight of the latent-cycle term (0).
        synthetic_batch: G samples with known codes added per iteration for the supervised ``latent`` term (0).
        latent_weight: weight of the ``latent`` term (1).
        synthetic_psi: truncation of those samples' codes (1: none).
        noise_mode: the generator's per-pixel noise while reconstructing: ``"const"`` (its fixed noise images) or
            ``"none"``; use the same setting in the :class:`HQAnoGANDetector`.
        total_kimg: stop after this many thousand real images.
        max_seconds: wall-clock budget of this run (see :class:`KimgTrainer`; None: no limit).
        image_key: key of the images when batches are dicts.
        amp: bfloat16 autocast, on CUDA and on CPUs with native bfloat16 kernels (see :class:`KimgTrainer`).
        epoch_length, non_blocking, prepare_batch, train_handlers, event_names, to_kwargs: as in MONAI's trainers.
        distributed: data-parallel training over the ranks of the ``torch.distributed`` process group (None: when
            one is initialised with more than one rank). E starts from rank 0's; the frozen G and D must match on
            every rank (checked through their fingerprint when training starts).
        channels_last: E, the frozen G and D, and the batches in the channels-last layout (see
            :class:`KimgTrainer`).

    Raises:
        ValueError: when E, G and D do not fit together, or a batch does not fit the models or holds NaN/inf.
        NonFiniteLossError: when the loss or its gradient is not finite; raised before the optimiser step.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        encoder: PSPEncoder,
        generator: StyleGAN2Generator,
        optimizer: Optimizer,
        discriminator: StyleGAN2Discriminator | None = None,
        l2_weight: float = 1.0,
        l1_weight: float = 0.0,
        feature_weight: float = 0.8,
        feature_layers: Sequence[int] | None = None,
        perceptual_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        perceptual_weight: float = 1.0,
        w_norm_weight: float = 0.005,
        latent_cycle_weight: float = 0.0,
        synthetic_batch: int = 0,
        latent_weight: float = 1.0,
        synthetic_psi: float = 1.0,
        noise_mode: str = "const",
        total_kimg: float | None = None,
        max_seconds: float | None = None,
        image_key: str = "image",
        amp: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        to_kwargs: dict | None = None,
        distributed: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        self._check_models(encoder, generator, discriminator)
        if feature_weight > 0 and discriminator is None:
            raise ValueError("feature_weight > 0 needs the trained discriminator (or set feature_weight=0).")
        if synthetic_batch < 0:
            raise ValueError(f"synthetic_batch must be >= 0, got {synthetic_batch}.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            img_channels=encoder.img_channels,
            resolution=encoder.resolution,
            total_kimg=total_kimg,
            max_seconds=max_seconds,
            image_key=image_key,
            amp=amp,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            train_handlers=train_handlers,
            event_names=event_names,
            to_kwargs=to_kwargs,
            distributed=distributed,
            channels_last=channels_last,
        )
        self.encoder, self.optimizer = encoder, optimizer
        self.generator = generator.eval().requires_grad_(False)
        self.discriminator = discriminator
        self._set_memory_format(self.encoder, self.generator, self.discriminator)
        self.encoder.set_w_avg(generator.w_avg)
        self.feature_loss = (
            DiscriminatorFeatureLoss(discriminator, feature_layers) if discriminator is not None else None
        )
        self.perceptual_loss = perceptual_loss
        self.weights = {
            "l2": l2_weight, "l1": l1_weight, "feature": feature_weight, "perceptual": perceptual_weight,
            "w_norm": w_norm_weight, "latent_cycle": latent_cycle_weight, "latent": latent_weight,
        }  # fmt: skip
        self.synthetic_batch, self.synthetic_psi = synthetic_batch, synthetic_psi
        self.noise_mode = check_deterministic_noise_mode(noise_mode)
        frozen = [generator] if discriminator is None else [generator, discriminator]
        self.frozen_fingerprint = model_fingerprint(*frozen)

    @staticmethod
    def _check_models(e: nn.Module, g: nn.Module, d: nn.Module | None) -> None:
        pairs = [("resolution", g), ("img_channels", g), ("w_dim", g), ("num_ws", g)]
        if d is not None:
            pairs += [("resolution", d), ("img_channels", d)]
        for name, other in pairs:
            ev, ov = getattr(e, name, None), getattr(other, name, None)
            if ev != ov:
                raise ValueError(
                    f"encoder {name}={ev} does not match the {type(other).__name__}'s {name}={ov}: build the encoder "
                    "with the generator's resolution, img_channels, w_dim and num_ws."
                )

    # ------------------------------------------------------------------ data parallelism
    def _replicated_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def _replicated_counters(self) -> dict[str, int]:
        # 60 bits of the frozen networks' fingerprint: G and D must be the same on every rank
        return {**super()._replicated_counters(), "frozen G/D fingerprint": int(self.frozen_fingerprint[:15], 16)}

    def _running_statistics(self) -> list[torch.Tensor]:
        """The running means and variances of E's batch normalisations."""
        stats = []
        for m in self.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None:
                stats += [m.running_mean, m.running_var]
        return stats

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ws, G(ws))`` for ``images`` with the current encoder (``noise_mode``, the generator's eval clamp)."""
        with self._autocast():
            ws = self.encoder(images)
            rec = self.generator.synthesis(ws, noise_mode=self.noise_mode)
        return ws, rec.float()

    def _iteration(self, engine: KimgTrainer, batchdata: Any) -> dict[str, float]:
        x = self._get_real_images(batchdata)
        self.encoder.train()
        self.generator.eval()
        ws, rec = self.reconstruct(x)
        terms: dict[str, torch.Tensor] = {}
        pixel = image_losses(rec, x)
        for name in ("l2", "l1"):
            if self.weights[name] > 0:
                terms[name] = pixel[name]
        if self.feature_loss is not None and self.weights["feature"] > 0:
            terms["feature"] = self.feature_loss(rec, x)
        if self.perceptual_loss is not None and self.weights["perceptual"] > 0:
            terms["perceptual"] = self.perceptual_loss(rec, x).mean()
        if self.weights["w_norm"] > 0:
            terms["w_norm"] = w_norm_loss(ws, self.encoder.w_avg)
        if self.weights["latent_cycle"] > 0:
            with self._autocast():
                terms["latent_cycle"] = (self.encoder(rec) - ws.detach()).float().square().sum(-1).mean()
        if self.synthetic_batch > 0 and self.weights["latent"] > 0:
            with torch.no_grad(), self._autocast():
                z = torch.randn(self.synthetic_batch, self.generator.z_dim, device=x.device)
                w_true = self.generator.mapping(z, truncation_psi=self.synthetic_psi)
                samples = self.generator.synthesis(w_true, noise_mode=self.noise_mode).float()
            with self._autocast():
                terms["latent"] = F.mse_loss(self.encoder(samples).float(), w_true.float())
        loss = sum(self.weights[k] * v for k, v in terms.items())
        size = torch.tensor(float(x.shape[0]), device=x.device)
        values = self._backward("encoder", loss, self.optimizer, self.encoder, *terms.values(), size)
        self.optimizer.step()
        self._sync_running_statistics()
        self.nimg += self._global_batch(x.shape[0], values[-1])
        out = {"loss/E": float(values[0]), "progress/kimg": self.kimg}
        out.update({f"loss/{k}": float(v) for k, v in zip(terms, values[1:])})
        return out

    # ------------------------------------------------------------------ checkpointing
    def checkpoint_dict(self) -> dict[str, Any]:
        """Encoder, optimiser and trainer state; G and D are frozen and come from the generator's checkpoint."""
        return {**super().checkpoint_dict(), "encoder": self.encoder, "optimizer": self.optimizer}

    def _extra_state(self) -> dict[str, Any]:
        return {"frozen_fingerprint": self.frozen_fingerprint}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        saved = extra.get("frozen_fingerprint")
        if saved is not None and saved != self.frozen_fingerprint:
            raise CheckpointError(
                f"this encoder checkpoint was trained against other generator/discriminator weights (fingerprint "
                f"{saved}, now {self.frozen_fingerprint}); resume with the same stage-1 checkpoint or start afresh."
            )
