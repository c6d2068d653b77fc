from __future__ import annotations

import math

import pytest
import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.baselines.base import ReferenceBaseline
from monai_hqanogan.baselines.fanogan import (
    FAnoGANBaseline,
    FAnoGANCritic,
    FAnoGANEncoder,
    FAnoGANGenerator,
    wgan_gradient_penalty,
)
from monai_hqanogan.metrics import compute_image_auroc, compute_pixel_auroc

SIZE = 16  # the size of conftest.py's train_images and toy_set
TINY = {"image_size": SIZE, "z_dim": 16, "base_channels": 8, "max_channels": 16}
#: the short fit behind the detection tests: about 4 s on one core (lr raised for so few steps)
SHORT_FIT = {"gan_iterations": 120, "encoder_iterations": 200, "batch_size": 16, "lr": 1e-3, "encoder_lr": 2e-3}
QUICK_FIT = {"gan_iterations": 3, "encoder_iterations": 3, "batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def trained(train_images):
    return FAnoGANBaseline(**TINY).fit(train_images, progress=False, seed=0, **SHORT_FIT)


# ---------------------------------------------------------------------------------------------------------------------
# networks


@pytest.mark.parametrize("size, features", [(8, 4 * 16), (16, 8 * 16), (32, 16 * 16), (64, 16 * 16)])
def test_network_shapes(size, features):
    kwargs = {"image_size": size, "base_channels": 4, "max_channels": 16}
    g = FAnoGANGenerator(out_channels=2, z_dim=6, **kwargs).eval()
    d = FAnoGANCritic(in_channels=2, **kwargs)
    e = FAnoGANEncoder(in_channels=2, z_dim=6, **kwargs)
    x = g(torch.randn(3, 6))
    assert x.shape == (3, 2, size, size) and x.abs().max() <= 1
    assert d(x).shape == (3,) and d.features(x).shape == (3, features) and d.num_features == features
    z = e(x)
    assert z.shape == (3, 6) and z.abs().max() < 1
    assert FAnoGANEncoder(in_channels=2, z_dim=6, output="linear", **kwargs)(x).shape == (3, 6)


def test_critic_has_no_batchnorm_and_works_per_image():
    d = FAnoGANCritic(image_size=SIZE, base_channels=4, max_channels=8)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in d.modules())
    x = torch.rand(5, 1, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(d.features(x[:2]), d.features(x)[:2])
    torch.testing.assert_close(d(x[3:]), d(x)[3:])
    plain = FAnoGANCritic(image_size=SIZE, base_channels=4, max_channels=8, norm="none")
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (FAnoGANGenerator, {"image_size": 24}, "power of two"),
        (FAnoGANCritic, {"image_size": 4}, "power of two"),
        (FAnoGANEncoder, {"image_size": 48}, "power of two"),
        (FAnoGANGenerator, {"base_channels": 64, "max_channels": 32}, "must not exceed"),
        (FAnoGANCritic, {"norm": "batch"}, "norm"),
        (FAnoGANEncoder, {"output": "sigmoid"}, "output"),
        (FAnoGANEncoder, {"z_dim": 0}, "positive integer"),
        (FAnoGANBaseline, {"image_size": 100}, "power of two"),
        (FAnoGANBaseline, {"kappa": -1.0}, "kappa"),
        (FAnoGANBaseline, {"z_prior": "laplace"}, "z_prior"),
        (FAnoGANBaseline, {"critic_norm": "batch"}, "norm"),
    ],
)
def test_bad_arguments(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_generator_rejects_wrong_latent_shape():
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        FAnoGANGenerator(image_size=8, z_dim=16)(torch.zeros(2, 8))


# ---------------------------------------------------------------------------------------------------------------------
# gradient penalty


class _LinearCritic(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere; records the inputs it sees."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 4, 4, generator=g)
    real, fake = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    unit = _LinearCritic(w / w.norm())
    assert wgan_gradient_penalty(unit, real, fake, torch.Generator().manual_seed(1)).item() == pytest.approx(
        0, abs=1e-9
    )
    # the penalty is computed on interpolates eps * real + (1 - eps) * fake, one eps in [0, 1] per image
    (x_hat,) = unit.inputs
    eps = (x_hat - fake).flatten(1) / (real - fake).flatten(1)
    torch.testing.assert_close(eps, eps[:, :1].expand_as(eps))
    assert ((eps >= 0) & (eps <= 1)).all() and eps[:, 0].std() > 0
    torch.testing.assert_close(eps[:, 0], torch.rand(6, generator=torch.Generator().manual_seed(1)))
    # ||w|| = 3: (3 - 1)^2 = 4, and the graph reaches the weights: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    steep = _LinearCritic(3 * w / w.norm())
    penalty = wgan_gradient_penalty(steep, real, fake)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(steep.w.grad, 4 * w / w.norm())
    with pytest.raises(ValueError, match="same shape"):
        wgan_gradient_penalty(unit, real, fake[:2])


# ---------------------------------------------------------------------------------------------------------------------
# training and detection


def test_wgan_gp_and_izi_f_training(trained, train_images):
    gan, enc = trained.history["gan"], trained.history["encoder"]
    assert len(gan) == 120 and len(enc) == 200
    info = trained.fit_info
    assert info["gan_iterations"] == 120 and info["critic_steps"] == 600 and info["encoder_iterations"] == 200
    assert info["stopped_by"] == info["gan_stopped_by"] == info["encoder_stopped_by"] == "iterations"
    assert info["seconds"] == pytest.approx(info["gan_seconds"] + info["encoder_seconds"])
    assert not trained.training and all(p.requires_grad for p in trained.parameters())
    # the critic first separates the untrained generator's samples from the data, then the generator closes the gap
    wasserstein = torch.tensor([r["wasserstein"] for r in gan])
    assert wasserstein[-10:].mean() < 0.5 * wasserstein.max()
    assert all(math.isfinite(r["gradient_penalty"]) and r["gradient_penalty"] >= 0 for r in gan)
    # the samples of the trained generator look more like the data than those of an untrained one
    z = trained.sample_latent(256, torch.Generator().manual_seed(5))
    untrained = FAnoGANGenerator(SIZE, 1, 16, 8, 16).eval()
    with torch.no_grad():
        mean_image = train_images.mean(0)
        err_trained = (trained.generate(z).mean(0) - mean_image).square().mean()
        err_untrained = (untrained(z).mean(0) - mean_image).square().mean()
    assert err_trained < 0.5 * err_untrained
    # izi_f: the encoder loss falls
    losses = torch.tensor([r["loss"] for r in enc])
    assert losses[-10:].mean() < 0.6 * losses[:5].mean()
    torch.testing.assert_close(torch.tensor([r["residual"] + r["feature"] for r in enc]), losses, rtol=1e-5, atol=1e-7)


def test_detects_lesions(trained, toy_set):
    images, labels, masks = toy_set
    parts = trained.score_components(images)
    scores = trained.score(images)
    assert scores.shape == (64,) and scores.device.type == "cpu" and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, parts["residual"] + trained.kappa * parts["feature"])
    assert compute_image_auroc(scores, labels) > 0.6
    maps = trained.anomaly_map(images)
    assert maps.shape == (64, 1, SIZE, SIZE) and (maps >= 0).all()
    assert compute_pixel_auroc(maps, masks) > 0.6
    rec = trained.reconstruct(images)
    assert rec.shape == images.shape and rec.abs().max() <= 1
    torch.testing.assert_close(parts["residual"], (images - rec).square().flatten(1).mean(1))
    torch.testing.assert_close(maps, (images - rec).abs())
    feat = (trained.discriminator_features(images) - trained.discriminator_features(rec)).square().mean(1)
    torch.testing.assert_close(parts["feature"], feat.detach())
    # other input forms give the same scores
    loader = DataLoader(TensorDataset(images, labels), batch_size=10)
    torch.testing.assert_close(trained.score(loader), scores)
    torch.testing.assert_close(trained(images.double()), scores)
    assert isinstance(trained, ReferenceBaseline) and trained.name == "f-AnoGAN"


def test_kappa_weights_the_feature_term(trained, toy_set):
    images = toy_set[0][:8]
    parts = trained.score_components(images)
    trained.kappa = 0.0
    try:
        torch.testing.assert_close(trained.score(images), parts["residual"])
    finally:
        trained.kappa = 1.0


def test_anogan_hooks(trained):
    assert trained.z_dim == 16 and trained.z_prior == "uniform"
    z = trained.sample_latent(4, torch.Generator().manual_seed(0))
    assert z.shape == (4, 16) and z.abs().max() <= 1
    torch.testing.assert_close(z, trained.sample_latent(4, torch.Generator().manual_seed(0)))
    z.requires_grad_(True)
    x = trained.generate(z)
    assert x.shape == (4, 1, SIZE, SIZE)
    f = trained.discriminator_features(x)
    assert f.shape == (4, trained.critic.num_features)
    (x.square().mean() + f.square().mean()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not trained.training  # the hooks leave the mode alone


def test_state_dict_round_trip(trained, toy_set, tmp_path):
    images = toy_set[0]
    path = tmp_path / "fanogan.pt"
    torch.save(trained.state_dict(), path)
    loaded = FAnoGANBaseline(**TINY)
    assert not loaded.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        loaded.score(images)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert loaded.is_fitted
    assert torch.equal(loaded.score(images), trained.score(images))
    assert torch.equal(loaded.anomaly_map(images), trained.anomaly_map(images))


def test_deterministic_for_a_seed(train_images):
    x = train_images[:48]
    runs = [FAnoGANBaseline(**TINY).fit(x, seed=3, **QUICK_FIT) for _ in range(2)]
    other = FAnoGANBaseline(**TINY).fit(x, seed=4, **QUICK_FIT)
    assert torch.equal(runs[0].score(x), runs[1].score(x))
    for (k, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert runs[0].history == runs[1].history
    assert not torch.equal(runs[0].score(x), other.score(x))


def test_global_rng_untouched(train_images):
    model = FAnoGANBaseline(**TINY)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.fit(train_images[:16], **QUICK_FIT)
    assert torch.equal(torch.rand(3), expected)


def test_time_limit(train_images):
    tiny = FAnoGANBaseline(**TINY).fit(train_images[:32], time_limit_s=1e-3, **{**QUICK_FIT, "gan_iterations": 1000})
    info = tiny.fit_info
    assert info["gan_iterations"] == 1 and info["encoder_iterations"] == 1 and tiny.is_fitted
    assert info["gan_stopped_by"] == info["encoder_stopped_by"] == info["stopped_by"] == "time_limit"
    limit = 1.0
    endless = {**QUICK_FIT, "gan_iterations": 10**6, "encoder_iterations": 10**6}
    model = FAnoGANBaseline(**TINY).fit(train_images[:32], time_limit_s=limit, gan_time_fraction=0.5, **endless)
    info = model.fit_info
    assert info["stopped_by"] == "time_limit" and info["encoder_iterations"] > 1
    assert 0.5 * limit <= info["gan_seconds"] < 0.5 * limit + 0.5
    assert limit <= info["seconds"] < limit + 0.5


def test_refuses_nan_loss(train_images):
    model = FAnoGANBaseline(**TINY)
    model.generator.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(FloatingPointError, match="critic loss .* diverged"):
        model.fit(train_images[:16], **QUICK_FIT)
    assert not model.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score(train_images[:2])
    model = FAnoGANBaseline(**TINY)
    model.encoder.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(FloatingPointError, match="encoder .* diverged"):
        model.fit(train_images[:16], **QUICK_FIT)
    assert not model.is_fitted and all(p.requires_grad for p in model.parameters())


def test_fits_a_dataloader_and_normal_prior(train_images):
    loader = DataLoader(TensorDataset(train_images[:20]), batch_size=8)  # 3 batches, re-iterated as needed
    model = FAnoGANBaseline(**TINY, z_prior="normal").fit(loader, **QUICK_FIT)
    assert model.fit_info["critic_steps"] == 15 and model.encoder.output == "linear"
    assert model.score(loader).shape == (20,)
    one_shot = (b for b in [train_images[:8]])
    with pytest.raises(ValueError, match="no batch"):
        FAnoGANBaseline(**TINY).fit(one_shot, **QUICK_FIT)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.zeros(0, 1, SIZE, SIZE), ValueError, "empty"),
        (torch.zeros(4, 1, SIZE, SIZE - 2), ValueError, "square"),
        (torch.full((4, 1, SIZE, SIZE), math.nan), ValueError, "NaN or inf"),
        (torch.zeros(4, 3, SIZE, SIZE), ValueError, "channel"),
        (torch.zeros(4, 1, 2 * SIZE, 2 * SIZE), ValueError, "pixels"),
        (torch.zeros(1, 1, SIZE, SIZE), ValueError, "at least 2"),
        ([], ValueError, "no batch"),
        ("images.png", TypeError, "batch"),
    ],
)
def test_fit_rejects_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        FAnoGANBaseline(**TINY).fit(bad, **QUICK_FIT)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"gan_iterations": 0}, "gan_iterations"), ({"encoder_iterations": 1.5}, "encoder_iterations"),
     ({"n_critic": 0}, "n_critic"), ({"batch_size": 1}, "batch_size"), ({"time_limit_s": 0}, "time_limit_s"),
     ({"lr": math.nan}, "lr"), ({"encoder_lr": -1.0}, "encoder_lr"), ({"gp_weight": -1.0}, "gp_weight"),
     ({"gan_time_fraction": 1.0}, "gan_time_fraction")],
)  # fmt: skip
def test_bad_fit_arguments(train_images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAnoGANBaseline(**TINY).fit(train_images[:4], **{**QUICK_FIT, **kwargs})


def test_buildable_from_bundle_config():
    config = {
        "fanogan": {
            "_target_": "monai_hqanogan.baselines.fanogan.FAnoGANBaseline",
            "image_size": 32,
            "z_dim": 64,
            "base_channels": 8,
            "max_channels": 32,
            "kappa": 0.5,
        }
    }
    model = ConfigParser(config).get_parsed_content("fanogan")
    assert isinstance(model, FAnoGANBaseline) and model.kappa == 0.5 and model.z_dim == 64
    assert model.generator.image_size == 32 and model.critic.num_features == 32 * 16
