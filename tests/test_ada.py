from __future__ import annotations

import itertools

import pytest
import torch

from monai_hqanogan.losses import discriminator_logistic_loss
from monai_hqanogan.networks import StyleGAN2Discriminator
from monai_hqanogan.transforms import ADA_MODES, AdaptiveAugmentController, AdaptiveAugmentPipe
from monai_hqanogan.transforms.ada import GEOMETRIC_OPS, INTENSITY_OPS

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save


ALL_OPS = GEOMETRIC_OPS + INTENSITY_OPS


def _single_op_pipe(op: str, p: float = 1.0, **kwargs) -> AdaptiveAugmentPipe:
    multipliers = {name: 0.0 for name in ALL_OPS}
    multipliers[op] = 1.0
    return AdaptiveAugmentPipe(p=p, **multipliers, **kwargs)


def _images(batch: int = 8, size: int = 16, channels: int = 1, seed: int = 0, lo: float = -0.9, hi: float = 0.9):
    """Non-symmetric random images inside (lo, hi)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g) * (hi - lo) + lo


def test_ops_constants():
    assert set(ALL_OPS) == {
        "xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast", "lumaflip",
    }  # fmt: skip
    assert ADA_MODES == ("adaptive", "fixed", "off")


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 3, 8, 12)])
def test_p_zero_is_identity(shape):
    pipe = AdaptiveAugmentPipe(p=0.0)
    x = torch.randn(*shape)
    assert pipe(x) is x
    # a call-time override of 0 also returns the input, even when the stored p is 1
    assert AdaptiveAugmentPipe(p=1.0)(x, p=0.0) is x


def test_p_override_applies_augmentation():
    pipe = _single_op_pipe("brightness", p=0.0)
    x = _images(4)
    assert torch.equal(pipe(x), x)
    y = pipe(x, p=1.0)
    assert all(not torch.allclose(y[i], x[i]) for i in range(4))


@pytest.mark.parametrize("op", ALL_OPS)
def test_single_op_properties(op):
    torch.manual_seed(0)
    pipe = _single_op_pipe(op, clamp=True)
    x = _images(8, lo=-1.0, hi=1.0).requires_grad_(True)
    y = pipe(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert y.min() >= -1.0 - 1e-5 and y.max() <= 1.0 + 1e-5
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    differs = [(not torch.allclose(y[i], x[i], atol=1e-4)) for i in range(x.shape[0])]
    assert any(differs), f"{op} at p=1 left every image unchanged"


def test_all_multipliers_zero_is_identity():
    pipe = AdaptiveAugmentPipe(p=1.0, **{name: 0.0 for name in ALL_OPS})
    x = _images(4)
    assert torch.equal(pipe(x), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_xflip_exact(channels):
    torch.manual_seed(1)
    x = _images(16, channels=channels)
    y = _single_op_pipe("xflip")(x)
    flipped = [torch.allclose(y[i], torch.flip(x[i], dims=[2]), atol=1e-5) for i in range(16)]
    kept = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is either flipped exactly or left as it is
    assert 0 < sum(flipped) < 16


@pytest.mark.parametrize("op", ["xflip", "lumaflip"])
@pytest.mark.parametrize("p", [0.4, 1.0])
def test_flips_change_an_image_with_probability_half_p(op, p):
    """StyleGAN2-ADA draws a flip's parameter from {0, 1} once the operation is chosen (probability ``p``): an image
    is flipped with probability ``p / 2``, so even at ``p = 1`` half the images D sees are not flipped."""
    torch.manual_seed(11)
    x = _images(4000, size=4, lo=0.1, hi=0.9)  # positive and not symmetric: a flip always changes the image
    y = _single_op_pipe(op, p=p)(x)
    changed = float((y - x).flatten(1).abs().amax(dim=1).gt(1e-6).float().mean())
    assert abs(changed - p / 2) < 0.03, (op, p, changed)


def test_lumaflip_negates_a_grey_image_around_the_middle_and_the_luma_axis_of_rgb():
    torch.manual_seed(12)
    grey = _images(64)
    y = _single_op_pipe("lumaflip")(grey)
    flipped = torch.isclose(y, -grey, atol=1e-6).flatten(1).all(dim=1)
    assert (flipped | torch.isclose(y, grey).flatten(1).all(dim=1)).all() and 0 < int(flipped.sum()) < 64
    torch.manual_seed(12)
    y01 = _single_op_pipe("lumaflip", value_range=(0.0, 1.0))(grey * 0.5 + 0.5)  # the same draws, data in [0, 1]
    torch.testing.assert_close(y01[flipped], 1 - (grey[flipped] * 0.5 + 0.5))
    rgb = _images(64, channels=3)
    y = _single_op_pipe("lumaflip")(rgb)
    changed = (y - rgb).flatten(1).abs().amax(dim=1) > 1e-6
    # the channel mean (luma) changes sign, the differences between channels (chroma) stay
    torch.testing.assert_close(y[changed].mean(dim=1), -rgb[changed].mean(dim=1))
    torch.testing.assert_close(y[changed] - y[changed].mean(dim=1, keepdim=True),
                               rgb[changed] - rgb[changed].mean(dim=1, keepdim=True))  # fmt: skip
    assert 0 < int(changed.sum()) < 64


def test_clamping_does_not_change_when_augmentation_starts():
    """D's input range is the same at p = 0 and p > 0: by default nothing is clamped (as in the paper: a fake
    outside [-1, 1] reaches D as it is), and with ``clamp=True`` every output is clamped, even at p = 0."""
    x = torch.linspace(-1.5, 1.5, 64).reshape(1, 1, 8, 8).repeat(4, 1, 1, 1)
    geometric = {name: 0.0 for name in INTENSITY_OPS}
    for p in (0.0, 1e-9):  # p > 0 but no image chosen
        assert torch.equal(AdaptiveAugmentPipe(p=p)(x), x)
        torch.testing.assert_close(AdaptiveAugmentPipe(p=p, clamp=True)(x), x.clamp(-1, 1))
        torch.testing.assert_close(AdaptiveAugmentPipe(p=p, clamp=True, **geometric)(x), x.clamp(-1, 1))
    with pytest.raises(ValueError, match="clamp=True needs a value_range"):
        AdaptiveAugmentPipe(clamp=True, value_range=None)


def test_rotate90_exact_rotations():
    torch.manual_seed(2)
    x = _images(8, size=12)
    y = _single_op_pipe("rotate90")(x)
    used = set()
    for i in range(8):
        matches = [k for k in range(4) if torch.allclose(y[i], torch.rot90(x[i], k, dims=[1, 2]), atol=1e-5)]
        assert len(matches) == 1, f"image {i} is not an exact 90-degree rotation"
        used.add(matches[0])
    assert len(used) > 1


def test_xint_integer_shift():
    torch.manual_seed(3)
    size = 16
    max_shift = round(0.125 * size)
    x = _images(8, size=size)
    y = _single_op_pipe("xint")(x)
    b = max_shift
    nonzero = 0
    for i in range(8):
        found = None
        for dy, dx in itertools.product(range(-max_shift, max_shift + 1), repeat=2):
            rolled = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
            if torch.allclose(y[i, :, b:-b, b:-b], rolled[:, b:-b, b:-b], atol=1e-5):
                found = (dy, dx)
                break
        assert found is not None, f"image {i} is not an integer shift of its input"
        nonzero += found != (0, 0)
    assert nonzero > 0


@pytest.mark.parametrize("op", ["brightness", "contrast"])
def test_intensity_ops_clamped(op):
    x = torch.sign(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4)))
    # values at +-1: any brightness shift or contrast factor > 1 leaves the range unless clamped
    torch.manual_seed(4)
    y = _single_op_pipe(op, clamp=True)(x)
    assert y.min() >= -1.0 and y.max() <= 1.0
    torch.manual_seed(4)
    unclamped = _single_op_pipe(op)(x)
    assert unclamped.abs().max() > 1.0 + 1e-3
    # same random draws: the clamped result is the unclamped one clamped
    assert torch.allclose(y, unclamped.clamp(-1, 1), atol=1e-6)


def test_custom_value_range_clamp():
    torch.manual_seed(5)
    x = torch.rand(8, 1, 8, 8)
    y = _single_op_pipe("brightness", value_range=(0.0, 1.0), clamp=True)(x)
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not torch.allclose(y, x)


def test_brightness_adds_a_constant_per_image():
    torch.manual_seed(6)
    x = _images(8)
    y = _single_op_pipe("brightness", value_range=None)(x)
    diff = (y - x).flatten(1)
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-6)
    assert diff[:, 0].abs().max() > 0.0


@pytest.mark.parametrize("value_range, mid", [((-1.0, 1.0), 0.0), ((0.0, 1.0), 0.5), (None, 0.0)])
def test_contrast_scales_around_middle(value_range, mid):
    torch.manual_seed(7)
    x = _images(8, lo=mid - 0.1, hi=mid + 0.1)
    x[:, :, 0, 0] = mid  # the middle value is a fixed point of the contrast operation
    y = _single_op_pipe("contrast", value_range=value_range)(x)
    assert torch.allclose(y[:, :, 0, 0], torch.full_like(y[:, :, 0, 0], mid), atol=1e-6)
    factors = ((y - mid).flatten(1)[:, 1:] / (x - mid).flatten(1)[:, 1:]).abs()
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), rtol=1e-3)
    assert (factors[:, 0] - 1).abs().max() > 1e-3


def test_geometric_ops_not_clamped_when_value_range_none():
    # geometric ops only interpolate, so they stay inside the input range even without clamping
    torch.manual_seed(8)
    x = _images(8, lo=-0.5, hi=0.5)
    y = _single_op_pipe("rotate", value_range=None)(x)
    assert y.min() >= -0.5 - 1e-5 and y.max() <= 0.5 + 1e-5


def test_all_ops_together():
    torch.manual_seed(9)
    pipe = AdaptiveAugmentPipe(p=0.8, clamp=True)
    x = _images(6, channels=2).requires_grad_(True)
    y = pipe(x)
    assert y.shape == x.shape
    assert y.min() >= -1.0 and y.max() <= 1.0
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_probability_controls_fraction_of_images():
    torch.manual_seed(10)
    pipe = _single_op_pipe("brightness", p=0.3, value_range=None)
    x = torch.zeros(2000, 1, 2, 2)
    changed = (pipe(x).flatten(1).abs().amax(dim=1) > 0).float().mean()
    assert 0.25 < float(changed) < 0.35


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_out_of_range_raises(p):
    with pytest.raises(ValueError, match="p must be"):
        AdaptiveAugmentPipe(p=p)


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 1, 1, 16, 16)])
def test_wrong_ndim_raises(shape):
    with pytest.raises(ValueError):
        AdaptiveAugmentPipe(p=0.5)(torch.zeros(*shape))


def test_p_buffer_state_dict_round_trip():
    pipe = AdaptiveAugmentPipe(p=0.0)
    pipe.p.fill_(0.37)
    state = pipe.state_dict()
    assert "p" in state
    other = AdaptiveAugmentPipe(p=0.0)
    other.load_state_dict(state)
    assert float(other.p) == pytest.approx(0.37)
    assert "p=0.3700" in repr(other)


# ---------------------------------------------------------------------------------------------- controller


def _feed(ctl: AdaptiveAugmentController, value: float, steps: int, batch: int = 8) -> list[bool]:
    return [ctl.accumulate(torch.full((batch, 1), value)) or ctl.step() for _ in range(steps)]


@pytest.mark.parametrize("interval, batch, speed_kimg", [(4, 8, 1.0), (2, 5, 0.1), (1, 16, 10.0)])
def test_controller_adaptive_raises_p(interval, batch, speed_kimg):
    pipe = AdaptiveAugmentPipe(p=0.0)
    ctl = AdaptiveAugmentController(pipe, mode="adaptive", interval=interval, speed_kimg=speed_kimg)
    adjusted = _feed(ctl, 2.0, interval, batch)
    assert adjusted == [False] * (interval - 1) + [True]
    assert ctl.rt == 1.0
    expected = min(1.0, interval * batch / (speed_kimg * 1000))
    assert ctl.p == pytest.approx(expected, abs=1e-6)
    assert float(pipe.p) == ctl.p
    assert (ctl.sign_sum, ctl.count, ctl.steps) == (0.0, 0, 0)  # statistics reset after the adjustment


def test_controller_adaptive_negative_logits_keep_zero():
    pipe = AdaptiveAugmentPipe(p=0.0)
    ctl = AdaptiveAugmentController(pipe, interval=2, speed_kimg=0.01)
    _feed(ctl, -1.0, 6)
    assert ctl.p == 0.0
    assert ctl.rt == -1.0


def test_controller_adaptive_lowers_p_and_clamps():
    pipe = AdaptiveAugmentPipe(p=0.5)
    ctl = AdaptiveAugmentController(pipe, interval=1, speed_kimg=0.08)  # 8 images -> 0.1 per step
    _feed(ctl, -3.0, 1)
    assert ctl.p == pytest.approx(0.4, abs=1e-6)
    _feed(ctl, 3.0, 10)
    assert ctl.p == 1.0


def test_controller_rt_below_target_lowers_p():
    pipe = AdaptiveAugmentPipe(p=0.5)
    ctl = AdaptiveAugmentController(pipe, target=0.6, interval=1, speed_kimg=1.0)
    # 6 positive and 4 negative logits: r_t = 0.2 < 0.6 although most logits are positive
    ctl.accumulate(torch.tensor([1.0] * 6 + [-1.0] * 4))
    assert ctl.step()
    assert ctl.rt == pytest.approx(0.2)
    assert ctl.p == pytest.approx(0.5 - 10 / 1000)


def test_controller_fixed_keeps_p():
    pipe = AdaptiveAugmentPipe(p=0.3)
    ctl = AdaptiveAugmentController(pipe, mode="fixed", interval=2, speed_kimg=0.01)
    assert _feed(ctl, 1.0, 4) == [False, True, False, True]
    assert ctl.p == pytest.approx(0.3)
    assert ctl.rt == 1.0


def test_controller_off_sets_zero():
    pipe = AdaptiveAugmentPipe(p=0.7)
    ctl = AdaptiveAugmentController(pipe, mode="off", interval=1, speed_kimg=0.01)
    assert float(pipe.p) == 0.0
    _feed(ctl, 1.0, 3)
    assert ctl.p == 0.0


def test_controller_step_without_data():
    ctl = AdaptiveAugmentController(AdaptiveAugmentPipe(p=0.2), interval=1)
    assert ctl.step() is False
    assert ctl.p == pytest.approx(0.2)
    assert ctl.rt is None


@pytest.mark.parametrize(
    "kwargs", [{"mode": "auto"}, {"mode": ""}, {"interval": 0}, {"speed_kimg": 0.0}, {"speed_kimg": -1.0}]
)
def test_controller_invalid_args(kwargs):
    with pytest.raises(ValueError):
        AdaptiveAugmentController(AdaptiveAugmentPipe(), **kwargs)


def test_controller_state_dict_round_trip_mid_interval():
    pipe_a = AdaptiveAugmentPipe(p=0.25)
    ctl_a = AdaptiveAugmentController(pipe_a, interval=4, speed_kimg=1.0)
    ctl_a.accumulate(torch.tensor([[1.0], [-1.0], [2.0]]))
    ctl_a.accumulate(torch.tensor([[3.0], [0.5], [-0.5]]))
    state = ctl_a.state_dict()
    assert state["steps"] == 2 and state["count"] == 6 and state["sign_sum"] == 2.0
    assert state["p"] == pytest.approx(0.25)

    pipe_b = AdaptiveAugmentPipe(p=0.0)
    ctl_b = AdaptiveAugmentController(pipe_b, interval=4, speed_kimg=1.0)
    ctl_b.load_state_dict(state)
    assert ctl_b.p == pytest.approx(0.25)
    assert (ctl_b.sign_sum, ctl_b.count, ctl_b.steps) == (2.0, 6, 2)

    for ctl in (ctl_a, ctl_b):
        ctl.accumulate(torch.tensor([[1.0], [1.0], [1.0]]))
        assert ctl.step() is False
        ctl.accumulate(torch.tensor([[1.0], [1.0], [1.0]]))
        assert ctl.step() is True
    assert ctl_a.rt == ctl_b.rt == pytest.approx(8 / 12)
    assert ctl_a.p == ctl_b.p == pytest.approx(0.25 + 12 / 1000)
    assert ctl_b.state_dict()["rt"] == pytest.approx(8 / 12)


# ---------------------------------------------------------------------------------------------- integration


def _smooth_reals() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    disk = torch.where(xx**2 + yy**2 < 0.4, 0.8, -0.8)
    ramp = 0.9 * xx
    return torch.stack([disk, ramp])[:, None]


def _train_with_ada(overfit: bool, seed: int = 0, steps: int = 60, batch: int = 4) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    d = StyleGAN2Discriminator(resolution=16, channel_base=256, channel_max=32)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.0, 0.99))
    pipe = AdaptiveAugmentPipe(p=0.0)
    # 4 steps x 4 images = 16 images per adjustment; speed 0.4 kimg -> p moves by 0.04 per adjustment
    ctl = AdaptiveAugmentController(pipe, target=0.6, interval=4, speed_kimg=0.4)
    fixed_reals = _smooth_reals().repeat(batch // 2, 1, 1, 1)  # two fixed real images
    history = []
    for _ in range(steps):
        real = fixed_reals if overfit else torch.rand(batch, 1, 16, 16) * 2 - 1
        fake = torch.rand(batch, 1, 16, 16) * 2 - 1
        real_logits = d(pipe(real))
        loss = discriminator_logistic_loss(real_logits, d(pipe(fake)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctl.accumulate(real_logits)
        if ctl.step():
            history.append(ctl.p)
    return ctl.p, history


def test_ada_p_rises_when_d_overfits():
    p, history = _train_with_ada(overfit=True)
    assert len(history) == 15
    assert p > 0.2
    assert history[-1] > history[0]


def test_ada_p_stays_near_zero_when_d_cannot_tell():
    p, history = _train_with_ada(overfit=False)
    assert len(history) == 15
    assert p < 0.05
    assert max(history) <= 0.1


def test_controller_does_not_move_p_when_rt_is_exactly_on_target():
    c = AdaptiveAugmentController(AdaptiveAugmentPipe(p=0.5), interval=1, speed_kimg=1.0)
    c.accumulate(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0]))  # r_t = 3/5 = 0.6 = target
    assert c.step() and c.rt == pytest.approx(0.6)
    assert c.p == pytest.approx(0.5)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_pipe_refuses_an_out_of_range_p_override(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        AdaptiveAugmentPipe()(torch.zeros(2, 1, 8, 8), p=p)
