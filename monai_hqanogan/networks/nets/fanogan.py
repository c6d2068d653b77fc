"""The three networks of f-AnoGAN: a DCGAN-style generator, a WGAN-GP critic and the izi_f encoder.

Schlegl, Seeböck, Waldstein, Langs, Schmidt-Erfurth, "f-AnoGAN: Fast unsupervised anomaly detection with generative
adversarial networks", Medical Image Analysis 54, 2019, https://doi.org/10.1016/j.media.2019.01.010; the GAN of
Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, "Improved training of Wasserstein GANs", NeurIPS 2017,
https://arxiv.org/abs/1704.00028. The procedure that trains and scores them is
:class:`monai_hqanogan.baselines.FAnoGANBaseline`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from monai_hqanogan.utils.validation import check_positive_int

__all__ = ["FAnoGANGenerator", "FAnoGANCritic", "FAnoGANEncoder", "FANOGAN_NORMS"]

#: the normalisations the critic and the encoder offer (never BatchNorm: the gradient penalty is per image)
FANOGAN_NORMS = ("layer", "none")


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
        if norm not in FANOGAN_NORMS:
            raise ValueError(f"norm must be one of {FANOGAN_NORMS}, got {norm!r}.")
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
        if norm not in FANOGAN_NORMS:
            raise ValueError(f"norm must be one of {FANOGAN_NORMS}, got {norm!r}.")
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
