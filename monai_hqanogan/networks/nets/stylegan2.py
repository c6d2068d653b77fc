"""StyleGAN2 generator (mapping + synthesis) for 1-channel (or any-channel) medical images.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2), CVPR 2020,
https://arxiv.org/abs/1912.04958, and Karras et al., "Training Generative Adversarial Networks with Limited
Data" (StyleGAN2-ADA), NeurIPS 2020, https://arxiv.org/abs/2006.06676. Written from the papers.

The generator maps z -> w (mapping network, equalised learning rate with multiplier 0.01, tracked average
``w_avg`` for truncation and for the pSp encoder) and broadcasts w to ``num_ws`` style vectors (W+). The
synthesis network starts from a learned 4x4 constant and doubles the resolution per block with modulated,
demodulated 3x3 convolutions, per-pixel noise and a skip architecture that sums the up-sampled image outputs
of all blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_hqanogan.networks.layers import EqualizedLinear, StyleConvLayer, ToImageLayer, Upsample2x

# the checks live in monai_hqanogan.utils.validation; imported here so that the old import paths keep working
from monai_hqanogan.utils.validation import MAX_RESOLUTION, MIN_RESOLUTION, check_image_batch, check_resolution

__all__ = [
    "StyleGAN2MappingNetwork",
    "StyleGAN2SynthesisNetwork",
    "StyleGAN2Generator",
    "check_resolution",
    "check_image_batch",
    "MIN_RESOLUTION",
    "MAX_RESOLUTION",
    "feature_channels",
]


def feature_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels at ``resolution``: ``min(channel_base // resolution, channel_max)``, at least 1."""
    return max(1, min(channel_base // resolution, channel_max))


class StyleGAN2MappingNetwork(nn.Module):
    """Mapping network z -> w, broadcast to W+ ([B, num_ws, w_dim]), with a tracked ``w_avg`` and truncation.

    Args:
        z_dim: width of the input latent z.
        w_dim: width of w.
        num_ws: number of style vectors the synthesis network consumes.
        num_layers: number of fully connected layers (8 in StyleGAN2, 2 in StyleGAN2-ADA's small-data config).
        lr_multiplier: learning-rate multiplier of the layers (0.01).
        w_avg_beta: decay of the running average of w (0.995).
    """

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        num_ws: int = 14,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mapping network needs at least one layer, got num_layers={num_layers}.")
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        widths = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *[
                EqualizedLinear(widths[i], widths[i + 1], lr_multiplier=lr_multiplier, activation="lrelu")
                for i in range(num_layers)
            ]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [batch, {self.z_dim}], got {tuple(z.shape)}.")
        z = z.float()
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalise the second moment
        w = self.layers(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1.0:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


class _SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (up-sampling) conv, conv, toImage, skip connection."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        resample_mode: str,
        conv_clamp: float | None,
    ) -> None:
        super().__init__()
        self.is_first = resolution == 4
        self.resolution = resolution
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.convs = nn.ModuleList([StyleConvLayer(out_channels, out_channels, w_dim, 4, conv_clamp=conv_clamp)])
            self.upsample_image = None
        else:
            self.convs = nn.ModuleList(
                [
                    StyleConvLayer(
                        in_channels,
                        out_channels,
                        w_dim,
                        resolution,
                        up=2,
                        resample_mode=resample_mode,
                        conv_clamp=conv_clamp,
                    ),
                    StyleConvLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp),
                ]
            )
            self.upsample_image = Upsample2x(mode=resample_mode)
        self.to_image = ToImageLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    @property
    def num_conv(self) -> int:
        return len(self.convs)

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], noise_mode=noise_mode)
        y = self.to_image(x, ws[:, self.num_conv])
        img = y if img is None else self.upsample_image(img) + y
        return x, img


class StyleGAN2SynthesisNetwork(nn.Module):
    """Synthesis network W+ -> image, skip architecture, from a learned 4x4 constant.

    Args:
        resolution: output resolution, a power of two in [8, 1024].
        img_channels: image channels.
        w_dim: width of w.
        channel_base: feature channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: maximum number of feature channels.
        resample_mode: ``"fir"`` or ``"bilinear"`` up-sampling.
        conv_clamp: clamp activations to ``[-conv_clamp, conv_clamp]`` (None: off), guards reduced precision.
        clamp_output: clamp images to [-1, 1] in eval mode (training mode leaves them raw so no gradient is cut).
    """

    def __init__(
        self,
        resolution: int = 256,
        img_channels: int = 1,
        w_dim: int = 512,
        channel_base: int = 32768,
        channel_max: int = 512,
        resample_mode: str = "fir",
        conv_clamp: float | None = 256.0,
        clamp_output: bool = True,
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.resolution, self.img_channels, self.w_dim = resolution, img_channels, w_dim
        self.clamp_output = clamp_output
        resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: feature_channels(r, channel_base, channel_max) for r in resolutions}
        self.blocks = nn.ModuleList(
            [
                _SynthesisBlock(
                    channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels, resample_mode, conv_clamp
                )
                for r in resolutions
            ]
        )
        # the toImage layer of block k shares its w with the first conv of block k+1, hence the final +1
        self.num_ws = sum(block.num_conv for block in self.blocks) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape [batch, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}.")
        x = img = None
        w_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx : w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        if self.clamp_output and not self.training:
            img = img.clamp(-1.0, 1.0)
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2(-ADA) generator: ``mapping(z) -> ws [B, num_ws, w_dim]``, ``synthesis(ws) -> image``.

    Karras et al., StyleGAN2 (https://arxiv.org/abs/1912.04958) and StyleGAN2-ADA
    (https://arxiv.org/abs/2006.06676). Images are in [-1, 1]: in eval mode the output is clamped to that
    range (``clamp_output``); in training mode it is left raw so that no gradient is cut.

    Args:
        resolution: output resolution, a power of two in [8, 1024]. Non-square data must be padded to a square
            by the data pipeline (``monai_hqanogan.transforms.gan_image_transforms`` does).
        img_channels: image channels (1 for grey-scale medical images).
        z_dim: width of z.
        w_dim: width of w.
        mapping_layers: depth of the mapping network.
        mapping_lr_multiplier: learning-rate multiplier of the mapping network.
        w_avg_beta: decay of the tracked average of w.
        channel_base: feature channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: maximum feature channels.
        resample_mode: ``"fir"`` or ``"bilinear"`` up-sampling.
        conv_clamp: activation clamp for reduced precision (None: off).
        clamp_output: clamp images to [-1, 1] in eval mode.

    Example::

        g = StyleGAN2Generator(resolution=32, channel_base=1024, channel_max=64, z_dim=64, w_dim=64)
        ws = g.mapping(torch.randn(4, g.z_dim))    # [4, g.num_ws, 64]
        img = g.synthesis(ws)                      # [4, 1, 32, 32]
    """

    def __init__(
        self,
        resolution: int = 256,
        img_channels: int = 1,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
        channel_base: int = 32768,
        channel_max: int = 512,
        resample_mode: str = "fir",
        conv_clamp: float | None = 256.0,
        clamp_output: bool = True,
    ) -> None:
        super().__init__()
        if img_channels < 1:
            raise ValueError(f"img_channels must be >= 1, got {img_channels}.")
        self.resolution, self.img_channels, self.z_dim, self.w_dim = resolution, img_channels, z_dim, w_dim
        self.synthesis = StyleGAN2SynthesisNetwork(
            resolution=resolution,
            img_channels=img_channels,
            w_dim=w_dim,
            channel_base=channel_base,
            channel_max=channel_max,
            resample_mode=resample_mode,
            conv_clamp=conv_clamp,
            clamp_output=clamp_output,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = StyleGAN2MappingNetwork(
            z_dim=z_dim,
            w_dim=w_dim,
            num_ws=self.num_ws,
            num_layers=mapping_layers,
            lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
        )

    @property
    def w_avg(self) -> torch.Tensor:
        """The tracked average of the mapping output (the pSp encoder's starting point)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
    ) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)
