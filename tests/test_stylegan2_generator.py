from __future__ import annotations

import math

import pytest
import torch

from monai_hqanogan.networks import StyleGAN2Generator
from monai_hqanogan.networks.nets import (
    StyleGAN2MappingNetwork,
    StyleGAN2SynthesisNetwork,
    check_resolution,
    feature_channels,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


TINY = {"channel_base": 256, "channel_max": 32, "z_dim": 16, "w_dim": 16, "mapping_layers": 2}


def _gen(resolution: int = 16, img_channels: int = 1, seed: int = 0, **kwargs) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    args = {**TINY, **kwargs}
    return StyleGAN2Generator(resolution=resolution, img_channels=img_channels, **args)


@pytest.mark.parametrize(
    "resolution, img_channels, mode",
    [
        (8, 1, "fir"),
        (16, 1, "bilinear"),
        (16, 3, "fir"),
        (32, 1, "fir"),
        (32, 3, "bilinear"),
    ],
)
def test_generator_shapes_and_num_ws(resolution, img_channels, mode):
    g = _gen(resolution, img_channels, resample_mode=mode)
    assert g.num_ws == 2 * int(math.log2(resolution)) - 2
    assert g.mapping.num_ws == g.num_ws == g.synthesis.num_ws
    z = torch.randn(3, g.z_dim)
    ws = g.mapping(z)
    assert ws.shape == (3, g.num_ws, g.w_dim)
    img = g.synthesis(ws)
    assert img.shape == (3, img_channels, resolution, resolution)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    out = g(z)
    assert out.shape == (3, img_channels, resolution, resolution)
    assert out.dtype == torch.float32


def test_generator_output_float32_for_double_latent():
    g = _gen(8)
    assert g(torch.randn(2, g.z_dim, dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_feature_channels_in_blocks(resolution):
    g = _gen(resolution)
    for block in g.synthesis.blocks:
        expected = feature_channels(block.resolution, TINY["channel_base"], TINY["channel_max"])
        assert block.to_image.conv.in_channels == expected
    assert [b.resolution for b in g.synthesis.blocks] == [2**i for i in range(2, int(math.log2(resolution)) + 1)]


@pytest.mark.parametrize(
    "r, base, cmax, expected", [(4, 256, 32, 32), (16, 256, 32, 16), (64, 32, 8, 1), (8, 1024, 512, 128)]
)
def test_feature_channels(r, base, cmax, expected):
    assert feature_channels(r, base, cmax) == expected


@pytest.mark.parametrize("resolution, log2", [(8, 3), (64, 6), (1024, 10)])
def test_check_resolution_valid(resolution, log2):
    assert check_resolution(resolution) == log2


@pytest.mark.parametrize("bad", [12, 4, 2048, 0, True, -8, 16.0, "16"])
def test_bad_resolution_raises(bad):
    with pytest.raises(ValueError, match="power of two"):
        check_resolution(bad)
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(resolution=bad, **TINY)


def test_bad_img_channels_raises():
    with pytest.raises(ValueError, match="img_channels"):
        StyleGAN2Generator(resolution=8, img_channels=0, **TINY)


def test_mapping_ws_rows_equal_without_truncation():
    g = _gen(16)
    ws = g.mapping(torch.randn(4, g.z_dim))
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    # different z give different w
    assert not torch.allclose(ws[0, 0], ws[1, 0])


def test_mapping_normalises_z_scale():
    # z is normalised to unit second moment, so a positive rescaling of z gives the same w
    g = _gen(8)
    z = torch.randn(3, g.z_dim)
    assert torch.allclose(g.mapping(z), g.mapping(5.0 * z), atol=1e-5)


def _set_w_avg(g: StyleGAN2Generator) -> torch.Tensor:
    with torch.no_grad():
        g.mapping.w_avg.copy_(torch.randn(g.w_dim))
    return g.w_avg.clone()


def test_truncation_psi_zero_gives_w_avg():
    g = _gen(16)
    w_avg = _set_w_avg(g)
    ws = g.mapping(torch.randn(3, g.z_dim), truncation_psi=0.0)
    assert torch.allclose(ws, w_avg.view(1, 1, -1).expand_as(ws), atol=1e-6)


@pytest.mark.parametrize("psi", [0.5, 0.7, 1.5])
def test_truncation_interpolates(psi):
    g = _gen(16)
    w_avg = _set_w_avg(g)
    z = torch.randn(3, g.z_dim)
    ws = g.mapping(z)
    ws_t = g.mapping(z, truncation_psi=psi)
    assert torch.allclose(ws_t, w_avg + psi * (ws - w_avg), atol=1e-5)


@pytest.mark.parametrize("cutoff", [1, 3, 5])
def test_truncation_cutoff_applies_to_first_layers_only(cutoff):
    g = _gen(16)  # num_ws = 6
    w_avg = _set_w_avg(g)
    z = torch.randn(2, g.z_dim)
    ws = g.mapping(z)
    ws_t = g.mapping(z, truncation_psi=0.0, truncation_cutoff=cutoff)
    assert torch.allclose(ws_t[:, :cutoff], w_avg.view(1, 1, -1).expand(2, cutoff, -1), atol=1e-6)
    assert torch.equal(ws_t[:, cutoff:], ws[:, cutoff:])
    assert not torch.allclose(ws_t[:, cutoff:], w_avg.view(1, 1, -1).expand_as(ws_t[:, cutoff:]))


def test_generator_forward_passes_truncation():
    g = _gen(8)
    _set_w_avg(g)
    g.eval()
    z = torch.randn(2, g.z_dim)
    ws = g.mapping(z, truncation_psi=0.0)
    assert torch.allclose(g(z, truncation_psi=0.0, noise_mode="const"), g.synthesis(ws, noise_mode="const"))
    # psi=0 removes every dependence on z
    img = g(torch.randn(2, g.z_dim), truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(img[0], img[1], atol=1e-6)


@pytest.mark.parametrize("beta", [0.995, 0.5])
def test_update_w_avg(beta):
    g = _gen(8, w_avg_beta=beta)
    old = _set_w_avg(g)
    z = torch.randn(5, g.z_dim)
    batch_mean = g.mapping(z)[:, 0].mean(dim=0)
    assert torch.equal(g.w_avg, old)  # update_w_avg=False (default) leaves it alone
    g.mapping(z, update_w_avg=True)
    expected = old + (1 - beta) * (batch_mean - old)
    assert torch.allclose(g.w_avg, expected, atol=1e-5)
    assert not torch.allclose(g.w_avg, old)


def test_generator_forward_does_not_update_w_avg():
    g = _gen(8)
    old = _set_w_avg(g)
    g(torch.randn(3, g.z_dim))
    assert torch.equal(g.w_avg, old)


def test_w_avg_in_state_dict():
    g = _gen(8)
    w_avg = _set_w_avg(g)
    g2 = _gen(8, seed=1)
    g2.load_state_dict(g.state_dict())
    assert torch.equal(g2.w_avg, w_avg)


@pytest.mark.parametrize("shape", [(3, 15), (3, 16, 1), (16,), (3, 32)])
def test_wrong_z_shape_raises(shape):
    g = _gen(8)
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(*shape))


@pytest.mark.parametrize("shape", [(2, 3, 16), (2, 4, 8), (2, 16), (2, 5, 16, 1)])
def test_wrong_ws_shape_raises(shape):
    g = _gen(8)  # num_ws = 4, w_dim = 16
    with pytest.raises(ValueError, match="ws must have shape"):
        g.synthesis(torch.randn(*shape))


def test_mapping_needs_a_layer():
    with pytest.raises(ValueError):
        StyleGAN2MappingNetwork(z_dim=8, w_dim=8, num_ws=4, num_layers=0)


def _blow_up(g: StyleGAN2Generator) -> None:
    with torch.no_grad():
        g.synthesis.blocks[-1].to_image.conv.weight.mul_(100.0)
        g.synthesis.blocks[-1].to_image.bias.fill_(3.0)


def test_eval_output_clamped_train_not():
    g = _gen(16)
    _blow_up(g)
    z = torch.randn(4, g.z_dim)
    g.train()
    raw = g(z, noise_mode="const")
    assert raw.abs().max() > 2.0
    g.eval()
    out = g(z, noise_mode="const")
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.allclose(out, raw.clamp(-1, 1), atol=1e-5)


def test_clamp_output_false_disables_clamp():
    g = _gen(16, clamp_output=False)
    _blow_up(g)
    g.eval()
    assert g(torch.randn(2, g.z_dim), noise_mode="const").abs().max() > 2.0


@pytest.mark.parametrize("resolution, mode", [(8, "fir"), (16, "bilinear")])
def test_gradients_reach_every_parameter(resolution, mode):
    g = _gen(resolution, resample_mode=mode)
    g.train()
    out = g(torch.randn(2, g.z_dim), noise_mode="random")
    (out * torch.randn_like(out)).sum().backward()
    for name, param in g.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_deterministic_const_noise_in_eval():
    g = _gen(16).eval()
    z = torch.randn(2, g.z_dim)
    assert torch.equal(g(z, noise_mode="const"), g(z, noise_mode="const"))
    with torch.no_grad():  # make the noise matter, then check "random" really is random
        for module in g.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.5)
    assert torch.equal(g(z, noise_mode="const"), g(z, noise_mode="const"))
    assert not torch.allclose(g(z, noise_mode="random"), g(z, noise_mode="random"), atol=1e-4)


def test_different_ws_give_different_images():
    g = _gen(16).eval()
    img = g(torch.randn(2, g.z_dim), noise_mode="const")
    assert not torch.allclose(img[0], img[1], atol=1e-4)


def test_synthesis_standalone():
    torch.manual_seed(0)
    s = StyleGAN2SynthesisNetwork(resolution=8, img_channels=2, w_dim=16, channel_base=256, channel_max=16)
    assert s.num_ws == 4
    img = s(torch.randn(2, 4, 16), noise_mode="none")
    assert img.shape == (2, 2, 8, 8)


def test_check_resolution_accepts_numpy_integers():
    import numpy as np

    from monai_hqanogan.networks.nets import check_resolution

    assert check_resolution(np.int64(32)) == 5
    with pytest.raises(ValueError, match="power of two"):
        check_resolution(32.0)
