"""Layers with an equalised learning rate.

Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation", ICLR 2018,
https://arxiv.org/abs/1710.10196 (section 4.1). Weights are stored with unit variance and scaled by the He
constant at run time, so that Adam's per-parameter step size treats every layer alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monai_hqanogan.networks.layers.resample import Blur2d

__all__ = ["EqualizedLinear", "EqualizedConv2d", "bias_act", "LRELU_GAIN"]

#: gain that keeps the signal magnitude through a leaky ReLU with slope 0.2 (StyleGAN's ``sqrt(2)``)
LRELU_GAIN = math.sqrt(2.0)


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str, clamp: float | None = None) -> torch.Tensor:
    """Add a per-channel bias (dimension 1), apply ``"lrelu"`` (with gain sqrt 2) or ``"linear"``, then clamp.

    Args:
        x: tensor with channels in dimension 1.
        bias: per-channel bias or None.
        activation: ``"lrelu"`` or ``"linear"``.
        clamp: if given, clamp the output to ``[-clamp, clamp]`` (guards reduced-precision overflow).
    """
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * LRELU_GAIN
    elif activation != "linear":
        raise ValueError(f"activation must be 'lrelu' or 'linear', got {activation!r}.")
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate and a learning-rate multiplier.

    Args:
        in_features: input width.
        out_features: output width.
        bias: whether to learn a bias.
        bias_init: initial bias value (the style affines of StyleGAN2 start at 1).
        lr_multiplier: scales the effective learning rate of this layer (0.01 in the mapping network).
        activation: ``"linear"`` or ``"lrelu"``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        bias = None if self.bias is None else self.bias * self.bias_gain
        if self.activation == "linear" and bias is not None:
            return torch.addmm(bias.unsqueeze(0), x, weight.t())
        return bias_act(x.matmul(weight.t()), bias, self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class EqualizedConv2d(nn.Module):
    """2D convolution with equalised learning rate, optional 2x down-sampling and output clamping.

    Down-sampling low-pass filters the input (:class:`~monai_hqanogan.networks.layers.Blur2d`)
    and then convolves with stride 2, as in StyleGAN2's discriminator.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        bias: whether to learn a bias.
        activation: ``"linear"`` or ``"lrelu"``.
        down: 1 (no resampling) or 2.
        resample_filter: ``"fir"`` or ``"bilinear"``, the low-pass filter used when ``down == 2``.
        conv_clamp: clamp activations to ``[-conv_clamp, conv_clamp]`` (None: no clamping).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        resample_filter: str = "fir",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        # the blur before a strided convolution: pad so that output = input / 2 after the stride
        self.blur = Blur2d(mode=resample_filter, kernel_size=kernel_size) if down == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        if self.blur is not None:
            x = F.conv2d(self.blur(x), weight, stride=2)
        else:
            x = F.conv2d(x, weight, padding=self.kernel_size // 2)
        return bias_act(x, self.bias, self.activation, self.conv_clamp)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, down={self.down}, "
            f"activation={self.activation}"
        )
