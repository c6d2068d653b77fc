from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from monai_hqanogan.scoring import (
    DEFAULT_WEIGHTS,
    SCORE_NAMES,
    AnomalyCalibration,
    WPlusGaussian,
    fit_scores,
    ledoit_wolf_covariance,
    load_calibration,
    save_calibration,
    simplex_grid,
)
from monai_hqanogan.utils import CheckpointError


@pytest.mark.parametrize("n, p", [(10, 30), (50, 8), (200, 20)])
def test_ledoit_wolf_equals_scikit_learn(n, p):
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(n)) * torch.linspace(0.2, 3.0, p)
    cov, shrinkage = ledoit_wolf_covariance(x)
    ref = LedoitWolf().fit(x.double().numpy())
    assert shrinkage == pytest.approx(ref.shrinkage_, abs=1e-10)
    assert np.allclose(cov.numpy(), ref.covariance_, atol=1e-10)


def test_ledoit_wolf_refuses_a_single_sample():
    with pytest.raises(ValueError, match="at least 2 samples"):
        ledoit_wolf_covariance(torch.zeros(1, 3))


def test_wplus_gaussian_scores_outliers_higher():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(300, 3, 4, generator=g) * 0.5 + 2.0
    density = WPlusGaussian(3, 4).fit(codes)
    assert bool(density.fitted)
    assert torch.allclose(density.mean, codes.mean(0), atol=1e-6)
    typical = density(codes.mean(0, keepdim=True))
    outlier = density(codes.mean(0, keepdim=True) + 3.0)
    assert float(typical) < 1e-6 and float(outlier) > 50
    # for isotropic data with std 0.5 the mean squared Mahalanobis distance is about the dimension (4)
    assert float(density(codes).mean()) == pytest.approx(4.0, rel=0.15)
    with pytest.raises(ValueError, match="shape"):
        density.fit(torch.zeros(10, 2, 4))


def test_simplex_grid():
    grid = simplex_grid(3, 0.5)
    assert sorted(grid) == sorted([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
    assert len(simplex_grid(5, 0.25)) == 70 and all(abs(sum(w) - 1) < 1e-12 for w in simplex_grid(5, 0.25))
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(3, 0.3)


def _components(n_normal: int, n_abnormal: int, informative: str, seed: int = 0) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = n_normal + n_abnormal
    labels = torch.cat([torch.zeros(n_normal), torch.ones(n_abnormal)])
    comps = {name: torch.randn(n, generator=g) * 3 + 10 for name in SCORE_NAMES}
    comps[informative] = comps[informative] + labels * 12  # only this score separates the classes
    return comps, labels


def test_labelled_validation_picks_the_informative_score_and_the_f1_threshold():
    comps, labels = _components(50, 50, "latent_cycle")
    cal = AnomalyCalibration(num_ws=2, w_dim=3)
    report = fit_scores(cal, comps, labels, protocol="labelled-validation")
    assert report["protocol"] == "labelled-validation" and report["weights_from"] == "labelled validation AUROC"
    assert report["weights"] == {"latent_cycle": 1.0}
    assert report["auroc"] > 0.97 and report["auroc_per_score"]["residual"] < 0.8
    combined = cal.combine(comps)
    predicted = combined >= cal.image_threshold
    assert float((predicted == labels.bool()).float().mean()) > 0.95
    normal = comps["residual"][:50]
    assert float(cal.score_mean[0]) == pytest.approx(float(normal.mean()), rel=1e-5)


def test_normal_only_ignores_abnormal_labels_weights_and_threshold_unchanged():
    # the same normal validation images, once alone and once with labelled "tumours" added that a label-tuned search
    # would use (only latent_cycle separates them): the normal-only weights and threshold must not move
    comps, labels = _components(60, 40, "latent_cycle", seed=3)
    selection, selection_labels = _components(30, 30, "map_max", seed=4)
    normals_only = {k: v[:60] for k, v in comps.items()}
    reports, thresholds, weights = [], [], []
    for c, lab in ((normals_only, None), (comps, labels)):
        cal = AnomalyCalibration(num_ws=2, w_dim=3)
        reports.append(fit_scores(cal, c, lab, selection=selection, selection_labels=selection_labels))
        thresholds.append(float(cal.image_threshold))
        weights.append(cal.weights.clone())
    assert thresholds[0] == thresholds[1] and torch.equal(weights[0], weights[1])
    assert reports[1]["protocol"] == "normal-only" and reports[1]["ignored_abnormal"] == 40
    # the weights follow the synthetic-lesion selection set, not the real labels
    assert reports[1]["weights"] == {"map_max": 1.0} and reports[1]["weights_from"].startswith("synthetic-lesion")
    assert reports[1]["threshold_from"].startswith("FPR 0.05 on 60 normal")
    # the opt-in protocol does use the labels, and chooses differently
    cal = AnomalyCalibration(num_ws=2, w_dim=3)
    labelled = fit_scores(cal, comps, labels, protocol="labelled-validation")
    assert labelled["weights"].get("latent_cycle", 0) >= 0.5 and "map_max" not in labelled["weights"]
    assert labelled["auroc"] > 0.99 and float(cal.image_threshold) != thresholds[1]


def test_fit_scores_refuses_unknown_protocols_and_labelled_validation_without_abnormal_images():
    comps, _ = _components(20, 0, "residual")
    cal = AnomalyCalibration(num_ws=2, w_dim=3)
    with pytest.raises(ValueError, match="unknown protocol"):
        fit_scores(cal, comps, None, protocol="label-tuned")
    with pytest.raises(ValueError, match="needs abnormal validation images"):
        fit_scores(cal, comps, None, protocol="labelled-validation")
    with pytest.raises(ValueError, match="selection_labels"):
        fit_scores(cal, comps, None, selection=comps)


def test_fit_scores_without_labels_uses_default_weights_and_the_fpr_quantile():
    comps, _ = _components(200, 0, "residual")
    cal = AnomalyCalibration(num_ws=2, w_dim=3)
    report = fit_scores(cal, comps, None, fpr=0.1)
    assert report["weights"] == pytest.approx(DEFAULT_WEIGHTS)
    combined = cal.combine(comps)
    assert float((combined >= cal.image_threshold).float().mean()) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="at least 2 normal"):
        fit_scores(cal, {k: v[:1] for k, v in comps.items()}, None)


def test_calibration_file_round_trip_and_refusals(tmp_path):
    comps, labels = _components(20, 20, "feature")
    cal = AnomalyCalibration(num_ws=2, w_dim=3)
    with pytest.raises(ValueError, match="uncalibrated"):
        save_calibration(cal, tmp_path / "c.pt")
    fit_scores(cal, comps, labels, protocol="labelled-validation")
    cal.density.fit(torch.randn(30, 2, 3))
    cal.fingerprint, cal.info = "abc123", {"note": "test"}
    cal.calibrated.fill_(True)
    path = save_calibration(cal, tmp_path / "c.pt")

    other = AnomalyCalibration(num_ws=2, w_dim=3)
    load_calibration(path, other, fingerprint="abc123")
    assert torch.equal(other.combine(comps), cal.combine(comps))
    assert torch.equal(other.density.precision, cal.density.precision) and other.info == {"note": "test"}
    with pytest.raises(CheckpointError, match="belongs to another model"):
        load_calibration(path, AnomalyCalibration(num_ws=2, w_dim=3), fingerprint="ffff")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_calibration(path, AnomalyCalibration(num_ws=4, w_dim=3), fingerprint="abc123")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a calibration file"):
        load_calibration(tmp_path / "other.pt", other, fingerprint="abc123")


def test_foreground_margin_keeps_only_the_body_interior_away_from_the_image_edge():
    """``margin=0`` is the body dilated by 2 px; ``margin=m`` the pixels at least ``m`` px from the background and
    from the image edge, so a skull ring or an image frame can no longer hold a map's maximum."""
    from monai_hqanogan.scoring.selection import foreground_mask, reconstruction_scores

    image = torch.full((1, 1, 16, 16), -1.0)
    image[..., 4:12, 4:12] = 0.5  # an 8 x 8 head
    image[..., 0, :] = 1.0  # a bright frame line along the top edge
    dilated = foreground_mask(image, -0.9)
    assert dilated[0, 0, 2:14, 2:14].all() and dilated[0, 0, 2, :].all()
    inner = foreground_mask(image, -0.9, margin=2)
    expected = torch.zeros(16, 16)
    expected[6:10, 6:10] = 1.0  # 2 px in from every side of the head; the frame line is gone
    torch.testing.assert_close(inner[0, 0], expected)
    assert foreground_mask(image, None, margin=2).all()
    with pytest.raises(ValueError, match="margin must be >= 0"):
        foreground_mask(image, -0.9, margin=-1)
    # a reconstruction error on the head's outer ring scores with margin 0, not with margin 2
    rec = image.clone()
    rec[..., 4, 4:12] -= 1.0
    assert float(reconstruction_scores(image, rec, None, -0.9)["map_max"]) == pytest.approx(1.0)
    assert float(reconstruction_scores(image, rec, None, -0.9, foreground_margin=2)["map_max"]) == 0.0


def test_cycle_fine_standardises_each_fine_layer_on_normal_images():
    """``cycle_fine``: the per-layer cycle distances of the last third of W+ (layers 4, 5 of 6), each z-scored with
    the mean and spread :meth:`fit_cycle` found on normal images, averaged; the coarse layers do not count."""
    cal = AnomalyCalibration(num_ws=6, w_dim=4)
    normal = torch.rand(50, 6) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    cal.fit_cycle(normal)
    torch.testing.assert_close(cal.cycle_mean, normal.mean(0))
    torch.testing.assert_close(cal.cycle_std, normal.std(0))
    probe = cal.cycle_mean.expand(3, 6).clone()
    probe[0, 5] += 2 * cal.cycle_std[5]  # two spreads up on one fine layer: (0 + 2) / 2 fine layers
    probe[1, 0] += 100.0  # a coarse layer: ignored
    torch.testing.assert_close(cal.cycle_fine(probe), torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"cycle distances must be \[N >= 2, 6\]"):
        cal.fit_cycle(torch.rand(5, 4))
