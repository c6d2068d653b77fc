from __future__ import annotations

import pytest
import torch

from monai_hqanogan.networks.layers import follow_channels_last
from monai_hqanogan.networks.nets import StyleGAN2Discriminator

pytestmark = pytest.mark.usefixtures("single_thread")

CL = torch.channels_last


def _small_d() -> StyleGAN2Discriminator:
    torch.manual_seed(0)
    return StyleGAN2Discriminator(resolution=16, channel_base=128, channel_max=16)


def test_follow_channels_last_restrides_a_one_channel_batch_only_for_a_channels_last_module():
    d = _small_d()
    x = torch.randn(4, 1, 16, 16)
    assert x.stride(1) == 256  # contiguous in both layouts, with the standard strides
    assert follow_channels_last(x, d) is x  # a standard-layout module: left alone
    d.to(memory_format=CL)
    y = follow_channels_last(x, d)
    assert y.stride() == (256, 1, 16, 1) and torch.equal(y, x)
    assert follow_channels_last(y, d) is y  # already in the layout: no second copy
    x3 = torch.randn(2, 3, 8, 8)
    y3 = follow_channels_last(x3, d)
    assert y3.is_contiguous(memory_format=CL) and not y3.is_contiguous() and torch.equal(y3, x3)
    flat = torch.randn(2, 5)
    assert follow_channels_last(flat, d) is flat


def test_follow_channels_last_passes_gradients_through():
    d = _small_d().to(memory_format=CL)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    follow_channels_last(x, d).square().sum().backward()
    assert torch.equal(x.grad, 2 * x.detach())


def test_the_first_feature_map_of_a_channels_last_discriminator_is_channels_last_with_the_same_values():
    """A grey-scale batch into a channels-last D: the 1x1 input layer's output used to come out in the standard
    layout (with one input channel and a 1x1 kernel its input and its weight are both ambiguous), so the next
    convolution copied it to channels-last, forward and backward, at every call."""
    net = _small_d().eval()
    seen = []
    net.from_image.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref_out = net(x)
        net.to(memory_format=CL)
        cl_out = net(x)
    ref_first, cl_first = seen
    assert cl_first.is_contiguous(memory_format=CL) and not cl_first.is_contiguous()
    assert torch.allclose(cl_first, ref_first, atol=1e-6)
    assert torch.allclose(cl_out, ref_out, rtol=1e-4, atol=1e-5)
