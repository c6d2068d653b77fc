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
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from monai_hqanogan.utils.validation import check_positive_int, check_positive_number, check_time_limit

from .base import ImageBatches, ReconstructionBaseline, as_image_batch

__all__ = [
    "FAnoGANGenerator",
    "FAnoGANCritic",
    "FAnoGANEncoder",
    "FAnoGANBaseline",
    "wgan_gradient_penalty",
]

_NORMS = ("layer", "none")
_PRIORS = ("uniform", "normal")


def _check_architecture(image_size: Any, in_channels: Any, base_channels: Any, max_channels: Any) -> int:
    """Validate the shared architecture arguments; return the number of stride-2 levels (``log2(image_size) - 2``)."""
    for name, value in (
        ("image_size", image_size),
        ("in_channels", in_channels),
        ("base_channels", base_channels),
        ("max_channels", max_channels),
    ):
        check_positive_int(name, value)
    if image_size < 8 or image_size > 1024 or image_size & (image_size - 1):
        raise ValueError(
            f"image_size must be a power of two from 8 to 1024 (the networks go from 4 x 4 to image_size in stride-2 "
            f"steps), got {image_size}."
        )
    if base_channels > max_channels:
        raise ValueError(f"base_channels ({base_channels}) must not exceed max_channels ({max_channels}).")
    return int(math.log2(image_size)) - 2


def _level_channels(levels: int, base_channels: int, max_channels: int) -> list[int]:
    """Channels of the stride-2 levels from the finest (``image_size / 2``) to the coarsest (4 x 4)."""
    return [min(base_channels * 2**i, max_channels) for i in range(levels)]


def _downsampling_stack(
    in_channels: int, channels: list[int], norm: str, negative_slope: float
) -> tuple[nn.Sequential, int]:
    """4x4 stride-2 convolutions with LeakyReLU; per-image LayerNorm on all but the first (norm="layer")."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none" or i == 0))
        if norm == "layer" and i > 0:
            # GroupNorm with one group = LayerNorm over (C, H, W) with a per-channel affine; it is per image, so
            # the gradient penalty (computed per interpolate) and the features stay independent of the batch
            layers.append(nn.GroupNorm(1, c_out))
        layers.append(nn.LeakyReLU(negative_slope))
        c_in = c_out
    return nn.Sequential(*layers), c_in * 4 * 4


class FAnoGANGenerator(nn.Module):
    """DCGAN-style generator of the f-AnoGAN WGAN-GP: latent codes ``[B, z_dim]`` -> images ``[B, C, R, R]`` in [-1, 1].

    Radford, Metz, Chintala, "Unsupervised representation learning with deep convolutional generative adversarial
    networks", ICLR 2016, https://arxiv.org/abs/1511.06434 (the layout), as trained with a gradient penalty by
    Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028, and used by f-AnoGAN
    (https://doi.org/10.1016/j.media.2019.01.010).

    A linear layer maps z to a 4 x 4 map with ``min(base_channels * 2**(L-1), max_channels)`` channels, followed by
    BatchNorm and ReLU; then ``L - 1`` blocks of a 4x4 stride-2 transposed convolution, BatchNorm and ReLU halve the
    channels (never below ``base_channels``) while doubling the size, and a last stride-2 transposed convolution to
    ``out_channels`` with a tanh gives the image. ``L = log2(image_size) - 2``, so 64 px with 32 / 256 channels runs
    through 256, 128, 64 and 32 channels at 4, 8, 16 and 32 px (the mirror image of :class:`FAnoGANCritic`).

    Args:
        image_size: output height and width, a power of two from 8 to 1024.
        out_channels: image channels.
        z_dim: latent dimension.
        base_channels: channels of the finest hidden level (``image_size / 2``).
        max_channels: channel cap of the coarser levels.
    """

    def __init__(
        self,
        image_size: int = 64,
        out_channels: int = 1,
        z_dim: int = 128,
        base_channels: int = 32,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        levels = _check_architecture(image_size, out_channels, base_channels, max_channels)
        check_positive_int("z_dim", z_dim)
        self.image_size = image_size
        self.out_channels = out_channels
        self.z_dim = z_dim
        channels = _level_channels(levels, base_channels, max_channels)[::-1]  # coarsest (4 x 4) first
        self._start_shape = (channels[0], 4, 4)
        self.project = nn.Linear(z_dim, channels[0] * 16, bias=False)
        self.project_act = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        blocks += [nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {tuple(z.shape)}.")
        h = self.project(z).view(z.shape[0], *self._start_shape)
        return self.blocks(self.project_act(h))


class FAnoGANCritic(nn.Module):
    """WGAN-GP critic of f-AnoGAN: images ``[B, C, R, R]`` -> unbounded scores ``[B]``; :meth:`features` gives f(x).

    Gulrajani et al., "Improved training of Wasserstein GANs", NeurIPS 2017, https://arxiv.org/abs/1704.00028;
    f-AnoGAN, https://doi.org/10.1016/j.media.2019.01.010.

    ``L = log2(image_size) - 2`` blocks of a 4x4 stride-2 convolution and LeakyReLU bring the image down to 4 x 4,
    with ``base_channels`` doubling per level up to ``max_channels``; a linear layer maps the flattened 4 x 4 map
    to one score. The gradient penalty is defined per image, so the critic must not mix images of a batch: no
    BatchNorm; ``norm="layer"`` (default, as Gulrajani et al. recommend) normalises each image's activations over
    (C, H, W) on every block but the first, ``norm="none"`` uses none.

    Args:
        image_size: input height and width, a power of two from 8 to 1024.
        in_channels: image channels.
        base_channels: channels of the first level.
        max_channels: channel cap of the deeper levels.
        norm: ``"layer"`` or ``"none"``.
        negative_slope: slope of the LeakyReLU.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        base_channels: int = 32,
        max_channels: int = 256,
        norm: str = "layer",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        levels = _check_architecture(image_size, in_channels, base_channels, max_channels)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        self.image_size = image_size
        self.in_channels = in_channels
        self.blocks, self.num_features = _downsampling_stack(
            in_channels, _level_channels(levels, base_channels, max_channels), norm, negative_slope
        )
        self.head = nn.Linear(self.num_features, 1)

    def features(self, x: Tensor) -> Tensor:
        """The flattened output of the last convolution block, ``[B, num_features]`` (f(x) of f-AnoGAN)."""
        return self.blocks(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)


class FAnoGANEncoder(nn.Module):
    """The izi_f encoder of f-AnoGAN: images ``[B, C, R, R]`` -> latent codes ``[B, z_dim]``.

    f-AnoGAN, https://doi.org/10.1016/j.media.2019.01.010: the encoder mirrors the critic (the same stride-2
    convolution blocks, see :class:`FAnoGANCritic`) and ends with a linear layer to ``z_dim``. Its output must match
    the generator's latent prior: ``output="tanh"`` bounds the codes to (-1, 1), the support of a uniform prior on
    [-1, 1] (the default of :class:`FAnoGANBaseline`); ``output="linear"`` leaves them unbounded, for a standard
    normal prior.

    Args:
        image_size: input height and width, a power of two from 8 to 1024.
        in_channels: image channels.
        z_dim: latent dimension.
        base_channels: channels of the first level.
        max_channels: channel cap of the deeper levels.
        norm: ``"layer"`` (per-image LayerNorm, so that codes never depend on the batch) or ``"none"``.
        output: ``"tanh"`` or ``"linear"``.
        negative_slope: slope of the LeakyReLU.
    """

    _outputs = ("tanh", "linear")

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        z_dim: int = 128,
        base_channels: int = 32,
        max_channels: int = 256,
        norm: str = "layer",
        output: str = "tanh",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        levels = _check_architecture(image_size, in_channels, base_channels, max_channels)
        check_positive_int("z_dim", z_dim)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        if output not in self._outputs:
            raise ValueError(f"output must be one of {self._outputs}, got {output!r}.")
        self.image_size = image_size
        self.in_channels = in_channels
        self.z_dim = z_dim
        self.output = output
        self.blocks, num_features = _downsampling_stack(
            in_channels, _level_channels(levels, base_channels, max_channels), norm, negative_slope
        )
        self.head = nn.Linear(num_features, z_dim)

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.blocks(x).flatten(1))
        return torch.tanh(z) if self.output == "tanh" else z


def wgan_gradient_penalty(
    critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """The WGAN-GP gradient penalty ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` on random interpolates.

    Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028, Algorithm 1: ``x_hat = eps * real + (1 - eps) * fake``
    with one ``eps ~ U[0, 1]`` per image. The result keeps its graph (``create_graph=True``), so it can be
    back-propagated into the critic's parameters.

    Args:
        critic: maps ``[B, ...]`` to ``[B]`` (or ``[B, 1]``) scores, each depending on its own image only.
        real: real images ``[B, ...]``.
        fake: generated images of the same shape (detached here).
        generator: CPU generator for ``eps`` (None: the global RNG); ``eps`` is drawn on the CPU and then moved, so
            it does not depend on the device.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}.")
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator).to(real.device, real.dtype)
    real, fake = real.detach(), fake.detach()
    interpolates = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
    norm = (grad.flatten(1).square().sum(dim=1) + 1e-12).sqrt()  # the epsilon keeps the norm differentiable at 0
    return (norm - 1).square().mean()


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

    @staticmethod
    def _check_finite(loss: Tensor, what: str, stage: str, iteration: int, lr: float) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the f-AnoGAN {what} became {loss.item()} at {stage} iteration {iteration}: training diverged. "
                f"Lower lr (now {lr}) or check that the images are scaled to [-1, 1]."
            )

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
        if isinstance(images, torch.Tensor):
            images = as_image_batch(images, "images", channels=self.in_channels, size=self.image_size)
            if images.shape[0] < 2:
                raise ValueError(f"fit needs at least 2 images, got {images.shape[0]}.")
        device = torch.device(device) if device is not None else self._device()

        self.fitted.fill_(False)
        self.cpu()
        self.reset_parameters(seed)
        self.to(device)
        rng = torch.Generator().manual_seed(seed)
        self.history = {"gan": [], "encoder": []}
        start = time.perf_counter()
        gan_deadline = None if time_limit_s is None else start + gan_time_fraction * time_limit_s
        deadline = None if time_limit_s is None else start + time_limit_s
        try:
            gan_stop = self._train_gan(
                images, gan_iterations, gan_deadline, batch_size, lr, n_critic, gp_weight, device, progress, rng
            )
            gan_seconds = time.perf_counter() - start
            encoder_stop = self._train_encoder(
                images, encoder_iterations, deadline, batch_size, encoder_lr, device, progress, rng
            )
        finally:
            self.requires_grad_(True)
            self.eval()
        seconds = time.perf_counter() - start
        gan, enc = self.history["gan"], self.history["encoder"]
        self.fit_info = {
            "gan_iterations": len(gan),
            "critic_steps": len(gan) * n_critic,
            "encoder_iterations": len(enc),
            "gan_seconds": gan_seconds,
            "encoder_seconds": seconds - gan_seconds,
            "seconds": seconds,
            "gan_stopped_by": gan_stop,
            "encoder_stopped_by": encoder_stop,
            "stopped_by": "time_limit" if "time_limit" in (gan_stop, encoder_stop) else "iterations",
            "final_wasserstein": gan[-1]["wasserstein"],
            "final_encoder_loss": enc[-1]["loss"],
            "device": str(device),
            "seed": seed,
        }
        self.fitted.fill_(True)
        return self

    def _train_gan(
        self,
        images: ImageBatches,
        iterations: int,
        deadline: float | None,
        batch_size: int,
        lr: float,
        n_critic: int,
        gp_weight: float,
        device: torch.device,
        progress: bool,
        rng: torch.Generator,
    ) -> str:
        """Stage 1, WGAN-GP; returns what stopped it (``"iterations"`` or ``"time_limit"``)."""
        g, d = self.generator, self.critic
        opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.0, 0.9))
        stream = self._real_batches(images, batch_size, rng)
        g.train()
        d.train()
        stopped_by = "iterations"
        bar = tqdm(total=iterations, desc=f"{self.name} WGAN-GP", unit="it", disable=not progress, leave=False)
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
                    self._check_finite(critic_loss, "critic loss", "WGAN-GP", it, lr)
                    opt_d.zero_grad(set_to_none=True)
                    critic_loss.backward()
                    opt_d.step()
                d.requires_grad_(False)  # the generator step needs gradients through D, not of its weights
                generator_loss = -d(g(self.sample_latent(batch_size, rng, device))).mean()
                self._check_finite(generator_loss, "generator loss", "WGAN-GP", it, lr)
                opt_g.zero_grad(set_to_none=True)
                generator_loss.backward()
                opt_g.step()
                record = {
                    "iteration": it,
                    "critic_loss": critic_loss.item(),
                    "wasserstein": (d_real - d_fake).item(),
                    "gradient_penalty": penalty.item(),
                    "generator_loss": generator_loss.item(),
                }
                self.history["gan"].append(record)
                bar.update(1)
                if it % 10 == 1:
                    bar.set_postfix(W=f"{record['wasserstein']:.4g}", gp=f"{record['gradient_penalty']:.3g}")
                if deadline is not None and time.perf_counter() >= deadline and it < iterations:
                    stopped_by = "time_limit"
                    break
        finally:
            bar.close()
            d.requires_grad_(True)
        return stopped_by

    def _train_encoder(
        self,
        images: ImageBatches,
        iterations: int,
        deadline: float | None,
        batch_size: int,
        lr: float,
        device: torch.device,
        progress: bool,
        rng: torch.Generator,
    ) -> str:
        """Stage 2, izi_f with G and D frozen (eval mode, no weight gradients); returns what stopped it."""
        g, d, e = self.generator, self.critic, self.encoder
        g.eval().requires_grad_(False)
        d.eval().requires_grad_(False)
        e.train()
        optimizer = torch.optim.Adam(e.parameters(), lr=lr)
        stream = self._real_batches(images, batch_size, rng)
        stopped_by = "iterations"
        bar = tqdm(total=iterations, desc=f"{self.name} encoder (izi_f)", unit="it", disable=not progress, leave=False)
        try:
            for it in range(1, iterations + 1):
                x = next(stream).to(device, torch.float32)
                rec = g(e(x))
                residual = F.mse_loss(rec, x)  # mean over the batch of 1/n ||x - x'||^2
                feature = F.mse_loss(d.features(rec), d.features(x))  # ... and of 1/n_d ||f(x) - f(x')||^2
                loss = residual + self.kappa * feature
                self._check_finite(loss, "encoder (izi_f) loss", "encoder", it, lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                record = {"iteration": it, "loss": loss.item(), "residual": residual.item(), "feature": feature.item()}
                self.history["encoder"].append(record)
                bar.update(1)
                if it % 10 == 1:
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if deadline is not None and time.perf_counter() >= deadline and it < iterations:
                    stopped_by = "time_limit"
                    break
        finally:
            bar.close()
        return stopped_by

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, fitted={self.is_fitted}, image_size={self.image_size}, z_dim={self.z_dim}, "
            f"kappa={self.kappa}, z_prior={self.z_prior!r}"
        )
