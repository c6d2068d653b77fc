"""Style-modulated convolutions of the StyleGAN2 synthesis network.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2), CVPR 2020,
https://arxiv.org/abs/1912.04958, section 2.2: the style s = A(w) scales the input feature maps
(modulation); dividing each output map by the expected norm of its modulated weights (demodulation)
replaces AdaIN and removes the droplet artefacts.

The modulation is computed the "non-fused" way: ``conv(x * s, W) * d`` with ``d`` the demodulation
coefficients, which equals a convolution with per-sample weights but runs as one ordinary convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monai_hqanogan.networks.layers.equalized import LRELU_GAIN, EqualizedLinear, clamp_act, scaled_act
from monai_hqanogan.networks.layers.resample import Upsample2x, fir_taps, separable_filter

__all__ = ["ModulatedConv2d", "StyleConvLayer", "ToImageLayer", "NOISE_MODES", "check_deterministic_noise_mode"]

#: ``"random"``: fresh Gaussian noise per call; ``"const"``: a fixed noise image per layer; ``"none"``: no noise
NOISE_MODES = ("random", "const", "none")


def check_deterministic_noise_mode(noise_mode: str) -> str:
    """Return ``noise_mode`` if it gives repeatable images (``"const"`` or ``"none"``), else raise a ValueError."""
    if noise_mode not in ("const", "none"):
        raise ValueError(f"noise_mode must be 'const' or 'none' (deterministic reconstructions), got {noise_mode!r}.")
    return noise_mode


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style computed from w, with optional demodulation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        w_dim: width of the intermediate latent w.
        demodulate: normalise each output channel (True in conv layers, False in the toImage layers).
        up: 1, or 2 for a 2x up-sampling convolution.
        resample_mode: how ``up=2`` works. ``"fir"`` (StyleGAN2's way): a stride-2 transposed convolution, then the
            [1, 3, 3, 1] low-pass filter; it costs what a convolution at the input resolution costs.
            ``"bilinear"``: bilinear up-sampling of the modulated input, then the convolution at the output
            resolution (exactly bilinear, about 4x the arithmetic).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: int = 1,
        resample_mode: str = "fir",
    ) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.up = up
        self.resample_mode = resample_mode
        self.upsample = Upsample2x(mode="bilinear") if up == 2 and resample_mode == "bilinear" else None
        if up == 2 and resample_mode == "fir":
            taps = fir_taps((1, 3, 3, 1)) * 2.0  # gain 2 per axis: the transposed convolution inserts zeros
            self.register_buffer("up_taps", taps, persistent=False)
            total = taps.numel() + 1 - kernel_size  # the transposed convolution gives 2H + k - 2 samples
            self.up_pad = (total // 2, total - total // 2)
        elif up == 2 and resample_mode != "bilinear":
            raise ValueError(f"resample_mode must be 'fir' or 'bilinear', got {resample_mode!r}.")

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, gain: float = 1.0
    ) -> torch.Tensor:
        """``gain * (modulated convolution (demodulated) + bias)``.

        Args:
            x: input feature maps ``[B, in, H, W]``.
            w: latents ``[B, w_dim]``.
            bias: per-output-channel bias ``[out]`` added after the demodulation, or None.
            gain: factor on the result, applied to the demodulation coefficients and the bias (small tensors)
                rather than to the output (see :func:`~monai_hqanogan.networks.layers.scaled_act`).
        """
        styles = self.affine(w)  # [B, in]
        weight = self.weight * self.weight_gain
        if bias is not None:
            bias = (bias * gain).to(x.dtype)
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up == 2 and self.upsample is None:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
            x = separable_filter(x, self.up_taps, self.up_pad)
        else:
            if self.upsample is not None:
                x = self.upsample(x)
            if not self.demodulate:
                # the gain and the bias go into the convolution itself
                return F.conv2d(x, (weight * gain).to(x.dtype), bias, padding=self.kernel_size // 2)
            x = F.conv2d(x, weight.to(x.dtype), padding=self.kernel_size // 2)
        if self.demodulate:
            # sum_{i,k} (W[o,i,k] s_i)^2 == sum_i s_i^2 * sum_k W[o,i,k]^2: no per-sample weight tensor needed
            dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt() * gain  # [B, out]
            dcoefs = dcoefs.to(x.dtype)[:, :, None, None]
            # one pass for x * d + b (addcmul) instead of two
            return x * dcoefs if bias is None else torch.addcmul(bias.view(1, -1, 1, 1), x, dcoefs)
        x = x * gain if gain != 1.0 else x
        return x if bias is None else x + bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"demodulate={self.demodulate}, up={self.up}, resample_mode={self.resample_mode}"
        )


class StyleConvLayer(nn.Module):
    """One synthesis layer: modulated 3x3 convolution, per-pixel noise with a learned strength, bias, leaky ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        w_dim: width of w.
        resolution: output resolution of the layer (size of the constant noise image).
        up: 1, or 2 for the first layer of a block.
        kernel_size: convolution kernel size.
        resample_mode: ``"fir"`` or ``"bilinear"``.
        conv_clamp: clamp activations to ``[-conv_clamp, conv_clamp]`` (None: off).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        kernel_size: int = 3,
        resample_mode: str = "fir",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv_clamp = conv_clamp
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, w_dim, demodulate=True, up=up, resample_mode=resample_mode
        )
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
        # lrelu(conv + noise + bias) * sqrt(2), with the gain folded into the conv's demodulation, the bias and the
        # noise strength (see scaled_act); the noise goes in place into the fresh output of the convolution, which
        # no backward pass needs
        x = self.conv(x, w, bias=self.bias, gain=LRELU_GAIN)
        strength = (self.noise_strength * LRELU_GAIN).to(x.dtype)
        if noise_mode == "random":
            x = x.addcmul_(
                torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype), strength
            )
        elif noise_mode == "const":
            x = x.add_(self.noise_const.to(x.dtype) * strength)
        return scaled_act(x, "lrelu", self.conv_clamp)


class ToImageLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation from features to image channels (StyleGAN2's toRGB).

    Args:
        in_channels: feature channels.
        out_channels: image channels (1 for grey-scale medical images).
        w_dim: width of w.
        conv_clamp: clamp the output to ``[-conv_clamp, conv_clamp]`` (None: off).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return clamp_act(self.conv(x, w, bias=self.bias), self.conv_clamp)
