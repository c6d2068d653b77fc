from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from torch import nn

from monai_hqanogan.baselines.anogan import AnoGANScorer
from monai_hqanogan.baselines.base import ReferenceBaseline
from monai_hqanogan.networks import StyleGAN2Discriminator, StyleGAN2Generator

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads cost more than they save

SIZE = 16
TINY_G = {"resolution": SIZE, "channel_base": 256, "channel_max": 32, "z_dim": 16, "w_dim": 16, "mapping_layers": 2}
TINY_D = {"resolution": SIZE, "channel_base": 256, "channel_max": 32}
QUIET = {"progress": False}


def _networks(seed: int = 0) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    """A tiny G (with w_avg set as training would track it) and D."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(**TINY_G)
    d = StyleGAN2Discriminator(**TINY_D)
    with torch.no_grad():
        g.mapping.w_avg.copy_(g.mapping(torch.randn(512, g.z_dim))[:, 0].mean(dim=0))
    return g, d


def _images_from_g(g: StyleGAN2Generator, n: int, seed: int = 5, psi: float = 1.0) -> torch.Tensor:
    """G's images from known latents (w = w_avg + psi * (mapping(z) - w_avg)), constant noise."""
    with torch.no_grad():
        z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
        return g.eval().synthesis(g.mapping(z, truncation_psi=psi), noise_mode="const")


def _paste_square(x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """A square of the value opposite to the local mean (+1 on a dark area, -1 on a bright one)."""
    out = x.clone()
    patch = out[:, :, rows, cols]
    out[:, :, rows, cols] = torch.where(patch.mean(dim=(1, 2, 3), keepdim=True) < 0, 1.0, -1.0).expand_as(patch)
    return out


class TinyLinearGenerator(nn.Module):
    """A duck-typed generator with the f-AnoGAN hooks: ``generate(z)``, ``z_dim``, ``discriminator_features(x)``."""

    def __init__(self, z_dim: int = 6, size: int = 8) -> None:
        super().__init__()
        self.z_dim, self.size = z_dim, size
        self.net = nn.Linear(z_dim, size * size)
        self.critic = nn.Conv2d(1, 4, 3, stride=2, padding=1)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z)).view(-1, 1, self.size, self.size)

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.critic(x)).flatten(1)


def test_is_a_reference_baseline_and_needs_fit():
    g, d = _networks()
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=2, **QUIET)
    assert isinstance(scorer, ReferenceBaseline) and scorer.name == "AnoGAN"
    with pytest.raises(RuntimeError, match="not fitted"):
        scorer.score(torch.zeros(1, 1, SIZE, SIZE))
    assert scorer.fit() is scorer and scorer.is_fitted
    assert scorer.fit_info["trained"] is False and scorer.fit_info["image_size"] == SIZE
    scorer.fit(torch.zeros(5, 1, SIZE, SIZE), epochs=3)  # other baselines' fit arguments are accepted, unused
    assert scorer.fit_info["checked_images"] == 5 and scorer.fit_info["ignored_arguments"] == ["epochs"]


@pytest.mark.parametrize("latent_space", ["z", "w"])
def test_objective_decreases_and_outputs(latent_space):
    g, d = _networks()
    x = _images_from_g(g, 3) * 0.8
    scorer = AnoGANScorer(generator=g, discriminator=d, latent_space=latent_space, steps=20, lr=0.05, **QUIET).fit()
    out = scorer.optimise(x)
    assert out["history"].shape == (1, 21, 3)
    assert (out["history"][0, -1] < out["history"][0, 0]).all()
    assert torch.allclose(out["score"], out["history"][0, -1])
    assert torch.allclose(out["score"], 0.9 * out["residual_loss"] + 0.1 * out["feature_loss"], atol=1e-6)
    assert out["map"].shape == (3, 1, SIZE, SIZE) and out["reconstruction"].shape == x.shape
    assert torch.allclose(out["map"], (x - out["reconstruction"]).abs().mean(dim=1, keepdim=True))
    assert out["z"].shape == (3, g.z_dim if latent_space == "z" else g.w_dim)
    assert scorer.last_info == {}  # optimise() alone does not touch last_info; score() does
    assert torch.equal(scorer.score(x), out["score"])  # served from the cache filled by optimise()
    assert scorer.last_info["cached_images"] == 3 and scorer.last_info["optimised_images"] == 0


def test_generated_image_scores_lower_than_pasted_square_and_map_peaks_there():
    # known w's within reach of the search from w_avg (psi 0.3): with this setup 15 of 16 random tiny G's pass
    g, d = _networks()
    x = _images_from_g(g, 3, psi=0.3)
    rows, cols = slice(4, 9), slice(8, 13)
    xa = _paste_square(x, rows, cols)
    scorer = AnoGANScorer(generator=g, discriminator=d, latent_space="w", steps=40, lr=0.1, **QUIET).fit()
    scores = scorer.score(torch.cat([x, xa]))
    maps = scorer.anomaly_map(torch.cat([x, xa]))
    assert scorer.last_info["optimised_images"] == 0  # the map came from the score's search
    assert (scores[3:] > 1.5 * scores[:3]).all(), scores
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[rows, cols] = True
    local_mean = F.avg_pool2d(maps[3:], 3, stride=1, padding=1, count_include_pad=False)[:, 0]  # peak of 3x3 means
    for amap, smooth in zip(maps[3:, 0], local_mean):
        peak = int(smooth.flatten().argmax())
        assert inside.flatten()[peak], divmod(peak, SIZE)
        assert amap[inside].mean() > 1.5 * amap[~inside].mean()


@pytest.mark.parametrize("latent_space, restarts", [("z", 1), ("w", 2)])
def test_batch_equals_one_by_one(latent_space, restarts):
    g, d = _networks()
    x = torch.cat([_images_from_g(g, 2), torch.rand(1, 1, SIZE, SIZE) * 2 - 1])
    kwargs = {"latent_space": latent_space, "restarts": restarts, "steps": 12, "lr": 0.05, **QUIET}
    batched = AnoGANScorer(generator=g, discriminator=d, **kwargs).fit().optimise(x)
    alone = AnoGANScorer(generator=g, discriminator=d, cache_images=0, **kwargs).fit()
    singles = [alone.optimise(x[i : i + 1]) for i in range(3)]
    for key in ("score", "map", "z"):
        assert torch.allclose(batched[key], torch.cat([s[key] for s in singles]), rtol=1e-4, atol=1e-5), key
    # and through score() with a batch size of 1 (three searches)
    assert torch.allclose(alone.score(x, batch_size=1), batched["score"], rtol=1e-4, atol=1e-5)
    assert alone.last_info["batches"] == 3 and alone.last_info["optimised_images"] == 3


def test_deterministic_for_a_seed_and_global_rng_untouched():
    g, d = _networks()
    x = _images_from_g(g, 2)
    make = lambda seed: AnoGANScorer(generator=g, discriminator=d, steps=8, lr=0.05, seed=seed, **QUIET).fit()  # noqa
    state = torch.random.get_rng_state()
    first, second, other = make(3).optimise(x), make(3).optimise(x), make(4).optimise(x)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first["score"], second["score"]) and torch.equal(first["z"], second["z"])
    assert not torch.equal(first["z"], other["z"])


def test_lam_zero_needs_no_discriminator_and_lam_positive_does():
    g, d = _networks()
    x = _images_from_g(g, 2)
    without = AnoGANScorer(generator=g, lam=0.0, steps=6, **QUIET).fit().optimise(x)
    with_d = AnoGANScorer(generator=g, discriminator=d, lam=0.0, steps=6, **QUIET).fit().optimise(x)
    assert torch.equal(without["score"], with_d["score"])
    assert torch.equal(without["score"], without["residual_loss"]) and (without["feature_loss"] == 0).all()
    with pytest.raises(ValueError, match="discriminator"):
        AnoGANScorer(generator=g, lam=0.1)


def test_duck_typed_generator_with_fanogan_hooks():
    torch.manual_seed(0)
    gen = TinyLinearGenerator()
    with torch.no_grad():
        normal = gen.generate(torch.randn(2, gen.z_dim))
    odd = _paste_square(normal, slice(1, 4), slice(1, 4))
    scorer = AnoGANScorer(generator=gen, lam=0.1, steps=30, lr=0.1, **QUIET).fit(normal)
    assert scorer.feature_source == "generator" and scorer.fit_info["adapter"] == "generate"
    out = scorer.optimise(torch.cat([normal, odd]))
    assert out["score"].shape == (4,) and out["map"].shape == (4, 1, 8, 8) and out["z"].shape == (4, gen.z_dim)
    assert (out["history"][0, -1] < out["history"][0, 0]).all()
    assert (out["score"][2:] > out["score"][:2]).all()
    with pytest.raises(ValueError, match="latent_space='w'"):
        AnoGANScorer(generator=gen, latent_space="w")


def test_uniform_prior_hooks_clamp_z():
    class UniformPriorGenerator(TinyLinearGenerator):
        z_prior = "uniform"

        def sample_latent(self, num, generator=None):
            return torch.rand(num, self.z_dim, generator=generator) * 2 - 1

    gen = UniformPriorGenerator()
    x = torch.ones(2, 1, 8, 8)  # far from G's range: the search pushes z outwards
    out = AnoGANScorer(generator=gen, lam=0.0, steps=30, lr=0.5, **QUIET).fit().optimise(x)
    assert out["z"].abs().max() <= 1.0


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_networks_unchanged_and_modes_restored(lam):
    g, d = _networks()
    g.synthesis.blocks[0].const.requires_grad_(False)  # a mixed set of flags must come back as it was
    g.train()
    d.eval()
    before = {k: v.clone() for k, v in [*g.state_dict().items(), *d.state_dict().items()]}
    flags = [p.requires_grad for p in [*g.parameters(), *d.parameters()]]
    scorer = AnoGANScorer(generator=g, discriminator=d, lam=lam, steps=4, **QUIET).fit()
    scorer.anomaly_map(_images_from_g(g, 2).detach())
    g.train()  # _images_from_g put it in eval mode
    scorer.score(torch.rand(2, 1, SIZE, SIZE) * 2 - 1)
    after = {k: v for k, v in [*g.state_dict().items(), *d.state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in [*g.parameters(), *d.parameters()]] == flags
    assert g.training and all(m.training for m in g.modules()) and not d.training
    assert all(p.grad is None for p in [*g.parameters(), *d.parameters()])


def test_cache_shared_by_score_and_map_and_invalidated():
    g, d = _networks()
    x = _images_from_g(g, 3)
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=3, **QUIET).fit()
    maps = scorer.anomaly_map(x, batch_size=2)
    assert scorer.last_info["optimised_images"] == 3 and scorer.last_info["batches"] == 2
    assert scorer.last_info["seconds_per_image"] > 0
    scores = scorer.score(x.clone(), batch_size=3)  # same values, another tensor and batching: all cached
    assert scorer.last_info["optimised_images"] == 0 and scorer.last_info["cached_images"] == 3
    assert scorer.last_info["seconds_per_image"] is None
    assert scores.shape == (3,) and maps.shape == (3, 1, SIZE, SIZE)
    assert torch.equal(scorer.anomaly_map(x[[2, 0]]), maps[[2, 0]])
    mixed = torch.cat([x[1:2], torch.zeros(1, 1, SIZE, SIZE)])  # one cached image, one new: only the new is searched
    assert torch.equal(scorer.score(mixed)[0], scores[1]) and scorer.last_info["optimised_images"] == 1
    scorer.steps = 4  # a setting changed: search again
    scorer.score(x)
    assert scorer.last_info["optimised_images"] == 3
    with torch.no_grad():
        g.synthesis.blocks[-1].to_image.conv.weight.mul_(1.01)  # weights changed in place: search again
    scorer.score(x)
    assert scorer.last_info["optimised_images"] == 3
    scorer.clear_cache()
    assert scorer.score(x[:1]).shape == (1,) and scorer.last_info["optimised_images"] == 1
    small = AnoGANScorer(generator=g, discriminator=d, steps=2, cache_images=2, **QUIET).fit()
    small.score(x)  # keeps the last two images only
    small.score(x)
    assert small.last_info["optimised_images"] == 1 and small.last_info["cached_images"] == 2
    off = AnoGANScorer(generator=g, discriminator=d, steps=2, cache_images=0, **QUIET).fit()
    off.score(x[:1])
    off.score(x[:1])
    assert off.last_info["optimised_images"] == 1 and len(off._cache) == 0


def test_works_under_no_grad_and_inference_mode():
    g, d = _networks()
    x = _images_from_g(g, 1)
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=3, cache_images=0, **QUIET).fit()
    with torch.no_grad():
        a = scorer.score(x)
    with torch.inference_mode():
        b = scorer.score(x)
    assert torch.equal(a, b)


def test_bundle_config_with_generator_by_reference():
    config = {
        "generator": {"_target_": "monai_hqanogan.networks.StyleGAN2Generator", **TINY_G},
        "discriminator": {"_target_": "monai_hqanogan.networks.StyleGAN2Discriminator", **TINY_D},
        "scorer": {
            "_target_": "monai_hqanogan.baselines.anogan.AnoGANScorer",
            "generator": "@generator",
            "discriminator": "@discriminator",
            "latent_space": "w",
            "steps": 3,
            "lam": 0.2,
            "progress": False,
        },
    }
    parser = ConfigParser(config)
    scorer = parser.get_parsed_content("scorer")
    assert isinstance(scorer, AnoGANScorer) and scorer.generator is parser.get_parsed_content("generator")
    assert scorer.steps == 3 and scorer.lam == 0.2 and scorer.latent_space == "w"
    assert scorer.fit().score(torch.zeros(2, 1, SIZE, SIZE)).shape == (2,)


def test_state_dict_round_trip_weights_only(tmp_path):
    g, d = _networks()
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=2, **QUIET).fit()
    path = tmp_path / "anogan.pt"
    torch.save(scorer.state_dict(), path)
    g2, d2 = _networks(seed=1)
    fresh = AnoGANScorer(generator=g2, discriminator=d2, steps=2, **QUIET)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.is_fitted
    x = torch.rand(1, 1, SIZE, SIZE) * 2 - 1
    assert torch.allclose(fresh.score(x), scorer.score(x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"latent_space": "x"}, ValueError, "latent_space"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, ValueError, "steps"),
        ({"restarts": 0}, ValueError, "restarts"),
        ({"lam": 1.5}, ValueError, "lam"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"noise_mode": "random"}, ValueError, "noise_mode"),
        ({"cache_images": -1}, ValueError, "cache_images"),
        ({"discriminator": nn.Linear(2, 2)}, TypeError, "extract_features"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    g, d = _networks()
    with pytest.raises(error, match=match):
        AnoGANScorer(**{"generator": g, "discriminator": d, **kwargs})


def test_not_a_generator():
    with pytest.raises(TypeError, match="generate"):
        AnoGANScorer(generator=nn.Linear(2, 2), lam=0.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 3, SIZE, SIZE), "channel"),
        (torch.zeros(2, 1, 8, 8), "8 x 8"),
        (torch.zeros(1, SIZE, SIZE), r"\[N, C, R, R\]"),
        (torch.full((1, 1, SIZE, SIZE), math.nan), "NaN"),
    ],
)
def test_bad_images(bad, match):
    g, d = _networks()
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=2, **QUIET)
    with pytest.raises(ValueError, match=match):
        scorer.fit(bad)
    scorer.fit()
    with pytest.raises(ValueError, match=match):
        scorer.score(bad)
    with pytest.raises(ValueError, match=match):
        scorer.optimise(bad)


def test_feature_layer_out_of_range():
    g, d = _networks()
    scorer = AnoGANScorer(generator=g, discriminator=d, steps=2, feature_layer=10, **QUIET).fit()
    with pytest.raises(ValueError, match="feature_layer=10"):
        scorer.score(torch.zeros(1, 1, SIZE, SIZE))


def test_non_finite_objective_is_a_clear_error():
    class NaNGenerator(TinyLinearGenerator):
        def generate(self, z):
            return super().generate(z) * torch.tensor(math.nan)

    scorer = AnoGANScorer(generator=NaNGenerator(), lam=0.0, steps=3, **QUIET).fit()
    with pytest.raises(FloatingPointError, match="non-finite at restart 0, step 0"):
        scorer.score(torch.zeros(1, 1, 8, 8))
