from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.baselines import (
    ConvAutoencoderBaseline,
    MeanIntensityBaseline,
    PCABaseline,
    ReferenceBaseline,
)
from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.metrics import compute_image_auroc, compute_pixel_auroc

SIZE = 16  # the size of conftest.py's train_images and toy_set
TINY_AE = {"image_size": SIZE, "levels": 2, "base_channels": 8, "max_channels": 16, "latent_dim": 16}


@pytest.fixture(scope="module")
def trained_ae(train_images):
    return ConvAutoencoderBaseline(**TINY_AE).fit(train_images[:128], epochs=20, batch_size=16, progress=False)


def _flat_level_images(levels, size=SIZE, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size)
    return (base + noise * torch.randn(base.shape, generator=g)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# mean intensity


def test_mean_intensity_two_sided_zscore():
    fit_images = _flat_level_images([-0.1, -0.05, 0.0, 0.05, 0.1])
    baseline = MeanIntensityBaseline().fit(fit_images)
    means = torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1], dtype=torch.float64)
    assert float(baseline.intensity_mean) == pytest.approx(0.0, abs=1e-7)
    assert float(baseline.intensity_std) == pytest.approx(float(means.std()), rel=1e-6)
    test = _flat_level_images([0.0, 0.5, -0.5, 0.9])
    scores = baseline.score(test)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    expected = (torch.tensor([0.0, 0.5, -0.5, 0.9]) / means.std()).abs().float()
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    # brighter and darker images both score above an image at the normal level
    assert scores[1] > scores[0] and scores[2] > scores[0] and scores[3] > scores[1]
    assert baseline.anomaly_map(test) is None


@pytest.mark.parametrize("direction, order", [("brighter", [2, 0, 1]), ("darker", [1, 0, 2])])
def test_mean_intensity_one_sided(direction, order):
    baseline = MeanIntensityBaseline(direction=direction).fit(_flat_level_images([-0.1, 0.0, 0.1], noise=0.01))
    scores = baseline.score(_flat_level_images([0.0, -0.6, 0.6]))
    assert torch.argsort(scores, descending=True).tolist() == order


def test_mean_intensity_separates_brighter_images_on_toy_data():
    fit_images = make_ellipse_images(64, SIZE, seed=1)
    bright = (make_ellipse_images(32, SIZE, seed=2) + 0.4).clamp(-1, 1)
    normal = make_ellipse_images(32, SIZE, seed=3)
    baseline = MeanIntensityBaseline(foreground_threshold=-0.9).fit(fit_images)
    scores = baseline.score(torch.cat([normal, bright]))
    assert compute_image_auroc(scores, torch.cat([torch.zeros(32), torch.ones(32)])) > 0.9


def test_mean_intensity_foreground():
    img = torch.full((1, 1, 8, 8), -1.0)
    img[..., 2:6, 2:6] = 0.5
    empty = torch.full((1, 1, 8, 8), -1.0)
    baseline = MeanIntensityBaseline(foreground_threshold=-0.9)
    values = baseline.mean_intensity(torch.cat([img, empty]))
    assert values.tolist() == pytest.approx([0.5, -1.0])  # foreground only; no foreground: all pixels
    assert MeanIntensityBaseline().mean_intensity(img).item() == pytest.approx((16 * 0.5 - 48) / 64)


# ---------------------------------------------------------------------------------------------------------------------
# PCA


def test_pca_matches_sklearn(train_images, toy_set):
    sk_decomposition = pytest.importorskip("sklearn.decomposition")
    images = toy_set[0]
    baseline = PCABaseline(n_components=12).fit(train_images)
    assert baseline.num_components == 12
    reference = sk_decomposition.PCA(n_components=12, svd_solver="full").fit(train_images.flatten(1).double().numpy())
    flat = images.flatten(1).double().numpy()
    expected = torch.from_numpy(reference.inverse_transform(reference.transform(flat))).float().view(images.shape)
    torch.testing.assert_close(baseline.reconstruct(images), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        baseline.explained_variance, torch.from_numpy(reference.explained_variance_).float(), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(baseline.score(images), (images - expected).square().flatten(1).mean(1))


def test_pca_variance_fraction(train_images):
    baseline = PCABaseline(n_components=0.9).fit(train_images)
    ratio, variance = float(baseline.explained_variance_ratio), baseline.explained_variance.double()
    assert ratio >= 0.9
    # the fewest components: without the last one the fraction is not reached
    assert ratio * float(variance[:-1].sum() / variance.sum()) < 0.9
    assert PCABaseline(n_components=10_000).fit(train_images[:20]).num_components == 19  # capped at N - 1
    more_images_than_pixels = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert PCABaseline(n_components=5).fit(more_images_than_pixels).num_components == 4


def test_pca_localises_lesions(train_images, toy_set):
    images, labels, masks = toy_set
    baseline = PCABaseline(n_components=0.99).fit(train_images)
    scores = baseline.score(images)
    assert scores[labels == 0].mean() < scores[labels == 1].mean()
    assert compute_image_auroc(scores, labels) > 0.85
    maps = baseline.anomaly_map(images)
    assert maps.shape == (64, 1, SIZE, SIZE) and (maps >= 0).all()
    lesion_maps, lesion_masks = maps[labels == 1], masks[labels == 1]
    inside = (lesion_maps * lesion_masks).flatten(1).sum(1) / lesion_masks.flatten(1).sum(1)
    outside = (lesion_maps * (1 - lesion_masks)).flatten(1).sum(1) / (1 - lesion_masks).flatten(1).sum(1)
    assert (inside > 1.5 * outside).all()
    peak = lesion_maps.flatten(1).argmax(dim=1)
    peak_in_mask = lesion_masks.flatten(1)[torch.arange(peak.numel()), peak]
    assert peak_in_mask.mean() >= 0.6  # the lesions cover about 6 % of the pixels
    assert compute_pixel_auroc(maps, masks) > 0.85


def test_pca_rejects_identical_images():
    with pytest.raises(ValueError, match="identical"):
        PCABaseline().fit(torch.zeros(5, 1, 4, 4))


# ---------------------------------------------------------------------------------------------------------------------
# autoencoder


def test_autoencoder_trains_and_detects(trained_ae, toy_set):
    images, labels, masks = toy_set
    losses = [h["loss"] for h in trained_ae.history]
    assert len(losses) == 20 and all(h["complete"] for h in trained_ae.history)
    assert losses[-1] < 0.5 * losses[0]
    assert trained_ae.fit_info["stopped_by"] == "epochs" and trained_ae.fit_info["steps"] == 20 * 8
    assert not trained_ae.training
    scores = trained_ae.score(images)
    assert scores.shape == (64,)
    assert compute_image_auroc(scores, labels) > 0.7
    assert compute_image_auroc(trained_ae.score(images, score_kind="l1"), labels) > 0.6
    maps = trained_ae.anomaly_map(images)
    assert maps.shape == (64, 1, SIZE, SIZE)
    assert compute_pixel_auroc(maps, masks) > 0.7
    rec = trained_ae.reconstruct(images)
    assert rec.shape == images.shape and rec.abs().max() <= 1
    torch.testing.assert_close(scores, (images - rec).square().flatten(1).mean(1))


def test_autoencoder_deterministic_for_a_seed(train_images):
    x = train_images[:48]
    runs = [ConvAutoencoderBaseline(**TINY_AE).fit(x, epochs=2, batch_size=16, progress=False, seed=s) for s in (3, 3)]
    other = ConvAutoencoderBaseline(**TINY_AE).fit(x, epochs=2, batch_size=16, progress=False, seed=4)
    assert torch.equal(runs[0].score(x), runs[1].score(x))
    for (k, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(runs[0].score(x), other.score(x))


def test_autoencoder_global_rng_untouched(train_images):
    ae = ConvAutoencoderBaseline(**TINY_AE)  # building a module draws its initial weights from the global RNG ...
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ae.fit(train_images[:8], epochs=1, batch_size=4, progress=False)  # ... fitting does not
    assert torch.equal(torch.rand(3), expected)


def test_autoencoder_time_limit(train_images):
    ae = ConvAutoencoderBaseline(**TINY_AE).fit(
        train_images[:64], epochs=1000, time_limit_s=1e-3, batch_size=16, progress=False
    )
    assert ae.fit_info["stopped_by"] == "time_limit"
    assert ae.fit_info["steps"] == 1 and ae.fit_info["epochs"] == 1
    assert ae.history[0]["complete"] is False and ae.is_fitted


def test_autoencoder_refuses_nan_loss(train_images):
    ae = ConvAutoencoderBaseline(**TINY_AE)
    ae.decoder.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        ae.fit(train_images[:16], epochs=1, batch_size=8, progress=False)
    assert not ae.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        ae.score(train_images[:2])


def test_autoencoder_fits_a_dataloader(train_images):
    loader = DataLoader(TensorDataset(train_images[:33]), batch_size=16)  # the last batch (1 image) is skipped
    ae = ConvAutoencoderBaseline(**TINY_AE).fit(loader, epochs=2, progress=False)
    assert ae.fit_info["steps"] == 4 and ae.history[0]["images"] == 32
    assert ae.score(loader).shape == (33,)


@pytest.mark.parametrize(
    "size, levels, effective, bottleneck",
    [(8, 4, 3, 1), (16, 4, 4, 1), (24, 4, 3, 3), (32, 2, 2, 8), (64, 4, 4, 4), (256, 4, 4, 16)],
)
def test_autoencoder_sizes(size, levels, effective, bottleneck):
    ae = ConvAutoencoderBaseline(
        image_size=size, in_channels=2, levels=levels, base_channels=4, max_channels=8, latent_dim=8
    ).eval()
    assert ae.levels == effective and ae.bottleneck_size == bottleneck
    x = torch.rand(2, 2, size, size) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 8)
    y = ae.decode(z)
    assert y.shape == x.shape and y.abs().max() <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 15}, "cannot be halved"),
        ({"image_size": 0}, "positive integer"),
        ({"levels": 0}, "positive integer"),
        ({"latent_dim": 2.5}, "positive integer"),
        ({"score_kind": "l2"}, "score_kind"),
    ],
)
def test_autoencoder_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvAutoencoderBaseline(**{**TINY_AE, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"epochs": 0}, "epochs"), ({"time_limit_s": 0}, "time_limit_s"), ({"batch_size": 1}, "batch_size"),
     ({"lr": math.nan}, "lr")],
)  # fmt: skip
def test_autoencoder_bad_fit_arguments(train_images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvAutoencoderBaseline(**TINY_AE).fit(train_images[:4], progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# common interface


def _fit(baseline, images):
    if isinstance(baseline, ConvAutoencoderBaseline):
        return baseline.fit(images, epochs=1, batch_size=4, progress=False)
    return baseline.fit(images)


def _fitted_baselines(train_images, trained_ae):
    return [
        MeanIntensityBaseline(foreground_threshold=-0.9).fit(train_images),
        PCABaseline(n_components=0.95).fit(train_images),
        trained_ae,
    ]


def _fresh(baseline):
    if isinstance(baseline, MeanIntensityBaseline):
        return MeanIntensityBaseline(foreground_threshold=-0.9)
    if isinstance(baseline, PCABaseline):
        return PCABaseline(n_components=0.95)
    return ConvAutoencoderBaseline(**TINY_AE)


def test_state_dict_round_trip(train_images, trained_ae, toy_set, tmp_path):
    images = toy_set[0]
    for baseline in _fitted_baselines(train_images, trained_ae):
        path = tmp_path / f"{type(baseline).__name__}.pt"
        torch.save(baseline.state_dict(), path)
        loaded = _fresh(baseline)
        assert not loaded.is_fitted
        loaded.load_state_dict(torch.load(path, weights_only=True))
        assert loaded.is_fitted
        assert torch.equal(loaded.score(images), baseline.score(images)), baseline.name
        m_a, m_b = loaded.anomaly_map(images), baseline.anomaly_map(images)
        assert (m_a is None and m_b is None) or torch.equal(m_a, m_b)


def test_common_interface(train_images, trained_ae, toy_set):
    images, labels, _ = toy_set
    baselines = _fitted_baselines(train_images, trained_ae)
    assert len({b.name for b in baselines}) == 3
    for baseline in baselines:
        assert isinstance(baseline, ReferenceBaseline) and isinstance(baseline, torch.nn.Module)
        scores = baseline.score(images)
        assert scores.shape == (64,) and scores.device.type == "cpu" and torch.isfinite(scores).all()
        # tensor, DataLoader of tuples, list of dicts and MetaTensor input give the same scores
        loader = DataLoader(TensorDataset(images, labels), batch_size=10)
        torch.testing.assert_close(baseline.score(loader), scores)
        torch.testing.assert_close(baseline.score([{"image": images[:30]}, {"image": images[30:]}]), scores)
        torch.testing.assert_close(baseline.score(MetaTensor(images)), scores)
        torch.testing.assert_close(baseline.score(images.double()), scores)
        torch.testing.assert_close(baseline(images), scores)


def test_fit_on_batches_equals_fit_on_tensor(train_images, toy_set):
    images = toy_set[0]
    batches = [{"image": train_images[i : i + 50]} for i in range(0, 256, 50)]
    for make in (MeanIntensityBaseline, PCABaseline):
        torch.testing.assert_close(make().fit(batches).score(images), make().fit(train_images).score(images))


def test_buildable_from_bundle_config():
    config = {
        "pca": {"_target_": "monai_hqanogan.baselines.PCABaseline", "n_components": 0.9},
        "ae": {"_target_": "monai_hqanogan.baselines.ConvAutoencoderBaseline", "image_size": 32, "levels": 3},
        "mean": {"_target_": "monai_hqanogan.baselines.MeanIntensityBaseline", "foreground_threshold": -0.9},
    }
    parser = ConfigParser(config)
    assert parser.get_parsed_content("pca").n_components == 0.9
    assert parser.get_parsed_content("ae").levels == 3
    assert parser.get_parsed_content("mean").foreground_threshold == -0.9


@pytest.mark.parametrize("make", [MeanIntensityBaseline, PCABaseline, lambda: ConvAutoencoderBaseline(**TINY_AE)])
@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.zeros(0, 1, SIZE, SIZE), ValueError, "empty"),
        (torch.zeros(SIZE, SIZE), ValueError, r"\[N, C, R, R\]"),
        (torch.zeros(4, 1, SIZE, SIZE - 2), ValueError, "square"),
        (torch.full((4, 1, SIZE, SIZE), math.nan), ValueError, "NaN or inf"),
        (torch.full((4, 1, SIZE, SIZE), math.inf), ValueError, "NaN or inf"),
        ([], ValueError, "no batch"),
        ("images.png", TypeError, "batch"),
        (torch.zeros(1, 1, SIZE, SIZE), ValueError, "at least 2"),
    ],
)
def test_fit_rejects_bad_input(make, bad, error, match):
    baseline = make()
    with pytest.raises(error, match=match):
        _fit(baseline, bad)


@pytest.mark.parametrize("make", [PCABaseline, lambda: ConvAutoencoderBaseline(**TINY_AE)])
def test_score_rejects_other_shapes(make, train_images):
    baseline = _fit(make(), train_images[:8])
    with pytest.raises(ValueError, match="channel"):
        baseline.score(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="pixels"):
        baseline.score(torch.zeros(2, 1, 2 * SIZE, 2 * SIZE))
    with pytest.raises(ValueError, match="channel"):
        baseline.anomaly_map([torch.zeros(2, 1, SIZE, SIZE), torch.zeros(2, 3, SIZE, SIZE)])


@pytest.mark.parametrize("make", [MeanIntensityBaseline, PCABaseline, lambda: ConvAutoencoderBaseline(**TINY_AE)])
def test_score_before_fit(make):
    with pytest.raises(RuntimeError, match="not fitted"):
        make().score(torch.zeros(2, 1, SIZE, SIZE))


def test_pca_load_into_fresh_module_resizes_buffers(train_images):
    fitted = PCABaseline(n_components=7).fit(train_images)
    buffer = io.BytesIO()
    torch.save(fitted.state_dict(), buffer)
    buffer.seek(0)
    fresh = PCABaseline(n_components=7)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.components.shape == (7, SIZE * SIZE) and fresh.mean.shape == (SIZE * SIZE,)
    assert F.mse_loss(fresh.reconstruct(train_images[:4]), fitted.reconstruct(train_images[:4])) == 0
