from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_hqanogan.networks.layers import (
    LRELU_GAIN,
    Blur2d,
    EqualizedConv2d,
    EqualizedLinear,
    ModulatedConv2d,
    StyleConvLayer,
    ToImageLayer,
    Upsample2x,
    bias_act,
    clamp_act,
    fir_taps,
    scaled_act,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


@pytest.mark.parametrize(
    "in_f, out_f, lr_mult, activation",
    [(8, 4, 1.0, "linear"), (16, 3, 0.01, "linear"), (5, 7, 0.5, "lrelu"), (32, 2, 1.0, "lrelu")],
)
def test_equalized_linear_scaling(in_f, out_f, lr_mult, activation):
    layer = EqualizedLinear(in_f, out_f, bias_init=0.5, lr_multiplier=lr_mult, activation=activation)
    # the stored parameters are divided by the lr multiplier, the run-time gain multiplies it back
    assert torch.allclose(layer.bias, torch.full((out_f,), 0.5 / lr_mult))
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-0.25)
    x = torch.randn(6, in_f)
    y = layer(x)
    assert y.shape == (6, out_f)
    pre = x.sum(dim=1, keepdim=True) * lr_mult / math.sqrt(in_f) - 0.25 * lr_mult
    expected = pre.expand(6, out_f)
    if activation == "lrelu":
        expected = torch.where(expected > 0, expected, 0.2 * expected) * math.sqrt(2.0)
    assert torch.allclose(y, expected, atol=1e-5)


def test_equalized_linear_without_bias():
    layer = EqualizedLinear(4, 2, bias=False)
    assert layer.bias is None
    with torch.no_grad():
        layer.weight.fill_(2.0)
    y = layer(torch.ones(3, 4))
    assert torch.allclose(y, torch.full((3, 2), 2.0 * 4 / 2.0))


def test_equalized_linear_init_variance():
    # effective weights have variance lr^2 / in with stored weights ~ N(0, 1/lr^2): output variance ~ 1 for unit input
    torch.manual_seed(0)
    layer = EqualizedLinear(256, 256, lr_multiplier=0.01)
    eff = layer.weight * layer.weight_gain
    assert abs(float(eff.detach().std()) * math.sqrt(256) - 1.0) < 0.05


@pytest.mark.parametrize(
    "in_ch, out_ch, k, down, mode, size",
    [
        (3, 4, 3, 1, "fir", 8),
        (2, 5, 1, 1, "fir", 8),
        (4, 2, 3, 2, "fir", 16),
        (4, 2, 1, 2, "bilinear", 16),
        (1, 3, 3, 2, "bilinear", 8),
    ],
)
def test_equalized_conv_shapes(in_ch, out_ch, k, down, mode, size):
    conv = EqualizedConv2d(in_ch, out_ch, k, down=down, resample_filter=mode)
    y = conv(torch.randn(2, in_ch, size, size))
    assert y.shape == (2, out_ch, size // down, size // down)


@pytest.mark.parametrize("in_ch, k", [(1, 3), (4, 3), (6, 1), (3, 5)])
def test_equalized_conv_scaling_with_unit_weights(in_ch, k):
    conv = EqualizedConv2d(in_ch, 2, k)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.tensor([0.0, 1.5]))
    y = conv(torch.ones(1, in_ch, 9, 9))
    fan_in = in_ch * k * k
    r = k // 2
    interior = y[:, :, r : 9 - r, r : 9 - r]
    assert torch.allclose(interior[:, 0], torch.full_like(interior[:, 0], math.sqrt(fan_in)), atol=1e-5)
    assert torch.allclose(interior[:, 1], torch.full_like(interior[:, 1], math.sqrt(fan_in) + 1.5), atol=1e-5)
    if k > 1:  # zero padding: the corner only sees (r + 1)^2 of the k^2 taps
        corner = y[0, 0, 0, 0]
        assert torch.allclose(corner, torch.tensor(in_ch * (r + 1) ** 2 / math.sqrt(fan_in)), atol=1e-5)


def test_equalized_conv_clamp_and_activation():
    conv = EqualizedConv2d(1, 1, 1, activation="lrelu", conv_clamp=0.5)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.tensor([-10.0, -1.0, 0.1, 10.0]).view(1, 1, 2, 2)
    y = conv(x).flatten()
    expected = torch.tensor([-0.5, -0.2 * LRELU_GAIN, 0.1 * LRELU_GAIN, 0.5])
    assert torch.allclose(y, expected, atol=1e-6)


def test_equalized_conv_invalid_down():
    with pytest.raises(ValueError, match="down"):
        EqualizedConv2d(1, 1, 3, down=4)


def test_bias_act_invalid_activation():
    with pytest.raises(ValueError, match="activation"):
        bias_act(torch.zeros(1, 2), None, "relu")


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), [2.0, 2.0], (1,)])
def test_fir_taps_unit_sum(taps):
    t = fir_taps(taps)
    assert t.dtype == torch.float32
    assert torch.allclose(t.sum(), torch.tensor(1.0))
    assert torch.allclose(t * sum(taps), torch.as_tensor(taps, dtype=torch.float32))


@pytest.mark.parametrize("taps", [(), (1, -1)])
def test_fir_taps_invalid(taps):
    with pytest.raises(ValueError):
        fir_taps(taps)


@pytest.mark.parametrize("mode", ["fir", "bilinear"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 1, 8, 5), (3, 2, 7, 7)])
def test_upsample_shape(mode, shape):
    y = Upsample2x(mode=mode)(torch.randn(*shape))
    b, c, h, w = shape
    assert y.shape == (b, c, 2 * h, 2 * w)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 5, 9)])
def test_upsample_fir_matches_bilinear_interior(shape):
    torch.manual_seed(1)
    x = torch.randn(*shape)
    fir = Upsample2x(mode="fir")(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(fir[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    # the two modes differ at the border (zero padding vs edge replication), so the comparison above is not vacuous
    assert not torch.allclose(fir[..., 0, :], ref[..., 0, :], atol=1e-3)
    assert torch.allclose(Upsample2x(mode="bilinear")(x), ref)


def test_upsample_fir_two_taps_is_nearest():
    x = torch.randn(2, 3, 5, 6)
    y = Upsample2x(mode="fir", taps=(1, 1))(x)
    assert torch.allclose(y, F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 1), (1, 5, 10, 10, 5, 1)])
def test_upsample_constant_stays_constant(taps):
    x = torch.full((1, 2, 8, 8), 0.7)
    y = Upsample2x(mode="fir", taps=taps)(x)
    b = len(taps) // 2
    assert torch.allclose(y[..., b:-b, b:-b], torch.full_like(y[..., b:-b, b:-b], 0.7), atol=1e-6)


@pytest.mark.parametrize("taps", [(1, 2, 1), (1,), (1, 4, 6, 4, 1)])
def test_upsample_odd_taps_raises(taps):
    with pytest.raises(ValueError, match="even"):
        Upsample2x(mode="fir", taps=taps)


@pytest.mark.parametrize("bad", ["nearest", "bicubic", ""])
def test_resample_bad_mode(bad):
    with pytest.raises(ValueError, match="mode"):
        Upsample2x(mode=bad)
    with pytest.raises(ValueError, match="mode"):
        Blur2d(mode=bad)


@pytest.mark.parametrize("mode", ["fir", "bilinear"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("size", [4, 8, 16])
def test_blur_then_strided_conv_halves(mode, k, size):
    blur = Blur2d(mode=mode, kernel_size=k)
    x = torch.randn(2, 3, size, size)
    y = F.conv2d(blur(x), torch.randn(5, 3, k, k), stride=2)
    assert y.shape == (2, 5, size // 2, size // 2)


@pytest.mark.parametrize("mode", ["fir", "bilinear"])
def test_blur_preserves_constant_interior(mode):
    blur = Blur2d(mode=mode, kernel_size=3)
    y = blur(torch.full((1, 1, 12, 12), -0.3))
    assert torch.allclose(y[..., 3:-3, 3:-3], torch.full_like(y[..., 3:-3, 3:-3], -0.3), atol=1e-6)


def test_blur_bilinear_is_box_average():
    # box taps [1, 1] / 2 with kernel_size 1 and no padding: output[i, j] = mean of the 2x2 block at (i, j)
    blur = Blur2d(mode="bilinear", kernel_size=1)
    x = torch.randn(1, 1, 6, 6)
    y = blur(x)
    ref = F.avg_pool2d(x, 2, stride=1)
    assert torch.allclose(y, ref, atol=1e-6)


def _reference_modconv(x, w, layer: ModulatedConv2d, up: bool) -> torch.Tensor:
    """Explicit per-sample weights w'[b, o, i, k, k] = W * gain * s_i, demodulated, one convolution per sample."""
    styles = layer.affine(w)
    outs = []
    for b in range(x.shape[0]):
        wp = layer.weight * layer.weight_gain * styles[b].view(1, -1, 1, 1)
        if layer.demodulate:
            wp = wp / torch.sqrt(wp.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b : b + 1]
        if up and layer.resample_mode == "fir":  # transposed convolution, then the [1, 3, 3, 1] blur (gain 4)
            yb = F.conv_transpose2d(xb, wp.transpose(0, 1), stride=2)
            taps = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 4
            k2 = (taps[:, None] * taps[None, :]).expand(wp.shape[0], 1, 4, 4)
            outs.append(F.conv2d(F.pad(yb, [1, 1, 1, 1]), k2, groups=wp.shape[0]))
            continue
        if up:
            xb = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
        outs.append(F.conv2d(xb, wp, padding=layer.kernel_size // 2))
    return torch.cat(outs)


@pytest.mark.parametrize(
    "in_ch, out_ch, k, demodulate, up, mode",
    [
        (4, 6, 3, True, 1, "fir"),
        (3, 2, 1, True, 1, "fir"),
        (5, 4, 3, True, 2, "fir"),
        (5, 4, 3, True, 2, "bilinear"),
        (4, 2, 1, False, 1, "fir"),
        (4, 3, 3, False, 2, "fir"),
    ],
)
def test_modulated_conv_matches_per_sample_reference(in_ch, out_ch, k, demodulate, up, mode):
    torch.manual_seed(2)
    layer = ModulatedConv2d(in_ch, out_ch, k, w_dim=16, demodulate=demodulate, up=up, resample_mode=mode)
    with torch.no_grad():  # make the styles differ clearly between samples and channels
        layer.affine.weight.mul_(3.0)
    x = torch.randn(3, in_ch, 6, 6)
    w = torch.randn(3, 16)
    y = layer(x, w)
    assert y.shape == (3, out_ch, 6 * up, 6 * up)
    ref = _reference_modconv(x, w, layer, up == 2)
    assert torch.allclose(y, ref, atol=1e-5)


def test_modulated_conv_demodulation_normalises_scale():
    # with demodulation, scaling all styles (affine bias) by a constant leaves the output unchanged
    torch.manual_seed(3)
    layer = ModulatedConv2d(4, 3, 3, w_dim=8, demodulate=True)
    with torch.no_grad():
        layer.affine.weight.zero_()
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    y1 = layer(x, w)
    with torch.no_grad():
        layer.affine.bias.mul_(7.0)
    assert torch.allclose(layer(x, w), y1, atol=1e-5)


def test_modulated_conv_invalid_up():
    with pytest.raises(ValueError, match="up"):
        ModulatedConv2d(2, 2, 3, w_dim=8, up=3)


def _style_layer(strength: float = 0.5) -> StyleConvLayer:
    torch.manual_seed(4)
    layer = StyleConvLayer(4, 4, w_dim=16, resolution=8)
    with torch.no_grad():
        layer.noise_strength.fill_(strength)
    return layer


def test_style_conv_shapes():
    layer = StyleConvLayer(4, 6, w_dim=16, resolution=16, up=2)
    y = layer(torch.randn(2, 4, 8, 8), torch.randn(2, 16))
    assert y.shape == (2, 6, 16, 16)


def test_style_conv_noise_const_deterministic():
    layer = _style_layer()
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    y1 = layer(x, w, noise_mode="const")
    y2 = layer(x, w, noise_mode="const")
    assert torch.equal(y1, y2)
    # the const noise is actually added (differs from no noise)
    assert not torch.allclose(y1, layer(x, w, noise_mode="none"), atol=1e-4)


def test_style_conv_noise_random_differs():
    layer = _style_layer()
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    y1 = layer(x, w, noise_mode="random")
    y2 = layer(x, w, noise_mode="random")
    assert not torch.allclose(y1, y2, atol=1e-4)


def test_style_conv_noise_random_zero_strength_equals_none():
    layer = _style_layer(strength=0.0)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    assert torch.allclose(layer(x, w, noise_mode="random"), layer(x, w, noise_mode="none"))


def test_style_conv_noise_none_ignores_noise():
    layer = _style_layer(strength=3.0)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    y1 = layer(x, w, noise_mode="none")
    with torch.no_grad():
        layer.noise_const.normal_()
        layer.noise_strength.fill_(-5.0)
    y2 = layer(x, w, noise_mode="none")
    assert torch.equal(y1, y2)
    ref = bias_act(layer.conv(x, w), layer.bias, "lrelu")
    assert torch.allclose(y1, ref, atol=1e-6)


@pytest.mark.parametrize("mode", ["Random", "zeros", ""])
def test_style_conv_invalid_noise_mode(mode):
    layer = _style_layer()
    with pytest.raises(ValueError, match="noise_mode"):
        layer(torch.randn(1, 4, 8, 8), torch.randn(1, 16), noise_mode=mode)


def test_to_image_layer_is_unnormalised_1x1():
    torch.manual_seed(5)
    layer = ToImageLayer(4, 3, w_dim=8)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    y = layer(x, w)
    styles = layer.conv.affine(w)
    weight = layer.conv.weight[:, :, 0, 0] * layer.conv.weight_gain  # [3, 4]
    ref = torch.einsum("bihw,oi,bi->bohw", x, weight, styles) + layer.bias.view(1, 3, 1, 1)
    assert y.shape == (2, 3, 5, 5)
    assert torch.allclose(y, ref, atol=1e-5)


# ---------------------------------------------------------------- fast paths against the plain formulas (issue 16.6)
def _two_pass_filter(x, taps, pad, stride=1):
    """The textbook separable filter: explicit zero padding, one 1-D pass per axis, then decimation."""
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = taps.flip(0)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[:, :, ::stride, ::stride]


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 5), (2, 1)])
@pytest.mark.parametrize("pad", [(0, 0), (1, 1), (2, 1), (0, 3), (-1, 0)])
@pytest.mark.parametrize("stride", [1, 2])
def test_separable_filter_matches_two_passes(taps, pad, stride):
    from monai_hqanogan.networks.layers.resample import separable_filter

    torch.manual_seed(0)
    t = fir_taps(taps) * torch.linspace(1.0, 0.5, len(taps))  # not symmetric: a flipped kernel would show
    x = torch.randn(2, 3, 9, 9)
    y = separable_filter(x, t, pad, stride)
    ref = _two_pass_filter(x, t, pad, stride)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skip_conv_decimating_blur_matches_blur_then_strided_conv(dtype):
    torch.manual_seed(0)
    conv = EqualizedConv2d(4, 6, 1, bias=False, down=2).to(dtype)
    x = torch.randn(2, 4, 16, 16, dtype=dtype)
    ref = F.conv2d(conv.blur(x), conv.weight * conv.weight_gain, stride=2)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(conv(x).float(), ref.float(), atol=tol)


@pytest.mark.parametrize("k, down", [(3, 1), (3, 2), (1, 2)])
def test_equalized_conv_gain_scales_output_and_clamp(k, down):
    torch.manual_seed(0)
    conv = EqualizedConv2d(3, 5, k, activation="lrelu", down=down, conv_clamp=0.3)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    gain = math.sqrt(0.5)
    blurred = conv.blur(x) if down == 2 else x
    pre = F.conv2d(blurred, conv.weight * conv.weight_gain, stride=down, padding=0 if down == 2 else k // 2)
    ref = bias_act(pre, conv.bias, "lrelu", 0.3) * gain  # bias_act is the unfused reference
    y = conv(x, gain=gain)
    assert torch.allclose(y, ref, atol=1e-6)
    assert float(y.abs().max()) <= 0.3 * gain + 1e-6  # the clamp scales with the gain, as in StyleGAN2-ADA


@pytest.mark.parametrize("demodulate, up", [(True, 1), (True, 2), (False, 1)])
def test_modulated_conv_bias_and_gain(demodulate, up):
    torch.manual_seed(0)
    layer = ModulatedConv2d(4, 3, 3 if demodulate else 1, 8, demodulate=demodulate, up=up)
    x, w, b = torch.randn(2, 4, 6, 6), torch.randn(2, 8), torch.randn(3)
    y = layer(x, w, bias=b, gain=1.7)
    ref = (layer(x, w) + b.view(1, -1, 1, 1)) * 1.7
    assert torch.allclose(y, ref, atol=1e-5)


def test_style_conv_matches_unfused_formula():
    layer = _style_layer(strength=0.7)
    with torch.no_grad():
        layer.bias.normal_()
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    pre = layer.conv(x, w) + layer.noise_const * layer.noise_strength
    assert torch.allclose(layer(x, w, noise_mode="const"), bias_act(pre, layer.bias, "lrelu"), atol=1e-5)


def test_scaled_act_is_bias_act_with_the_gain_folded_in():
    x = torch.randn(3, 4, 5, 5) * 3
    assert torch.allclose(scaled_act(x * LRELU_GAIN, "lrelu", 2.0), bias_act(x, None, "lrelu", 2.0), atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        scaled_act(x, "relu")


@pytest.mark.parametrize("scale", [0.5, 10.0])  # inside the clamp (skipped) and far outside it (applied)
@pytest.mark.parametrize("channels_last", [False, True])
def test_clamp_act_values_and_gradients_equal_clamp(scale, channels_last):
    torch.manual_seed(0)
    base = torch.randn(2, 3, 5, 5) * scale
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    upstream = torch.randn(2, 3, 5, 5)
    ya, yb = clamp_act(a, 2.0), b.clamp(-2.0, 2.0)
    assert torch.equal(ya, yb)
    (ya * upstream).sum().backward()
    (yb * upstream).sum().backward()
    assert torch.equal(a.grad, b.grad)  # bit-identical, skipped or not
    if scale == 10.0:
        assert float(a.grad.eq(0).float().mean()) > 0.5  # the clamp did cut the gradient where it acted
    assert clamp_act(a, None) is a


def test_clamp_act_propagates_nan():
    x = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    assert torch.isnan(clamp_act(x, 5.0)).any()


def test_discriminator_block_matches_unfused_formula():
    from monai_hqanogan.networks.nets.stylegan2_discriminator import _DiscriminatorBlock

    torch.manual_seed(0)
    block = _DiscriminatorBlock(4, 6, "fir", conv_clamp=256.0)
    with torch.no_grad():
        block.conv0.bias.normal_()
        block.conv1.bias.normal_()
    x = torch.randn(2, 4, 8, 8)

    def unfused(conv, h):
        pre = F.conv2d(conv.blur(h), conv.weight * conv.weight_gain, stride=2) if conv.down == 2 else None
        if pre is None:
            pre = F.conv2d(h, conv.weight * conv.weight_gain, padding=conv.kernel_size // 2)
        return bias_act(pre, conv.bias, conv.activation, conv.conv_clamp)

    ref = (unfused(block.skip, x) + unfused(block.conv1, unfused(block.conv0, x))) * math.sqrt(0.5)
    assert torch.allclose(block(x), ref, atol=1e-5)
