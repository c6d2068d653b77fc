from __future__ import annotations

import math

import pytest
import torch

from monai_hqanogan.networks import StyleGAN2Discriminator
from monai_hqanogan.networks.nets import minibatch_stddev

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


def _disc(resolution: int = 16, img_channels: int = 1, seed: int = 0, **kwargs) -> StyleGAN2Discriminator:
    torch.manual_seed(seed)
    args = {"channel_base": 256, "channel_max": 32, **kwargs}
    return StyleGAN2Discriminator(resolution=resolution, img_channels=img_channels, **args)


@pytest.mark.parametrize(
    "resolution, img_channels, mode, batch",
    [(8, 1, "fir", 2), (16, 1, "bilinear", 3), (16, 3, "fir", 4), (32, 1, "fir", 5), (32, 2, "bilinear", 1)],
)
def test_output_shape(resolution, img_channels, mode, batch):
    d = _disc(resolution, img_channels, resample_mode=mode)
    y = d(torch.randn(batch, img_channels, resolution, resolution))
    assert y.shape == (batch, 1)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("resolution, mode", [(8, "fir"), (16, "bilinear"), (32, "fir")])
def test_extract_features_sizes(resolution, mode):
    d = _disc(resolution, resample_mode=mode)
    feats = d.extract_features(torch.randn(2, 1, resolution, resolution))
    assert len(feats) == int(math.log2(resolution)) - 1
    sizes = [f.shape[-1] for f in feats]
    assert sizes == [resolution // 2**i for i in range(len(feats))]
    assert sizes[-1] == 4
    for f in feats:
        assert f.shape[0] == 2 and f.shape[-2] == f.shape[-1]
    # the last features feed the epilogue
    assert feats[-1].shape[1] == d.epilogue_conv.in_channels - d.mbstd_num_channels


def test_features_are_per_image():
    d = _disc(16)
    torch.manual_seed(1)
    x0 = torch.randn(1, 1, 16, 16)
    batch_a = torch.cat([x0, torch.randn(3, 1, 16, 16)])
    batch_b = torch.cat([x0, 5.0 * torch.randn(2, 1, 16, 16)])
    alone = d.extract_features(x0)
    in_a = d.extract_features(batch_a)
    in_b = d.extract_features(batch_b)
    for fa, fb, f0 in zip(in_a, in_b, alone):
        assert torch.allclose(fa[:1], f0, atol=1e-5)
        assert torch.allclose(fb[:1], f0, atol=1e-5)
    # and the features do depend on the image
    assert not torch.allclose(in_a[-1][0], in_a[-1][1], atol=1e-4)


@pytest.mark.parametrize("group_size", [2, 4])
def test_logits_depend_on_batch_with_mbstd(group_size):
    d = _disc(16, mbstd_num_channels=1, mbstd_group_size=group_size)
    torch.manual_seed(2)
    x0 = torch.randn(1, 1, 16, 16)
    la = d(torch.cat([x0, torch.randn(3, 1, 16, 16)]))
    lb = d(torch.cat([x0, 3.0 * torch.randn(3, 1, 16, 16)]))
    assert not torch.allclose(la[0], lb[0], atol=1e-4)


def test_logits_per_image_without_mbstd():
    d = _disc(16, mbstd_num_channels=0)
    assert d.epilogue_conv.in_channels == 32
    torch.manual_seed(2)
    x0 = torch.randn(1, 1, 16, 16)
    la = d(torch.cat([x0, torch.randn(3, 1, 16, 16)]))
    lb = d(torch.cat([x0, 3.0 * torch.randn(3, 1, 16, 16)]))
    l0 = d(x0)
    assert torch.allclose(la[0], lb[0], atol=1e-5)
    assert torch.allclose(la[0], l0[0], atol=1e-5)


def _reference_mbstd(x: torch.Tensor, group_size: int, f: int) -> torch.Tensor:
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    m = n // g
    stats = torch.empty(n, f)
    for i in range(n):
        members = x[[j for j in range(n) if j % m == i % m]]  # [g, C, H, W]
        var = members.var(dim=0, unbiased=False)
        std = (var + 1e-8).sqrt()
        stats[i] = std.reshape(f, c // f, h, w).mean(dim=(1, 2, 3))
    return stats


@pytest.mark.parametrize(
    "n, group_size, num_channels, expected_group",
    [(1, 4, 1, 1), (3, 4, 1, 3), (5, 4, 1, 1), (6, 4, 1, 3), (8, 4, 2, 4), (6, 2, 2, 2), (4, 8, 1, 4)],
)
def test_minibatch_stddev(n, group_size, num_channels, expected_group):
    torch.manual_seed(3)
    x = torch.randn(n, 4, 3, 3)
    y = minibatch_stddev(x, group_size=group_size, num_channels=num_channels)
    assert y.shape == (n, 4 + num_channels, 3, 3)
    assert torch.equal(y[:, :4], x)
    appended = y[:, 4:]
    # each appended channel is constant over space
    assert torch.allclose(appended, appended[:, :, :1, :1].expand_as(appended))
    ref = _reference_mbstd(x, group_size, num_channels)
    assert torch.allclose(appended[:, :, 0, 0], ref, atol=1e-5)
    if expected_group == 1:  # a group of one image has zero spread: sqrt(1e-8)
        assert torch.allclose(appended, torch.full_like(appended, 1e-4))
    else:  # number of distinct statistics == number of groups == n / group
        distinct = {tuple(round(v, 5) for v in row.tolist()) for row in appended[:, :, 0, 0]}
        assert len(distinct) == n // expected_group


def test_minibatch_stddev_channel_mismatch_raises():
    with pytest.raises((ValueError, RuntimeError)):
        minibatch_stddev(torch.randn(4, 5, 2, 2), num_channels=2)


@pytest.mark.parametrize("num_channels", [3, 5, 7])
def test_mismatched_mbstd_channels_raise(num_channels):
    # 32 channels at 4x4 are not divisible by 3, 5 or 7
    with pytest.raises(ValueError, match="mbstd_num_channels"):
        _disc(16, mbstd_num_channels=num_channels)


def test_mbstd_channels_divisor_ok():
    d = _disc(16, mbstd_num_channels=4)
    assert d(torch.randn(4, 1, 16, 16)).shape == (4, 1)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((2, 3, 16, 16), "[batch, 1, 16, 16]"),
        ((2, 1, 32, 32), "[batch, 1, 16, 16]"),
        ((1, 16, 16), "[batch, 1, 16, 16]"),
        ((2, 1, 16, 8), "[batch, 1, 16, 16]"),
    ],
)
def test_wrong_input_shape_raises(shape, expected):
    d = _disc(16)
    with pytest.raises(ValueError) as err:
        d(torch.randn(*shape))
    assert expected in str(err.value)
    with pytest.raises(ValueError):
        d.extract_features(torch.randn(*shape))


@pytest.mark.parametrize("bad", [12, 2048, True])
def test_bad_resolution(bad):
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Discriminator(resolution=bad, channel_base=256, channel_max=32)


def test_bad_img_channels():
    with pytest.raises(ValueError, match="img_channels"):
        _disc(16, img_channels=0)


@pytest.mark.parametrize("mbstd", [0, 1])
def test_gradients_reach_every_parameter(mbstd):
    d = _disc(16, mbstd_num_channels=mbstd)
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    d(x).sum().backward()
    for name, param in d.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_minibatch_stddev_refuses_a_group_size_below_one():
    with pytest.raises(ValueError, match="group_size"):
        minibatch_stddev(torch.zeros(4, 8, 4, 4), group_size=0)
    with pytest.raises(ValueError, match="mbstd_group_size"):
        StyleGAN2Discriminator(resolution=8, channel_base=64, channel_max=16, mbstd_group_size=0)
