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

__all__ = ["EqualizedLinear", "EqualizedConv2d", "bias_act", "activation_gain", "scaled_act", "clamp_act", "LRELU_GAIN"]

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
    gain = activation_gain(activation)
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def activation_gain(activation: str) -> float:
    """The gain that follows ``activation``: ``sqrt(2)`` for ``"lrelu"``, 1 for ``"linear"``; any other name raises."""
    if activation == "lrelu":
        return LRELU_GAIN
    if activation != "linear":
        raise ValueError(f"activation must be 'lrelu' or 'linear', got {activation!r}.")
    return 1.0


def scaled_act(x: torch.Tensor, activation: str, clamp: float | None = None) -> torch.Tensor:
    """``activation`` without its gain, then :func:`clamp_act`: for pre-activations already multiplied by the gain.

    A leaky ReLU is positively homogeneous, ``lrelu(g * z) == g * lrelu(z)`` for ``g > 0``, so the layers fold the
    gain of :func:`bias_act` into their weights and biases (small tensors) instead of multiplying every activation
    (and its gradient) by it. The result equals ``bias_act`` up to float rounding.
    """
    activation_gain(activation)  # rejects unknown names
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2)
    return clamp_act(x, clamp)


def clamp_act(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Clamp ``x`` to ``[-clamp, clamp]`` (``None``: return ``x``), skipping the clamp where it would change nothing.

    The clamp guards reduced precision against overflow and is a no-op almost always; its backward pass (two
    comparisons and a select over the whole tensor, and more under double back-propagation in R1 and path length)
    is not. On the CPU, for a tensor that needs a gradient, one read of ``x`` (``aminmax``) decides whether any value
    lies outside, and the clamp enters the graph only if one does: the values and gradients are bit-identical either
    way. On other devices (the check would synchronise), without a gradient (the clamp is the cheaper pass), under
    ``torch.jit.trace`` or ``torch.compile`` (no data-dependent branches) the clamp always runs.
    """
    if clamp is None:
        return x
    if (
        x.requires_grad
        and x.device.type == "cpu"
        and x.numel() > 0
        and not torch.jit.is_tracing()
        and not _is_compiling()
    ):
        v = x.detach()
        if v.ndim == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=torch.channels_last):
            v = v.permute(0, 2, 3, 1)  # a contiguous view of the same memory: aminmax would copy the tensor first
        lo, hi = torch.aminmax(v)
        if bool(lo >= -clamp) and bool(hi <= clamp):
            return x
    return x.clamp(-clamp, clamp)


def _cpu_reduced_precision(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` runs in 16-bit floats on the CPU (its dtype, or CPU autocast)."""
    if x.device.type != "cpu":
        return False
    if x.dtype in (torch.bfloat16, torch.float16):
        return True
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_compiling", lambda: False)())


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
        act_gain = activation_gain(self.activation)  # folded into the weight and bias: see scaled_act
        weight = self.weight * (self.weight_gain * act_gain)
        bias = None if self.bias is None else self.bias * (self.bias_gain * act_gain)
        if self.activation == "linear" and bias is not None:
            return torch.addmm(bias.unsqueeze(0), x, weight.t())
        # with the float32 bias added outside the matmul, autocast leaves the activations in float32 (the mapping
        # network's w, D's epilogue)
        x = x.matmul(weight.t())
        return scaled_act(x if bias is None else x + bias, self.activation)

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

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """Convolution, bias, activation with its gain times ``gain`` (> 0), clamp at ``conv_clamp * gain``.

        Both gains are folded into the weight and the bias (see :func:`scaled_act`), and the bias is added by the
        convolution, so the only passes over the activations are the convolution, the leaky ReLU and the clamp.
        """
        act_gain = activation_gain(self.activation) * gain
        weight = self.weight * (self.weight_gain * act_gain)
        bias = None if self.bias is None else self.bias * act_gain
        if self.blur is not None and self.kernel_size == 1 and not _cpu_reduced_precision(x):
            # a 1x1 kernel looks at one sample: decimate in the blur and skip the 3/4 of it a stride-2 conv drops
            # (not in bfloat16 on the CPU, where oneDNN's strided depthwise convolution is ten times slower)
            x = F.conv2d(self.blur(x, stride=2), weight, bias)
        elif self.blur is not None:
            x = F.conv2d(self.blur(x), weight, bias, stride=2)
        else:
            x = F.conv2d(x, weight, bias, padding=self.kernel_size // 2)
        return scaled_act(x, self.activation, None if self.conv_clamp is None else self.conv_clamp * gain)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, down={self.down}, "
            f"activation={self.activation}"
        )
