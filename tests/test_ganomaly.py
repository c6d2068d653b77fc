"""anomalib's GANomaly as a reference detector. anomalib is optional (it needs a torchvision that matches torch):
where it does not import, the wrapper must say so before any work; where it does, a short fit must give scores."""

from __future__ import annotations

import pytest
import torch

from monai_hqanogan.baselines.ganomaly import AnomalibGANomalyBaseline, anomalib_available
from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images

AVAILABLE, WHY = anomalib_available()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 16}, "power of two >= 32"), ({"image_size": 48}, "power of two"), ({"in_channels": 2}, "1 or 3")],
)
def test_bad_constructor_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnomalibGANomalyBaseline(**kwargs)


def test_scoring_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        AnomalibGANomalyBaseline(image_size=32).score(torch.zeros(2, 1, 32, 32))


def test_bad_training_images_are_refused_before_anomalib_is_needed():
    method = AnomalibGANomalyBaseline(image_size=32)
    with pytest.raises(ValueError, match="channel"):
        method.fit(torch.zeros(40, 3, 32, 32))
    with pytest.raises(ValueError, match="at least batch_size=32"):
        method.fit(torch.zeros(8, 1, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        method.fit(torch.full((40, 1, 32, 32), float("nan")))


@pytest.mark.skipif(AVAILABLE, reason="anomalib imports here")
def test_missing_anomalib_is_named_with_the_way_to_install_it():
    with pytest.raises(ImportError, match="anomalib is needed for GANomaly.*torchvision"):
        AnomalibGANomalyBaseline(image_size=32).fit(make_ellipse_images(32, 32, seed=0), batch_size=16)


@pytest.mark.skipif(not AVAILABLE, reason=f"anomalib does not import here: {WHY}")
def test_short_fit_scores_every_image_and_reconstructs(tmp_path):
    normal = make_ellipse_images(64, 32, seed=0)
    ill, _ = add_synthetic_lesions(make_ellipse_images(8, 32, seed=1), seed=1)
    test = torch.cat([make_ellipse_images(8, 32, seed=2), ill])
    method = AnomalibGANomalyBaseline(image_size=32, n_features=16, latent_vec_size=32)
    method.fit(normal, epochs=2, batch_size=16, device="cpu", workdir=tmp_path)
    assert method.fit_info["epochs"] == 2 and method.fit_info["optimizer_steps"] == 2 * 2 * 4  # G and D per batch
    scores = method.score(test)
    assert scores.shape == (16,) and torch.isfinite(scores).all() and scores.std() > 0
    rec = method.reconstruct(test[:4])
    assert rec.shape == (4, 1, 32, 32) and rec.min() >= -1 and rec.max() <= 1
    assert method.anomaly_map(test) is None
    assert list(tmp_path.iterdir()) == []  # the PNG files and Lightning's files are removed
