from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_hqanogan.transforms import (
    ToSingleChannel,
    ToSingleChannelD,
    ToSingleChanneld,
    ToSingleChannelDict,
    ensure_finite,
    gan_image_transforms,
)

LUMA = (0.299, 0.587, 0.114)


def _rgb(as_numpy: bool, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0, 255, size=(channels, 5, 6)).astype(np.float32)
    return arr if as_numpy else torch.from_numpy(arr)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_mean_mode(as_numpy):
    img = _rgb(as_numpy)
    out = ToSingleChannel()(img)
    assert isinstance(out, np.ndarray if as_numpy else torch.Tensor)
    assert tuple(out.shape) == (1, 5, 6)
    ref = np.asarray(img).mean(axis=0, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_luminance_mode(as_numpy):
    img = _rgb(as_numpy)
    out = ToSingleChannel(mode="luminance")(img)
    assert isinstance(out, np.ndarray if as_numpy else torch.Tensor)
    arr = np.asarray(img)
    ref = LUMA[0] * arr[0] + LUMA[1] * arr[1] + LUMA[2] * arr[2]
    np.testing.assert_allclose(np.asarray(out)[0], ref, rtol=1e-5)
    # differs from the plain mean for a non-grey image
    assert not np.allclose(np.asarray(out), arr.mean(axis=0, keepdims=True), rtol=1e-3)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_first_mode(as_numpy):
    img = _rgb(as_numpy)
    out = ToSingleChannel(mode="first")(img)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:1])


@pytest.mark.parametrize("mode", ["mean", "luminance", "first"])
def test_rgba_drops_alpha(mode):
    rgba = _rgb(False, channels=4)
    rgba[3] = 1000.0  # an alpha value that would dominate the mean if kept
    out = ToSingleChannel(mode=mode)(rgba)
    ref = ToSingleChannel(mode=mode)(rgba[:3].clone())
    assert torch.allclose(out, ref)
    assert out.max() < 300


def test_grey_stored_as_rgb_is_recovered():
    grey = torch.rand(1, 4, 4) * 255
    rgb = grey.repeat(3, 1, 1)
    for mode in ("mean", "luminance", "first"):
        assert torch.allclose(ToSingleChannel(mode=mode)(rgb), grey, atol=1e-4)


@pytest.mark.parametrize("as_numpy", [True, False])
@pytest.mark.parametrize("mode", ["mean", "luminance", "first"])
def test_single_channel_passthrough(as_numpy, mode):
    img = _rgb(as_numpy, channels=1)
    out = ToSingleChannel(mode=mode)(img)
    assert isinstance(out, np.ndarray if as_numpy else torch.Tensor)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_3d_image_supported():
    vol = torch.rand(3, 2, 3, 4)
    out = ToSingleChannel(mode="luminance")(vol)
    assert out.shape == (1, 2, 3, 4)
    ref = sum(w * vol[i] for i, w in enumerate(LUMA))
    assert torch.allclose(out[0], ref, atol=1e-6)


@pytest.mark.parametrize("mode", ["median", "rgb", ""])
def test_bad_mode_raises(mode):
    with pytest.raises(ValueError, match="mode"):
        ToSingleChannel(mode=mode)
    with pytest.raises(ValueError, match="mode"):
        ToSingleChanneld(keys="image", mode=mode)


@pytest.mark.parametrize("channels", [5, 6])
def test_luminance_needs_three_channels(channels):
    with pytest.raises(ValueError, match="RGB or RGBA"):
        ToSingleChannel(mode="luminance")(torch.rand(channels, 4, 4))
    # "mean" accepts any channel count
    assert ToSingleChannel()(torch.rand(channels, 4, 4)).shape == (1, 4, 4)


@pytest.mark.parametrize("as_numpy", [True, False])
@pytest.mark.parametrize("mode", ["mean", "luminance", "first"])
def test_la_gives_its_grey_channel(as_numpy, mode):
    """A 2-channel image is LA (grey + alpha): the alpha channel is ignored, not averaged into the grey value."""
    grey = np.array([[[0.0, 10.0], [20.0, 30.0]]], dtype=np.float32)
    alpha = np.array([[[255.0, 0.0], [128.0, 255.0]]], dtype=np.float32)  # opacity varying over the image
    la = np.concatenate([grey, alpha])
    out = ToSingleChannel(mode=mode)(la if as_numpy else torch.from_numpy(la))
    assert isinstance(out, np.ndarray if as_numpy else torch.Tensor)
    np.testing.assert_allclose(np.asarray(out), grey)


def test_alpha_switch():
    """``alpha=False`` treats every channel as an intensity; ``alpha=True`` drops the last channel of any image."""
    img = torch.tensor([[[2.0]], [[4.0]], [[9.0]]])  # three channels of one pixel
    assert ToSingleChannel()(img[:2]).item() == 2.0  # LA by default
    assert ToSingleChannel(alpha=False)(img[:2]).item() == 3.0
    assert ToSingleChannel(alpha=False)(torch.cat([img, img[:1]])).item() == pytest.approx(17 / 4)
    assert ToSingleChannel(alpha=True)(img).item() == 3.0
    assert ToSingleChannel()(img).item() == pytest.approx(5.0)  # RGB: no alpha
    with pytest.raises(ValueError, match="alpha"):
        ToSingleChannel(alpha="yes")


def test_too_few_dims_raises():
    with pytest.raises(ValueError, match="channel-first"):
        ToSingleChannel()(torch.rand(5))


@pytest.mark.parametrize("cls", [ToSingleChanneld, ToSingleChannelD, ToSingleChannelDict])
def test_dictionary_version(cls):
    assert cls is ToSingleChanneld
    img = _rgb(True)
    label = np.ones((1, 5, 6))
    data = {"image": img, "other": img.copy(), "label": label}
    out = cls(keys=["image", "other"], mode="first")(data)
    np.testing.assert_array_equal(out["image"], img[:1])
    np.testing.assert_array_equal(out["other"], img[:1])
    assert out["label"] is label
    assert data["image"].shape == (3, 5, 6)  # the input dictionary is not modified


def test_dictionary_missing_key():
    with pytest.raises(KeyError):
        ToSingleChanneld(keys="image")({"x": np.zeros((3, 2, 2))})
    out = ToSingleChanneld(keys="image", allow_missing_keys=True)({"x": np.zeros((3, 2, 2))})
    assert out["x"].shape == (3, 2, 2)


@pytest.mark.parametrize("bad_index, value", [(0, float("nan")), (2, float("inf")), (3, -float("inf"))])
def test_ensure_finite_raises(bad_index, value):
    x = torch.zeros(4, 1, 3, 3)
    x[bad_index, 0, 1, 2] = value
    with pytest.raises(ValueError, match="NaN or inf") as err:
        ensure_finite(x, "training batch", "at iteration 7")
    msg = str(err.value)
    assert f"[{bad_index}]" in msg
    assert "training batch at iteration 7" in msg


def test_ensure_finite_lists_all_bad_items_and_handles_1d():
    x = torch.zeros(5, 2)
    x[1, 0] = float("nan")
    x[4, 1] = float("inf")
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        ensure_finite(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        ensure_finite(torch.tensor([1.0, float("nan")]))


def test_ensure_finite_passes_through():
    x = torch.randn(2, 1, 4, 4)
    assert ensure_finite(x) is x


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_gan_image_transforms_non_square_array(resolution):
    rng = np.random.default_rng(resolution)
    img = rng.uniform(0.5, 2.0, size=(3, 40, 70)).astype(np.float32)
    out = gan_image_transforms(resolution, load=False)({"image": img})["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, resolution, resolution)
    assert out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert float(out.min()) == -1.0
    content_rows = (out[0] > -1.0).any(dim=1)
    n_rows = int(content_rows.sum())
    assert abs(n_rows - round(40 * resolution / 70)) <= 1
    # the content is one centred band; everything above and below it is exactly -1
    idx = content_rows.nonzero().flatten()
    assert int(idx[-1] - idx[0] + 1) == n_rows
    top, bottom = int(idx[0]), resolution - 1 - int(idx[-1])
    assert abs(top - bottom) <= 1
    assert torch.equal(out[0, :top], torch.full_like(out[0, :top], -1.0))
    assert torch.equal(out[0, resolution - bottom :], torch.full_like(out[0, resolution - bottom :], -1.0))
    # the long side is not padded
    assert bool((out[0] > -1.0).any(dim=0).all())


def test_gan_image_transforms_intensity_mapping():
    # min -> -1 and the upper percentile -> +1 (a smooth ramp survives the anti-aliased resize)
    ramp = np.tile(np.linspace(0.0, 100.0, 64, dtype=np.float32), (64, 1))[None]
    out = gan_image_transforms(32, load=False, upper_percentile=100.0)({"image": ramp})["image"]
    assert out.shape == (1, 32, 32)
    # (the outermost pixels are excluded: see test_gan_image_transforms_border_stays_background)
    assert float(out[0, 1:-1, 1].mean()) < -0.85
    assert float(out[0, 1:-1, -2].mean()) > 0.85
    row = out[0, 16, 1:-1]
    assert bool((row[1:] > row[:-1]).all())  # monotone along the ramp


def test_gan_image_transforms_border_stays_background():
    # regression: scaling to [-1, 1] before the zero-padding anti-aliasing filter used to lift the border to -0.8
    img = np.zeros((1, 128, 128), np.float32)
    img[0, 50:70, 50:70] = 100.0  # dark background, one bright square in the middle
    out = gan_image_transforms(32, load=False)({"image": img})["image"]
    border = torch.cat([out[0, 0], out[0, -1], out[0, :, 0], out[0, :, -1]])
    assert torch.allclose(border, torch.full_like(border, -1.0), atol=0.02)


def test_gan_image_transforms_custom_key():
    img = np.random.default_rng(0).uniform(size=(1, 8, 8)).astype(np.float32)
    out = gan_image_transforms(8, keys="img", load=False)({"img": img, "label": 3})
    assert out["img"].shape == (1, 8, 8)
    assert out["label"] == 3


def test_gan_image_transforms_loads_png(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.uniform(30, 250, size=(40, 70)).astype(np.uint8)
    path = tmp_path / "slice.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").save(path)
    out = gan_image_transforms(32)({"image": str(path)})["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 32, 32)
    assert out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    extents = sorted(int((out[0] > -1.0).any(dim=d).sum()) for d in (0, 1))
    assert extents[1] == 32 and abs(extents[0] - round(40 * 32 / 70)) <= 1


@pytest.mark.parametrize("bad", [12, 4, 2048, 0])
def test_gan_image_transforms_bad_resolution(bad):
    with pytest.raises(ValueError, match="power of two"):
        gan_image_transforms(bad)


def test_dictionary_version_has_the_alpha_switch():
    """``ToSingleChanneld`` passes ``alpha`` on to ``ToSingleChannel`` (it had no such argument)."""
    img = np.array([[[2.0]], [[4.0]], [[9.0]]], np.float32)  # three channels of one pixel
    assert ToSingleChanneld("image")({"image": img[:2]})["image"].item() == 2.0  # LA by default
    assert ToSingleChanneld("image", alpha=False)({"image": img[:2]})["image"].item() == 3.0
    assert ToSingleChanneld("image", alpha=True)({"image": img})["image"].item() == 3.0
    with pytest.raises(ValueError, match="alpha"):
        ToSingleChanneld("image", alpha="yes")


def _bundle_preprocessing():
    """The bundle's inference preprocessing (``inference.json``'s ``preprocessing``), as MONAI Label runs it too."""
    from monai.bundle import ConfigParser

    from tests.bundle_utils import BUNDLE

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    return parser.get_parsed_content("preprocessing")


@pytest.mark.parametrize("mode", ["P", "CMYK"])
def test_training_and_inference_read_palette_and_cmyk_images_as_the_grey_they_show(mode, tmp_path):
    """Training (``gan_image_transforms``) and the bundle's inference read a palette image as its palette indices
    and a CMYK JPEG as ink (taken as RGBA); both now give the grey of the colours shown, as ``prepare`` stores them."""
    rng = np.random.default_rng(3)
    shown = rng.integers(0, 256, (24, 40)).astype(np.uint8)
    path = tmp_path / f"picture_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    if mode == "CMYK":
        Image.fromarray(np.stack([shown] * 3, axis=-1)).convert("CMYK").save(path, quality=100)
    else:
        indices = (255 - shown).astype(np.uint8)  # index i shows grey 255 - i: indices are the picture's negative
        picture = Image.fromarray(indices, mode="L").convert("P")
        picture.putpalette([v for i in range(256) for v in (255 - i,) * 3])
        picture.save(path)
    assert Image.open(path).mode == mode
    expected_grey = np.asarray(Image.open(path).convert("RGB"), np.float32).mean(axis=-1)  # what a viewer shows
    assert np.abs(expected_grey - shown).mean() < 1.5  # (JPEG rounding only)
    trained_on = gan_image_transforms(32)({"image": str(path)})["image"]
    reference = gan_image_transforms(32, load=False)({"image": expected_grey.T[None].copy()})["image"]  # (W, H)
    np.testing.assert_allclose(trained_on, reference, atol=1e-5)
    loaded = ToSingleChannel()(_bundle_preprocessing()({"image": str(path)})["image"])  # the inferer's first step
    np.testing.assert_allclose(np.asarray(loaded)[0], expected_grey.T, atol=1e-4)  # MONAI's (W, H) layout
