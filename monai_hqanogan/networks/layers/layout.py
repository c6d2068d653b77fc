"""Memory layout of image batches that enter a channels-last network.

A batch with one channel, ``[N, 1, H, W]``, is contiguous in both layouts, so ``x.contiguous(memory_format=
torch.channels_last)`` returns it as it is, with the standard strides. A convolution whose input and weight are both
ambiguous like this (a grey-scale image into a 1x1 first layer, as StyleGAN2's discriminator has: its weight
``[C,1,1,1]`` has no layout either) writes its output in the standard layout, and the next convolution, whose weight is
channels-last, then copies that whole feature map to channels-last (and its gradient back) at every call. Giving the
input batch the channels-last strides first costs one copy of the one-channel batch and keeps the first feature map
channels-last.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["follow_channels_last"]


def _layout_reference(module: nn.Module) -> torch.Tensor | None:
    """The first 4-D parameter of ``module`` whose layout is unambiguous (more than one input channel and a kernel
    larger than 1x1), or None."""
    for p in module.parameters():
        if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p
    return None


def follow_channels_last(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` [N, C, H, W] in the channels-last layout when ``module``'s convolution weights are channels-last
    (e.g. after ``module.to(memory_format=torch.channels_last)``), else ``x`` unchanged.

    The values are the same; only the strides differ (for ``C == 1`` the copy gets ``stride(1) == 1``, which makes
    the first convolution write a channels-last output).

    Args:
        x: image batch [N, C, H, W].
        module: the network that ``x`` enters.
    """
    if x.ndim != 4 or x.shape[2] * x.shape[3] <= 1:
        return x
    ref = _layout_reference(module)
    if ref is None or ref.is_contiguous() or not ref.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.shape[1] == 1:
        return x if x.stride(1) == 1 else x.clone(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)
