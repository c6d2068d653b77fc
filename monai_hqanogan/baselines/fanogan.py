"""f-AnoGAN: a WGAN-GP trained on normal images plus an izi_f encoder; the score is the izi_f reconstruction error.

Schlegl, Seeböck, Waldstein, Langs, Schmidt-Erfurth, "f-AnoGAN: Fast unsupervised anomaly detection with generative
adversarial networks", Medical Image Analysis 54, 2019, https://doi.org/10.1016/j.media.2019.01.010.

Training has two stages. Stage 1 trains a Wasserstein GAN with gradient penalty (Gulrajani, Ahmed, Arjovsky,
Dumoulin, Courville, "Improved training of Wasserstein GANs", NeurIPS 2017, https://arxiv.org/abs/1704.00028) on
normal images. Stage 2 freezes the generator G and the critic D and trains an encoder E with the izi_f loss

    L(x) = 1/n ||x - G(E(x))||^2 + kappa / n_d ||f(x) - f(G(E(x)))||^2,

where n is the number of pixels, f() the critic's last intermediate features and n_d their dimension. The anomaly
score of an image is the same quantity, A(x) = A_R(x) + kappa * A_D(x), with kappa = 1 in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from monai_hqanogan.losses.wgan_losses import wgan_gradient_penalty
from monai_hqanogan.networks.nets.fanogan import FAnoGANCritic, FAnoGANEncoder, FAnoGANGenerator
from monai_hqanogan.utils.validation import check_positive_int, check_positive_number, check_time_limit

from .base import FitClock, FitStage, ImageBatches, ReconstructionBaseline

__all__ = [
    "FAnoGANGenerator",
    "FAnoGANCritic",
    "FAnoGANEncoder",
    "FAnoGANBaseline",
    "wgan_gradient_penalty",
]

_PRIORS = ("uniform", "normal")


class FAnoGANBaseline(ReconstructionBaseline):
    """f-AnoGAN: WGAN-GP generator and critic trained on normal images, izi_f encoder, score ``A = A_R + kappa A_D``.

    Schlegl, Seeböck, Waldstein, Langs, Schmidt-Erfurth, "f-AnoGAN: Fast unsupervised anomaly detection with
    generative adversarial networks", Medical Image Analysis 54, 2019, https://doi.org/10.1016/j.media.2019.01.010.

    :meth:`fit` trains from scratch in two stages: a WGAN-GP (:class:`FAnoGANGenerator` ``self.generator``,
    :class:`FAnoGANCritic` ``self.critic``), then, with both frozen, the izi_f encoder (:class:`FAnoGANEncoder`
    ``self.encoder``). For an image x with reconstruction x' = G(E(x)), n pixels and critic features f() of size n_d,

    - ``A_R(x) = 1/n ||x - x'||^2`` (the image residual),
    - ``A_D(x) = 1/n_d ||f(x) - f(x')||^2`` (the critic-feature residual),
    - the score is ``A(x) = A_R(x) + kappa * A_D(x)``, the izi_f loss of the encoder, per image (:meth:`score`,
      with the two terms from :meth:`score_components`); the anomaly map is ``|x - x'|`` averaged over channels.

    The latent prior is ``z_prior="uniform"`` (U[-1, 1]^z_dim, encoder output through tanh, the default) or
    ``"normal"`` (N(0, I), linear encoder output); :meth:`sample_latent` draws from it.

    Hooks for latent-optimisation scorers (AnoGAN, Schlegl et al. 2017, which searches z for each image with G and
    D fixed), all differentiable and leaving the train/eval mode alone (a fitted baseline is in eval mode, so G's
    BatchNorm uses its running statistics; call ``.eval()`` after ``.train()``):

    - ``z_dim`` (attribute) and :meth:`generate` ``(z [B, z_dim]) -> images [B, C, R, R]`` in [-1, 1]: the
      generator; ``z_prior`` and :meth:`sample_latent` give the prior to start from (and, for ``"uniform"``, the
      box [-1, 1] to clamp to);
    - :meth:`discriminator_features` ``(x [B, C, R, R]) -> [B, n_d]``: the critic's features f(x), per image.

    Args:
        image_size: height and width of the (square) images, a power of two from 8 to 1024.
        in_channels: image channels.
        z_dim: latent dimension (128 in the paper).
        base_channels: channels of the finest level of all three networks.
        max_channels: channel cap of their coarser levels.
        kappa: weight of the critic-feature residual in the encoder loss and the score (1 in the paper).
        z_prior: ``"uniform"`` or ``"normal"``.
        critic_norm: ``"layer"`` or ``"none"`` for the critic and the encoder (never BatchNorm: see
            :class:`FAnoGANCritic`).
    """

    name = "f-AnoGAN"

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        z_dim: int = 128,
        base_channels: int = 32,
        max_channels: int = 256,
        kappa: float = 1.0,
        z_prior: str = "uniform",
        critic_norm: str = "layer",
    ) -> None:
        super().__init__()
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}.")
        if z_prior not in _PRIORS:
            raise ValueError(f"z_prior must be one of {_PRIORS}, got {z_prior!r}.")
        self.image_size = image_size
        self.in_channels = in_channels
        self.z_dim = z_dim
        self.kappa = float(kappa)
        self.z_prior = z_prior
        self.generator = FAnoGANGenerator(image_size, in_channels, z_dim, base_channels, max_channels)
        self.critic = FAnoGANCritic(image_size, in_channels, base_channels, max_channels, norm=critic_norm)
        self.encoder = FAnoGANEncoder(
            image_size,
            in_channels,
            z_dim,
            base_channels,
            max_channels,
            norm=critic_norm,
            output="tanh" if z_prior == "uniform" else "linear",
        )
        self.history: dict[str, list[dict[str, float]]] = {"gan": [], "encoder": []}
        self.fit_info: dict[str, Any] = {}

    # -----------------------------------------------------------------------------------------------------------------
    # the networks and the hooks

    def sample_latent(
        self, num: int, generator: torch.Generator | None = None, device: str | torch.device | None = None
    ) -> Tensor:
        """``num`` codes ``[num, z_dim]`` from the latent prior, drawn on the CPU (``generator`` or the global RNG)."""
        shape = (num, self.z_dim)
        z = (
            torch.rand(shape, generator=generator) * 2 - 1
            if self.z_prior == "uniform"
            else torch.randn(shape, generator=generator)
        )
        return z.to(self._device() if device is None else device)

    def generate(self, z: Tensor) -> Tensor:
        """G(z): codes ``[B, z_dim]`` -> images ``[B, C, R, R]`` in [-1, 1], differentiable in ``z``."""
        return self.generator(z)

    def discriminator_features(self, x: Tensor) -> Tensor:
        """f(x): the critic's last intermediate features ``[B, n_d]``, per image, differentiable in ``x``."""
        return self.critic.features(x)

    def encode(self, x: Tensor) -> Tensor:
        """E(x): images ``[B, C, R, R]`` -> codes ``[B, z_dim]``, differentiable."""
        return self.encoder(x)

    def reconstruct_batch(self, x: Tensor) -> Tensor:
        """G(E(x)) of one batch on the model's device."""
        return self.generator(self.encoder(x))

    def _residuals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, A_R per image, A_D per image) of one batch on the model's device."""
        rec = self.reconstruct_batch(x)
        residual = (x - rec).square().flatten(1).mean(dim=1)
        feature = (self.critic.features(x) - self.critic.features(rec)).square().mean(dim=1)
        return rec, residual, feature

    @torch.no_grad()
    def score_components(self, images: ImageBatches, batch_size: int = 256) -> dict[str, Tensor]:
        """The terms of the score per image, ``[N]`` each on the CPU.

        Returns:
            ``{"residual": A_R, "feature": A_D, "score": A_R + kappa * A_D}``.
        """
        residuals, features = [], []
        for x in self._eval_batches(images, batch_size):
            _, residual, feature = self._residuals(x)
            residuals.append(residual.cpu())
            features.append(feature.cpu())
        residual, feature = torch.cat(residuals), torch.cat(features)
        return {"residual": residual, "feature": feature, "score": residual + self.kappa * feature}

    def score(self, images: ImageBatches, batch_size: int = 256) -> Tensor:
        """f-AnoGAN's anomaly score ``A(x) = A_R(x) + kappa * A_D(x)`` per image, ``[N]`` on the CPU."""
        return self.score_components(images, batch_size)["score"]

    # -----------------------------------------------------------------------------------------------------------------
    # training

    def _real_batches(self, images: ImageBatches, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """An endless stream of training batches: reshuffled epochs of a tensor, or passes over an iterable."""
        if isinstance(images, torch.Tensor):
            size = min(batch_size, images.shape[0])
            while True:
                for idx in torch.randperm(images.shape[0], generator=generator).split(size):
                    if idx.numel() == size:  # the incomplete tail of an epoch is dropped
                        yield images[idx]
        while True:  # iterate_image_batches raises when a pass yields nothing (a used-up one-shot iterator)
            yield from self._batches(images, batch_size)

    def fit(
        self,
        images: ImageBatches,
        gan_iterations: int = 2000,
        encoder_iterations: int = 1000,
        time_limit_s: float | None = None,
        batch_size: int = 64,
        lr: float = 1e-4,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        device: str | torch.device | None = None,
        progress: bool = True,
        seed: int = 0,
        gan_time_fraction: float = 0.75,
        encoder_lr: float | None = None,
    ) -> FAnoGANBaseline:
        """Train from scratch on normal images: WGAN-GP (stage 1), then the izi_f encoder with G and D frozen (stage 2).

        Stage 1 (Gulrajani et al. 2017, Algorithm 1): each GAN iteration takes ``n_critic`` critic steps, each on a
        new batch of real images and as many generated ones, with the loss ``D(fake) - D(real) + gp_weight * GP``,
        then one generator step of ``batch_size`` codes with the loss ``-D(G(z))``; Adam with betas (0.0, 0.9) for
        both. Stage 2: the izi_f loss (module docstring) on batches of real images, Adam with betas (0.9, 0.999)
        and ``encoder_lr``. The losses per iteration are in ``self.history["gan"]`` (``critic_loss``,
        ``wasserstein`` = mean D(real) - mean D(fake) of the last critic step, ``gradient_penalty``,
        ``generator_loss``) and ``self.history["encoder"]`` (``loss``, ``residual``, ``feature``); the totals in
        ``self.fit_info``.

        Time limit: stage 1 stops after the first iteration that ends past ``gan_time_fraction * time_limit_s``
        seconds from the start of the fit, stage 2 after the first iteration that ends past ``time_limit_s`` (so
        it gets what stage 1 left unused). Each stage runs at least one iteration, so the model is always usable.

        Determinism: the weights are re-initialised from ``seed``; the order of a tensor input, the codes z and the
        interpolation weights of the penalty come from one private CPU generator seeded from it, so a fit on the
        CPU is deterministic for a seed and the global RNG is not touched. An iterable of batches (a DataLoader) is
        iterated as it is, again and again as the iterations need: it must be re-iterable. The model is left in
        eval mode on ``device``.

        Args:
            images: normal images [N, C, R, R] in [-1, 1] (N >= 2), or an iterable of batches.
            gan_iterations: generator steps of stage 1 (each after ``n_critic`` critic steps).
            encoder_iterations: encoder steps of stage 2.
            time_limit_s: the budget of both stages together, in seconds (None: no limit).
            batch_size: images per step; a tensor input with fewer images uses them all in every step.
            lr: Adam learning rate of stage 1 (1e-4 as in Gulrajani et al.).
            n_critic: critic steps per generator step.
            gp_weight: weight of the gradient penalty (lambda = 10 in Gulrajani et al.).
            device: where to train (None: where the model is).
            progress: show one tqdm progress bar per stage.
            seed: seed of the initial weights, the data order and the random draws.
            gan_time_fraction: the share of ``time_limit_s`` given to stage 1, in (0, 1).
            encoder_lr: Adam learning rate of stage 2 (None: ``lr``).

        Raises:
            ValueError: bad arguments, empty input, wrong shape or channels, non-finite values, fewer than 2 images.
            FloatingPointError: a loss became NaN or inf (training diverged), checked before each optimiser step;
                the model stays unfitted.
        """
        for arg, value in (
            ("gan_iterations", gan_iterations),
            ("encoder_iterations", encoder_iterations),
            ("n_critic", n_critic),
        ):
            check_positive_int(arg, value)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2 (the generator's BatchNorm), got {batch_size!r}.")
        check_time_limit("time_limit_s", time_limit_s)
        encoder_lr = lr if encoder_lr is None else encoder_lr
        for arg, value in (("lr", lr), ("encoder_lr", encoder_lr)):
            check_positive_number(arg, value)
        if not (math.isfinite(gp_weight) and gp_weight >= 0):
            raise ValueError(f"gp_weight must be a finite number >= 0, got {gp_weight!r}.")
        if not 0 < gan_time_fraction < 1:
            raise ValueError(f"gan_time_fraction must lie in (0, 1), got {gan_time_fraction!r}.")
        images, device = self._start_fit(images, device, seed)
        rng = torch.Generator().manual_seed(seed)
        clock = FitClock(self.name, time_limit_s, progress)
        hint = "Lower lr (now {}) or check that the images are scaled to [-1, 1].".format
        try:
            with clock.stage("WGAN-GP", gan_iterations, "it", clock.deadline(gan_time_fraction), hint(lr)) as gan:
                self._train_gan(gan, images, gan_iterations, batch_size, lr, n_critic, gp_weight, device, rng)
            gan_seconds = clock.seconds
            with clock.stage("encoder (izi_f)", encoder_iterations, "it", clock.deadline(), hint(encoder_lr)) as enc:
                self._train_encoder(enc, images, encoder_iterations, batch_size, encoder_lr, device, rng)
        finally:
            self.requires_grad_(True)
            self.eval()
        self.history = {"gan": gan.history, "encoder": enc.history}
        seconds = clock.seconds
        self.fit_info = clock.info(
            device, seed, seconds, gan_iterations=len(gan.history), critic_steps=len(gan.history) * n_critic,
            encoder_iterations=len(enc.history), gan_seconds=gan_seconds, encoder_seconds=seconds - gan_seconds,
            gan_stopped_by=gan.stopped_by, encoder_stopped_by=enc.stopped_by,
            stopped_by="time_limit" if "time_limit" in (gan.stopped_by, enc.stopped_by) else "iterations",
            final_wasserstein=gan.history[-1]["wasserstein"], final_encoder_loss=enc.history[-1]["loss"],
        )  # fmt: skip
        self.fitted.fill_(True)
        return self

    def _train_gan(
        self,
        stage: FitStage,
        images: ImageBatches,
        iterations: int,
        batch_size: int,
        lr: float,
        n_critic: int,
        gp_weight: float,
        device: torch.device,
        rng: torch.Generator,
    ) -> None:
        """Stage 1, WGAN-GP, recorded in ``stage``."""
        g, d = self.generator, self.critic
        opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.0, 0.9))
        stream = self._real_batches(images, batch_size, rng)
        g.train()
        d.train()
        try:
            for it in range(1, iterations + 1):
                d.requires_grad_(True)
                for _ in range(n_critic):
                    real = next(stream).to(device, torch.float32)
                    with torch.no_grad():
                        fake = g(self.sample_latent(real.shape[0], rng, device))
                    d_real, d_fake = d(real).mean(), d(fake).mean()
                    penalty = wgan_gradient_penalty(d, real, fake, rng)
                    critic_loss = d_fake - d_real + gp_weight * penalty
                    stage.check_finite(critic_loss, "f-AnoGAN critic loss", f"WGAN-GP iteration {it}")
                    opt_d.zero_grad(set_to_none=True)
                    critic_loss.backward()
                    opt_d.step()
                d.requires_grad_(False)  # the generator step needs gradients through D, not of its weights
                generator_loss = -d(g(self.sample_latent(batch_size, rng, device))).mean()
                stage.check_finite(generator_loss, "f-AnoGAN generator loss", f"WGAN-GP iteration {it}")
                opt_g.zero_grad(set_to_none=True)
                generator_loss.backward()
                opt_g.step()
                wasserstein, gp = (d_real - d_fake).item(), penalty.item()
                record = {"iteration": it, "critic_loss": critic_loss.item(), "wasserstein": wasserstein,
                          "gradient_penalty": gp, "generator_loss": generator_loss.item()}  # fmt: skip
                stage.step(record, W=f"{wasserstein:.4g}", gp=f"{gp:.3g}")
                if stage.out_of_time(finished=it == iterations):
                    break
        finally:
            d.requires_grad_(True)

    def _train_encoder(
        self,
        stage: FitStage,
        images: ImageBatches,
        iterations: int,
        batch_size: int,
        lr: float,
        device: torch.device,
        rng: torch.Generator,
    ) -> None:
        """Stage 2, izi_f with G and D frozen (eval mode, no weight gradients), recorded in ``stage``."""
        g, d, e = self.generator, self.critic, self.encoder
        g.eval().requires_grad_(False)
        d.eval().requires_grad_(False)
        e.train()
        optimizer = torch.optim.Adam(e.parameters(), lr=lr)
        stream = self._real_batches(images, batch_size, rng)
        for it in range(1, iterations + 1):
            x = next(stream).to(device, torch.float32)
            rec = g(e(x))
            residual = F.mse_loss(rec, x)  # mean over the batch of 1/n ||x - x'||^2
            feature = F.mse_loss(d.features(rec), d.features(x))  # ... and of 1/n_d ||f(x) - f(x')||^2
            loss = residual + self.kappa * feature
            stage.check_finite(loss, "f-AnoGAN encoder (izi_f) loss", f"encoder iteration {it}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stage.step({"iteration": it, "loss": loss.item(), "residual": residual.item(), "feature": feature.item()},
                       loss=f"{loss.item():.4g}")  # fmt: skip
            if stage.out_of_time(finished=it == iterations):
                break

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, fitted={self.is_fitted}, image_size={self.image_size}, z_dim={self.z_dim}, "
            f"kappa={self.kappa}, z_prior={self.z_prior!r}"
        )
