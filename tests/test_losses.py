from __future__ import annotations

import math

import pytest
import torch

from monai_hqanogan.losses import (
    PathLengthPenalty,
    discriminator_logistic_loss,
    generator_logistic_loss,
    r1_penalty,
)
from monai_hqanogan.networks import StyleGAN2Discriminator, StyleGAN2Generator

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


@pytest.mark.parametrize("logits", [[0.0], [1.0, -2.0, 3.5], [[-0.5], [0.25]], [10.0, -10.0]])
def test_generator_logistic_loss(logits):
    t = torch.tensor(logits)
    flat = t.flatten().tolist()
    expected = sum(_softplus(-v) for v in flat) / len(flat)
    out = generator_logistic_loss(t)
    assert out.ndim == 0 and out.dtype == torch.float32
    assert float(out) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "real, fake", [([0.0], [0.0]), ([2.0, -1.0], [0.5, 3.0, -4.0]), ([[1.5], [0.3]], [[-0.7], [2.2]])]
)
def test_discriminator_logistic_loss(real, fake):
    r, f = torch.tensor(real), torch.tensor(fake)
    rf, ff = r.flatten().tolist(), f.flatten().tolist()
    expected = sum(_softplus(v) for v in ff) / len(ff) + sum(_softplus(-v) for v in rf) / len(rf)
    assert float(discriminator_logistic_loss(r, f)) == pytest.approx(expected, rel=1e-6)


def test_logistic_losses_half_precision_inputs():
    logits = torch.tensor([1.0, -1.0], dtype=torch.float16)
    assert generator_logistic_loss(logits).dtype == torch.float32
    assert discriminator_logistic_loss(logits, logits).dtype == torch.float32
    expected = (_softplus(1.0) + _softplus(-1.0)) / 2 * 2
    assert float(discriminator_logistic_loss(logits, logits)) == pytest.approx(expected, rel=1e-3)


def test_logistic_losses_gradient_direction():
    real = torch.zeros(4, 1, requires_grad=True)
    fake = torch.zeros(4, 1, requires_grad=True)
    discriminator_logistic_loss(real, fake).backward()
    # D wants real logits up and fake logits down: d loss / d real = -sigmoid(0) / 4, d loss / d fake = +1/8
    assert torch.allclose(real.grad, torch.full_like(real, -0.125))
    assert torch.allclose(fake.grad, torch.full_like(fake, 0.125))
    fake_g = torch.zeros(4, 1, requires_grad=True)
    generator_logistic_loss(fake_g).backward()
    assert torch.allclose(fake_g.grad, torch.full_like(fake_g, -0.125))


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (2, 3, 5, 6)])
def test_r1_linear_discriminator(shape):
    torch.manual_seed(0)
    a = torch.randn(*shape[1:])
    x = torch.randn(*shape, requires_grad=True)
    logits = (a * x).sum(dim=(1, 2, 3))
    pen = r1_penalty(logits, x)
    assert pen.shape == (shape[0],)
    assert torch.allclose(pen, a.square().sum().expand(shape[0]), rtol=1e-6)


def test_r1_quadratic_discriminator_is_per_image():
    # D(x) = sum(x^2): grad 2x, penalty 4 * sum(x_i^2) for each image separately
    x = torch.randn(4, 1, 3, 3, requires_grad=True)
    pen = r1_penalty(x.square().sum(dim=(1, 2, 3)), x)
    assert torch.allclose(pen, 4 * x.detach().square().sum(dim=(1, 2, 3)), rtol=1e-5)


def _tiny_d(mbstd: int) -> StyleGAN2Discriminator:
    torch.manual_seed(1)
    return StyleGAN2Discriminator(resolution=8, channel_base=128, channel_max=16, mbstd_num_channels=mbstd)


def test_r1_stylegan2_discriminator_matches_per_sample_loop():
    d = _tiny_d(mbstd=0)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    pen = r1_penalty(d(x), x)
    ref = []
    for i in range(3):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi).sum(), xi)
        ref.append(g.square().sum())
    assert torch.allclose(pen, torch.stack(ref), rtol=1e-4, atol=1e-7)
    assert (pen > 0).all()


def test_r1_stylegan2_discriminator_matches_jacobian_with_mbstd():
    d = _tiny_d(mbstd=1)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    pen = r1_penalty(d(x), x)
    jac = torch.autograd.functional.jacobian(lambda inp: d(inp).sum(), x.detach())
    assert torch.allclose(pen, jac.square().flatten(1).sum(dim=1), rtol=1e-4, atol=1e-7)


def test_r1_penalty_backpropagates_into_d():
    d = _tiny_d(mbstd=1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    r1_penalty(d(x), x).mean().backward()
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert d.from_image.weight.grad is not None and d.from_image.weight.grad.abs().sum() > 0


def test_r1_penalty_requires_grad():
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(x.sum(dim=(1, 2, 3)), x)


# ---------------------------------------------------------------------------------------------- path length


def _linear_generator(ws: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bkj,kjchw->bchw", ws, m)


def _expected_lengths(noise: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    grad = torch.einsum("bchw,kjchw->bkj", noise, m)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def test_path_length_pl_mean_starts_at_zero_and_is_a_buffer():
    plp = PathLengthPenalty()
    assert float(plp.pl_mean) == 0.0
    assert "pl_mean" in plp.state_dict()
    assert len(list(plp.parameters())) == 0


@pytest.mark.parametrize("decay", [0.01, 0.5])
def test_path_length_exact_for_linear_generator(decay):
    torch.manual_seed(2)
    b, k, j, c, h, w = 3, 2, 5, 1, 4, 6
    m = torch.randn(k, j, c, h, w)
    ws = torch.randn(b, k, j, requires_grad=True)
    images = _linear_generator(ws, m)
    plp = PathLengthPenalty(decay=decay)

    torch.manual_seed(123)
    pen = plp(images, ws)
    torch.manual_seed(123)
    noise = torch.randn_like(images) / math.sqrt(h * w)  # the same draw as inside the penalty
    lengths = _expected_lengths(noise, m)

    expected_mean = decay * lengths.mean()
    assert float(plp.pl_mean) == pytest.approx(float(expected_mean), rel=1e-5)
    assert pen.shape == (b,)
    assert torch.allclose(pen, (lengths - expected_mean).square(), rtol=1e-4, atol=1e-7)

    # a second call moves pl_mean by decay * (new mean - old mean)
    images2 = _linear_generator(ws, m)
    torch.manual_seed(7)
    plp(images2, ws)
    torch.manual_seed(7)
    lengths2 = _expected_lengths(torch.randn_like(images2) / math.sqrt(h * w), m)
    expected_mean2 = expected_mean + decay * (lengths2.mean() - expected_mean)
    assert float(plp.pl_mean) == pytest.approx(float(expected_mean2), rel=1e-5)


@pytest.mark.parametrize("gain", [0.5, 3.0])
def test_path_length_orthogonal_jacobian(gain):
    # image = gain * ws reshaped: the Jacobian is gain * identity, so |J^T y| ~= gain for y ~ N(0, I / (H W))
    torch.manual_seed(3)
    h = w = 32
    ws = torch.randn(4, 1, h * w, requires_grad=True)
    images = gain * ws.view(4, 1, h, w)
    plp = PathLengthPenalty(decay=1.0)
    pen = plp(images, ws)
    assert float(plp.pl_mean) == pytest.approx(gain, rel=0.05)
    assert (pen < (0.1 * gain) ** 2).all()


def test_path_length_stylegan2_generator_gradients():
    torch.manual_seed(4)
    g = StyleGAN2Generator(resolution=8, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
    ws = g.mapping(torch.randn(3, g.z_dim))
    images = g.synthesis(ws)
    plp = PathLengthPenalty()
    pen = plp(images, ws)
    assert pen.shape == (3,)
    assert torch.isfinite(pen).all() and (pen >= 0).all()
    assert float(plp.pl_mean) > 0
    pen.mean().backward()
    # the penalty reaches the synthesis weights and, through ws, the mapping network that produced ws
    synth = [p.grad for p in g.synthesis.parameters() if p.grad is not None]
    assert synth and any(gr.abs().sum() > 0 for gr in synth)
    for layer in g.mapping.layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_path_length_state_dict_round_trip():
    plp = PathLengthPenalty()
    plp.pl_mean.fill_(0.42)
    other = PathLengthPenalty()
    other.load_state_dict(plp.state_dict())
    assert float(other.pl_mean) == pytest.approx(0.42)
