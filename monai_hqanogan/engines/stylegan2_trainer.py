"""StyleGAN2-ADA training as a MONAI ``Trainer`` (an ignite ``Engine``), so that MONAI handlers plug in.

Karras et al., "Training Generative Adversarial Networks with Limited Data" (StyleGAN2-ADA), NeurIPS 2020,
https://arxiv.org/abs/2006.06676, and Karras et al., StyleGAN2, CVPR 2020, https://arxiv.org/abs/1912.04958.
Written from the papers.

One iteration takes one batch of real images and runs, in order:

1. D main step: non-saturating logistic loss on augmented reals and augmented fakes of G (style mixing);
2. D regularisation every ``r1_interval`` D steps: lazy R1 penalty ``gamma / 2 * |grad D(y)|^2`` at the augmented
   reals ``y = A(x)`` (see :meth:`StyleGAN2Trainer.r1_of_reals` for how that differs from StyleGAN2-ADA);
3. G main step: non-saturating logistic loss through the augmented D; ``w_avg`` is tracked here;
4. G regularisation every ``pl_interval`` G steps: lazy path-length penalty on a smaller batch;
5. EMA update of ``generator_ema`` (half-life ``ema_kimg`` thousand images, ramped up);
6. ADA update every ``ada_interval`` D steps: ``p`` follows ``r_t = E[sign(D(real))]`` towards ``ada_target``.

Progress is counted in images (``nimg``, ``kimg``), over all ranks when training data-parallel (see
:class:`~monai_hqanogan.engines.base.KimgTrainer`): the gradients of every step, ADA's ``r_t`` statistics, the
tracked ``w_avg`` and the path-length mean are then averaged over the ranks, and the logged values are rank means.
The engine's output after each iteration is a dict of floats
(``loss/G``, ``loss/D``, ``reg/r1``, ``reg/pl``, ``ada/p``, ``ada/r_t``, ``progress/kimg``), which MONAI's
``StatsHandler`` and ``TensorBoardStatsHandler`` log with ``output_transform=lambda x: x``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_hqanogan.engines.base import KimgTrainer, NonFiniteLossError
from monai_hqanogan.losses import (
    PathLengthPenalty,
    discriminator_logistic_loss,
    generator_logistic_loss,
    r1_penalty,
)
from monai_hqanogan.networks.nets import StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.transforms.ada import AdaptiveAugmentController, AdaptiveAugmentPipe

__all__ = ["StyleGAN2Trainer", "NonFiniteLossError", "stylegan2_adam", "auto_r1_gamma"]


def stylegan2_adam(
    params: Iterable[torch.Tensor],
    lr: float = 0.0025,
    betas: Sequence[float] = (0.0, 0.99),
    eps: float = 1e-8,
    reg_interval: int | None = None,
) -> torch.optim.Adam:
    """Adam with StyleGAN2's settings, adjusted for lazy regularisation.

    With a regulariser run every ``reg_interval`` steps, there are ``reg_interval + 1`` optimiser steps per
    ``reg_interval`` iterations; StyleGAN2 scales the learning rate by ``c = k / (k + 1)`` and raises the betas to
    the power ``c`` so that the effective dynamics match non-lazy training.

    Args:
        params: parameters to optimise.
        lr: learning rate (0.0025 in StyleGAN2-ADA).
        betas: Adam betas, (0.0, 0.99). Floats (torch rejects the integer 0).
        eps: Adam epsilon.
        reg_interval: the lazy-regularisation interval (16 for D's R1, 4 for G's path length), or None.
    """
    betas = tuple(float(b) for b in betas)
    if reg_interval is not None and reg_interval > 0:
        ratio = reg_interval / (reg_interval + 1)
        lr = lr * ratio
        betas = tuple(b**ratio for b in betas)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)  # type: ignore[arg-type]


def auto_r1_gamma(resolution: int, batch_size: int) -> float:
    """StyleGAN2-ADA's heuristic R1 weight ``0.0002 * resolution^2 / batch_size``."""
    return 0.0002 * resolution**2 / batch_size


class StyleGAN2Trainer(KimgTrainer):
    """StyleGAN2-ADA trainer built on MONAI's ``Trainer`` (ignite ``Engine``).

    Args:
        device: device to train on; mixed precision (bfloat16 autocast) applies only on CUDA.
        max_epochs: passes over ``train_data_loader`` (training also stops at ``total_kimg`` if given).
        train_data_loader: yields batches of images in [-1, 1], shape [B, C, R, R]: dicts (``image_key``),
            tensors, or tuples whose first element is the images.
        generator: the :class:`StyleGAN2Generator` to train.
        discriminator: the :class:`StyleGAN2Discriminator` to train.
        g_optimizer: optimiser of G (see :func:`stylegan2_adam` with ``reg_interval=pl_interval``).
        d_optimizer: optimiser of D (see :func:`stylegan2_adam` with ``reg_interval=r1_interval``).
        generator_ema: the exponential moving average of G; a deep copy of G is made when None.
        augment_pipe: ADA pipeline applied to every image D sees; a default one is made when None.
        ada_mode: ``"adaptive"``, ``"fixed"`` (keep the pipe's ``p``) or ``"off"``.
        ada_target: target of ``r_t`` (0.6).
        ada_interval: D steps between ``p`` adjustments (4).
        ada_kimg: thousands of images for ``p`` to go from 0 to 1 (500).
        r1_gamma: R1 weight; None picks :func:`auto_r1_gamma` from the first batch; 0 disables R1.
        r1_interval: lazy R1 every this many D steps (16).
        pl_weight: path-length weight (2); 0 disables it.
        pl_interval: lazy path length every this many G steps (4).
        pl_batch_shrink: the path-length batch is the batch size divided by this (2).
        pl_decay: decay of the running mean path length (0.01).
        style_mixing_prob: probability of style mixing per batch (0.9).
        ema_kimg: half-life of the EMA of G in thousands of images; None gives ``batch_size * 10 / 32``.
        ema_rampup: ramp-up of the EMA half-life as a fraction of images seen (0.05); None disables it.
        total_kimg: stop after this many thousand real images (None: run ``max_epochs``).
        max_seconds: wall-clock budget of this run (see :class:`KimgTrainer`; None: no limit).
        image_key: key of the images when batches are dicts.
        amp: bfloat16 autocast for the main G and D passes, on CUDA and on CPUs with native bfloat16 kernels
            (regularisation passes stay in float32; see :class:`KimgTrainer`).
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: MONAI ``prepare_batch`` used for dict batches.
        train_handlers: MONAI/ignite handlers (objects with ``attach(engine)``).
        event_names: extra ignite events to register.
        to_kwargs: extra arguments of ``Tensor.to`` when moving batches.
        distributed: data-parallel training over the ranks of the ``torch.distributed`` process group (None: when
            one is initialised with more than one rank). G, D, G_ema, the augmentation pipe and the path-length
            mean start from rank 0's; batch sizes (``ema_kimg``, the automatic ``r1_gamma``) are global ones.
        channels_last: G, G_ema, D and the batches in the channels-last layout (see :class:`KimgTrainer`).

    Raises:
        ValueError: on mismatched G and D, an empty data loader, and (at the first iteration) images whose
            channels or size do not match G, or that hold NaN or inf.
        NonFiniteLossError: when a loss or gradient turns NaN or inf; raised before the optimiser step.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        generator: StyleGAN2Generator,
        discriminator: StyleGAN2Discriminator,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        generator_ema: StyleGAN2Generator | None = None,
        augment_pipe: AdaptiveAugmentPipe | None = None,
        ada_mode: str = "adaptive",
        ada_target: float = 0.6,
        ada_interval: int = 4,
        ada_kimg: float = 500.0,
        r1_gamma: float | None = None,
        r1_interval: int = 16,
        pl_weight: float = 2.0,
        pl_interval: int = 4,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        style_mixing_prob: float = 0.9,
        ema_kimg: float | None = None,
        ema_rampup: float | None = 0.05,
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
        self._check_models(generator, discriminator)
        if r1_interval < 1 or pl_interval < 1 or pl_batch_shrink < 1:
            raise ValueError("r1_interval, pl_interval and pl_batch_shrink must be >= 1.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            img_channels=generator.img_channels,
            resolution=generator.resolution,
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
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = copy.deepcopy(generator) if generator_ema is None else generator_ema
        self.generator_ema.eval().requires_grad_(False)
        self._set_memory_format(self.generator, self.generator_ema, self.discriminator)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.augment_pipe = (AdaptiveAugmentPipe() if augment_pipe is None else augment_pipe).to(self.state.device)
        self.ada = AdaptiveAugmentController(
            self.augment_pipe,
            mode=ada_mode,
            target=ada_target,
            interval=ada_interval,
            speed_kimg=ada_kimg,
            distributed=self.distributed,
        )
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.pl_weight, self.pl_interval, self.pl_batch_shrink = pl_weight, pl_interval, pl_batch_shrink
        self.pl_penalty = PathLengthPenalty(decay=pl_decay).to(self.state.device)
        self.style_mixing_prob = style_mixing_prob
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.d_steps = 0
        self.g_steps = 0
        self._pl_updated = False
        self._last: dict[str, float] = {"reg/r1": float("nan"), "reg/pl": float("nan"), "ada/r_t": float("nan")}

    @staticmethod
    def _check_models(g: nn.Module, d: nn.Module) -> None:
        for name in ("resolution", "img_channels"):
            gv, dv = getattr(g, name, None), getattr(d, name, None)
            if gv is None or dv is None:
                raise TypeError(f"generator and discriminator need a '{name}' attribute (StyleGAN2 networks).")
            if gv != dv:
                raise ValueError(f"generator {name}={gv} does not match discriminator {name}={dv}.")

    # ------------------------------------------------------------------ data parallelism
    def _resolve_distributed(self) -> None:
        super()._resolve_distributed()
        if hasattr(self, "ada"):
            self.ada.distributed = self.distributed

    def _replicated_modules(self) -> dict[str, nn.Module]:
        return {
            "generator": self.generator,
            "generator_ema": self.generator_ema,
            "discriminator": self.discriminator,
            "augment_pipe": self.augment_pipe,
            "pl_penalty": self.pl_penalty,
        }

    def _replicated_counters(self) -> dict[str, int]:
        return {**super()._replicated_counters(), "d_steps": self.d_steps, "g_steps": self.g_steps}

    def _running_statistics(self) -> list[torch.Tensor]:
        """G's tracked ``w_avg`` and, when this iteration updated it, the path-length mean: exponential moving
        averages of per-batch means."""
        return [self.generator.mapping.w_avg] + ([self.pl_penalty.pl_mean] if self._pl_updated else [])

    # ------------------------------------------------------------------ the training step
    def r1_of_reals(self, real: torch.Tensor) -> torch.Tensor:
        """R1 penalty per image ``[B]``: the squared gradient norm of D at the augmented reals ``A(x)``, the images
        D sees in its main step. StyleGAN2-ADA differentiates ``x -> D(A(x))`` at the un-augmented ``x`` instead,
        through the augmentation; that needs the second derivative of ``grid_sample``, which torch's CUDA kernel
        does not have (NVlabs ship their own grid-sample op for it). For the flips, 90-degree turns and
        translations the two penalties are equal (those warps are isometries); scaling and contrast change the
        gradient by their factor, so this R1 is the reference's with the augmentation's Jacobian left out."""
        real_aug = self.augment_pipe(real.detach()).detach().float().requires_grad_(True)
        return r1_penalty(self.discriminator(real_aug), real_aug)

    def _mapping(self, z: torch.Tensor, update_w_avg: bool = False) -> torch.Tensor:
        """W+ codes for ``z``, with style mixing: with probability ``style_mixing_prob`` the layers from a random
        cutoff on take the w of a second latent."""
        g = self.generator
        ws = g.mapping(z, update_w_avg=update_w_avg)
        if self.style_mixing_prob > 0 and g.num_ws > 1:
            if float(torch.rand(())) < self.style_mixing_prob:
                cutoff = int(torch.randint(1, g.num_ws, ()))
                ws2 = g.mapping(torch.randn_like(z))
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _update_ema(self, batch_size: int) -> None:
        ema_nimg = (batch_size * 10 / 32 if self.ema_kimg is None else self.ema_kimg) * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * self.ema_rampup)
        beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
                b_ema.copy_(b)

    def _iteration(self, engine: KimgTrainer, batchdata: Any) -> dict[str, float]:
        real = self._get_real_images(batchdata)
        batch = real.shape[0]
        g, d, aug = self.generator, self.discriminator, self.augment_pipe
        z_dim = g.z_dim
        if self.r1_gamma is None:
            self.r1_gamma = auto_r1_gamma(g.resolution, batch * self.world_size)
        g.train()
        d.train()
        self._pl_updated = False

        # 1. D main step
        d.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = g.synthesis(self._mapping(torch.randn(batch, z_dim, device=real.device)))
        with self._autocast():
            real_logits = d(aug(real))
            fake_logits = d(aug(fake.float()))
        d_loss = discriminator_logistic_loss(real_logits, fake_logits)
        real_mean, fake_mean = real_logits.detach().float().mean(), fake_logits.detach().float().mean()
        size = torch.tensor(float(batch), device=real.device)
        d_stats = self._backward("discriminator", d_loss, self.d_optimizer, d, real_mean, fake_mean, size)
        self.d_optimizer.step()
        self.ada.accumulate(real_logits)
        self.d_steps += 1

        # 2. lazy R1 (float32)
        if self.r1_gamma > 0 and self.d_steps % self.r1_interval == 0:
            penalty = self.r1_of_reals(real)
            r1_loss = penalty.mean() * (self.r1_gamma / 2) * self.r1_interval
            r1_stats = self._backward("R1", r1_loss, self.d_optimizer, d, penalty.detach().mean())
            self.d_optimizer.step()
            self._last["reg/r1"] = float(r1_stats[1])

        # 3. G main step
        d.requires_grad_(False)
        with self._autocast():
            ws = self._mapping(torch.randn(batch, z_dim, device=real.device), update_w_avg=True)
            gen_logits = d(aug(g.synthesis(ws)))
        g_loss = generator_logistic_loss(gen_logits)
        g_stats = self._backward("generator", g_loss, self.g_optimizer, g)
        self.g_optimizer.step()
        self.g_steps += 1

        # 4. lazy path-length regularisation (float32)
        if self.pl_weight > 0 and self.g_steps % self.pl_interval == 0:
            pl_batch = max(1, batch // self.pl_batch_shrink)
            ws = self._mapping(torch.randn(pl_batch, z_dim, device=real.device))
            penalty = self.pl_penalty(g.synthesis(ws), ws)
            pl_loss = penalty.mean() * self.pl_weight * self.pl_interval
            pl_stats = self._backward("path-length", pl_loss, self.g_optimizer, g, penalty.detach().mean())
            self.g_optimizer.step()
            self._last["reg/pl"] = float(pl_stats[1])
            self._pl_updated = True
        d.requires_grad_(True)

        # 5. EMA of G, 6. ADA
        self._sync_running_statistics()
        global_batch = self._global_batch(batch, d_stats[3])
        self.nimg += global_batch
        self._update_ema(global_batch)
        if self.ada.step():
            self._last["ada/r_t"] = float(self.ada.rt)
        return {
            "loss/G": float(g_stats[0]),
            "loss/D": float(d_stats[0]),
            "D/real_logit": float(d_stats[1]),
            "D/fake_logit": float(d_stats[2]),
            "ada/p": self.ada.p,
            "progress/kimg": self.kimg,
            **self._last,
        }

    # ------------------------------------------------------------------ checkpointing
    def checkpoint_dict(self) -> dict[str, Any]:
        """The objects a checkpoint must hold to resume exactly (for ``TrainingCheckpointHandler`` or MONAI's
        ``CheckpointSaver``/``CheckpointLoader``): G, G_ema, D, both optimisers and this trainer's state."""
        return {
            **super().checkpoint_dict(),
            "generator": self.generator,
            "generator_ema": self.generator_ema,
            "discriminator": self.discriminator,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
        }

    def _extra_state(self) -> dict[str, Any]:
        """Step counters, ADA's ``p`` and statistics, the path-length mean and the resolved R1 weight."""
        return {
            "d_steps": self.d_steps,
            "g_steps": self.g_steps,
            "r1_gamma": self.r1_gamma,
            "ada": self.ada.state_dict(),
            "pl_mean": self.pl_penalty.pl_mean.detach().cpu().clone(),
            "last": dict(self._last),
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.d_steps, self.g_steps = int(extra["d_steps"]), int(extra["g_steps"])
        self.r1_gamma = extra["r1_gamma"]
        self.ada.load_state_dict(extra["ada"])
        self.pl_penalty.pl_mean.copy_(extra["pl_mean"])
        self._last.update(extra.get("last", {}))
