"""StyleGAN2 residual discriminator with minibatch standard deviation and per-image features.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2), CVPR 2020,
https://arxiv.org/abs/1912.04958 (residual discriminator, figure 7) and Karras et al., "Progressive Growing of
GANs" (https://arxiv.org/abs/1710.10196, minibatch standard deviation). Written from the papers.

The minibatch standard deviation layer makes D's output for one image depend on the other images of its
group. Anomaly scores need per-image features, so :meth:`StyleGAN2Discriminator.extract_features` returns the
activations of every resolution block, all computed before that layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_hqanogan.networks.layers import EqualizedConv2d, EqualizedLinear, follow_channels_last
from monai_hqanogan.networks.nets.stylegan2 import feature_channels
from monai_hqanogan.utils.validation import check_image_batch, check_resolution

__all__ = ["StyleGAN2Discriminator", "minibatch_stddev"]


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append ``num_channels`` feature maps holding the standard deviation of features across groups of images.

    The group size is the largest divisor of the batch size that is ``<= group_size``, so any batch size works.

    Args:
        x: features [N, C, H, W]; C must be divisible by ``num_channels``.
        group_size: images per group.
        num_channels: number of statistics channels to append.
    """
    if group_size < 1 or num_channels < 1:
        raise ValueError(f"group_size and num_channels must be >= 1, got {group_size} and {num_channels}.")
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    f = num_channels
    y = x.float().reshape(g, -1, f, c // f, h, w)  # sample i belongs to group i % (n // g)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [n // g, f]
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class _DiscriminatorBlock(nn.Module):
    """Residual block: conv 3x3, conv 3x3 with 2x down-sampling, plus a 1x1 down-sampling skip; sum * sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int, resample_mode: str, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(
            in_channels,
            out_channels,
            3,
            activation="lrelu",
            down=2,
            resample_filter=resample_mode,
            conv_clamp=conv_clamp,
        )
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (skip + residual) * sqrt(1/2), with the factor folded into both convolutions (conv1's clamp scales with
        # it); the skip's output is a fresh tensor that no backward pass needs, so the sum can go into it in place
        y = self.skip(x, gain=math.sqrt(0.5))
        return y.add_(self.conv1(self.conv0(x), gain=math.sqrt(0.5)))


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: ``forward(x) -> logits [B, 1]``.

    Args:
        resolution: input resolution, a power of two in [8, 1024].
        img_channels: image channels (1 for grey-scale medical images).
        channel_base: feature channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: maximum feature channels.
        mbstd_group_size: images per minibatch-stddev group (the largest divisor of the batch size up to it).
        mbstd_num_channels: statistics channels appended by the minibatch-stddev layer (0 disables it).
        resample_mode: ``"fir"`` ([1, 3, 3, 1] blur) or ``"bilinear"`` (box blur) before strided convolutions.
        conv_clamp: activation clamp for reduced precision (None: off).

    Example::

        d = StyleGAN2Discriminator(resolution=32, channel_base=1024, channel_max=64)
        logits = d(torch.randn(8, 1, 32, 32))                 # [8, 1]
        feats = d.extract_features(torch.randn(8, 1, 32, 32))  # per-image features, 32 px down to 4 px
    """

    def __init__(
        self,
        resolution: int = 256,
        img_channels: int = 1,
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        resample_mode: str = "fir",
        conv_clamp: float | None = 256.0,
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        if img_channels < 1:
            raise ValueError(f"img_channels must be >= 1, got {img_channels}.")
        if mbstd_num_channels < 0 or (mbstd_num_channels and mbstd_group_size < 1):
            raise ValueError(
                f"need mbstd_num_channels >= 0 and mbstd_group_size >= 1, got {mbstd_num_channels} and "
                f"{mbstd_group_size}."
            )
        self.resolution, self.img_channels = resolution, img_channels
        self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
        ch = {2**i: feature_channels(2**i, channel_base, channel_max) for i in range(2, log2 + 1)}
        if mbstd_num_channels and ch[4] % mbstd_num_channels:
            raise ValueError(
                f"the {ch[4]} channels at 4x4 are not divisible by mbstd_num_channels={mbstd_num_channels}."
            )
        self.from_image = EqualizedConv2d(img_channels, ch[resolution], 1, activation="lrelu", conv_clamp=conv_clamp)
        self.blocks = nn.ModuleList(
            [_DiscriminatorBlock(ch[2**i], ch[2 ** (i - 1)], resample_mode, conv_clamp) for i in range(log2, 2, -1)]
        )
        self.epilogue_conv = EqualizedConv2d(
            ch[4] + mbstd_num_channels, ch[4], 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.epilogue_fc = EqualizedLinear(ch[4] * 16, ch[4], activation="lrelu")
        self.epilogue_out = EqualizedLinear(ch[4], 1)

    def extract_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-image features: the output of the input layer and of every resolution block (R down to 4 px).

        None of them passes through the minibatch-stddev layer, so each image's features are the same whatever
        else is in the batch.
        """
        check_image_batch(x, self.img_channels, self.resolution, "StyleGAN2Discriminator")
        feats = [self.from_image(follow_channels_last(x, self))]
        for block in self.blocks:
            feats.append(block(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.extract_features(x)[-1]
        if self.mbstd_num_channels:
            h = minibatch_stddev(h, self.mbstd_group_size, self.mbstd_num_channels)
        h = self.epilogue_conv(h)
        h = self.epilogue_fc(h.flatten(1))
        return self.epilogue_out(h)
