from __future__ import annotations

import pytest
import torch

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images
from monai_hqanogan.networks.nets import HQAnoGANDetector, PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.scoring import SCORE_NAMES, AnomalyCalibration, load_calibration, save_calibration
from monai_hqanogan.utils import CheckpointError

RES = 16


def make_detector(seed: int = 0, **kwargs) -> HQAnoGANDetector:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32)
    d = StyleGAN2Discriminator(resolution=RES, channel_base=256, channel_max=32)
    e = PSPEncoder(resolution=RES, w_dim=16, num_ws=g.num_ws, base_channels=4, max_channels=16, w_avg=g.w_avg)
    with torch.no_grad():  # make the untrained encoder's output depend on the image
        for head in e.heads:
            head.linear.weight.normal_()
    return HQAnoGANDetector(e, g.eval(), d, **kwargs)


def calibrated(seed: int = 0, **kwargs) -> tuple[HQAnoGANDetector, torch.Tensor]:
    det = make_detector(seed, **kwargs)
    normal = make_ellipse_images(24, RES, seed=1)
    lesioned, _ = add_synthetic_lesions(make_ellipse_images(12, RES, seed=2), seed=3)
    labels = torch.cat([torch.zeros(12), torch.ones(12)])
    det.calibrate(normal, torch.cat([normal[:12], lesioned]), labels, weight_step=0.5)
    return det, normal


def test_forward_gives_the_anomaly_map_and_detect_the_full_record():
    det, normal = calibrated()
    x = normal[:3]
    amap = det(x)
    assert amap.shape == (3, 1, RES, RES) and bool((amap >= 0).all())
    rec = det.detect(x)
    assert set(rec) >= {"pred_score", "pred_label", "anomaly_map", "pred_mask", "reconstruction", "valid"}
    assert rec["pred_score"].shape == (3,) and rec["pred_label"].dtype == torch.bool
    assert rec["pred_mask"].shape == (3, 1, RES, RES) and rec["pred_mask"].dtype == torch.bool
    assert torch.allclose(rec["anomaly_map"], amap, atol=1e-6)
    assert torch.equal(rec["pred_mask"], amap >= det.calibration.pixel_threshold)
    assert bool(rec["valid"].all())
    assert set(rec["components"]) == set(SCORE_NAMES)
    assert torch.allclose(rec["pred_score"], det.calibration.combine(rec["components"]))


def test_detect_all_batches_like_detect():
    det, normal = calibrated()
    every = det.detect_all(normal[:7], batch_size=3)
    one = det.detect(normal[:7])
    assert torch.allclose(every["pred_score"], one["pred_score"], atol=1e-5)
    assert torch.allclose(every["anomaly_map"], one["anomaly_map"], atol=1e-6)
    assert every["reconstruction"].shape == (7, 1, RES, RES)
    with pytest.raises(RuntimeError, match="not calibrated"):
        make_detector().detect_all(normal[:2])


def test_detect_needs_calibration_and_refuses_bad_input():
    det = make_detector()
    with pytest.raises(RuntimeError, match="not calibrated"):
        det.detect(torch.zeros(1, 1, RES, RES))
    with pytest.raises(ValueError, match=r"\[batch, 1, 16, 16\].*gan_image_transforms"):
        det.score_components(torch.zeros(1, 1, RES, 2 * RES))
    with pytest.raises(ValueError, match=r"\[batch, 1, 16, 16\]"):
        det.score_components(torch.zeros(1, 3, RES, RES))
    bad = torch.zeros(3, 1, RES, RES)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images \[1\] of the batch contain NaN"):
        det.score_components(bad)


def test_constant_images_are_scored_but_marked_invalid():
    det, _ = calibrated()
    rec = det.detect(torch.full((2, 1, RES, RES), -1.0))
    assert not bool(rec["valid"].any())
    assert bool(torch.isfinite(rec["pred_score"]).all())


def test_calibration_round_trip_and_refusal_for_another_model(tmp_path):
    det, normal = calibrated()
    path = save_calibration(det.calibration, tmp_path / "calibration.pt")
    fresh = make_detector()  # same seed: same weights
    load_calibration(path, fresh.calibration, fresh.fingerprint())
    assert torch.equal(fresh.detect(normal[:4])["pred_score"], det.detect(normal[:4])["pred_score"])
    other = make_detector(seed=1)
    with pytest.raises(CheckpointError, match="belongs to another model"):
        load_calibration(path, other.calibration, other.fingerprint())


def test_trace_export_round_trip(tmp_path):
    det, normal = calibrated()
    x = normal[:2]
    traced = torch.jit.trace(det, x)
    traced.save(str(tmp_path / "detector.ts"))
    loaded = torch.jit.load(str(tmp_path / "detector.ts"))
    assert torch.allclose(loaded(x), det(x), atol=1e-5)


def test_foreground_masking_and_smoothing():
    x = make_ellipse_images(2, RES, seed=5)
    masked = make_detector(foreground_threshold=-0.9)(x)
    assert bool((masked[x.amax(1, keepdim=True) <= -0.9 - 1e-6].abs() >= 0).all())
    fg = make_detector(foreground_threshold=-0.9).foreground(x)
    assert float(masked[fg == 0].abs().max()) == 0.0 and float(masked[fg == 1].abs().max()) > 0
    raw = make_detector(smoothing_sigma=0)(x)
    smooth = make_detector(smoothing_sigma=1.5)(x)
    assert float(smooth.std()) < float(raw.std())  # smoothing removes pixel noise


def test_refinement_reduces_the_reconstruction_error():
    x = make_ellipse_images(2, RES, seed=7)
    fast = make_detector()
    refined = make_detector(refine_steps=20, refine_lr=0.05)
    err_fast = float((fast.reconstruct(x)[1] - x).square().mean())
    err_refined = float((refined.reconstruct(x)[1] - x).square().mean())
    assert err_refined < err_fast


def test_mismatched_networks_and_arguments_are_refused():
    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, channel_base=256, channel_max=32)
    e = PSPEncoder(resolution=2 * RES, w_dim=16, base_channels=4, max_channels=16)
    with pytest.raises(ValueError, match="encoder resolution=32 != generator resolution=16"):
        HQAnoGANDetector(e, g)
    e = PSPEncoder(resolution=RES, w_dim=16, num_ws=g.num_ws, base_channels=4, max_channels=16)
    with pytest.raises(ValueError, match="refine_steps"):
        HQAnoGANDetector(e, g, refine_steps=-1)
    assert isinstance(HQAnoGANDetector(e, g).calibration, AnomalyCalibration)


def test_noise_mode_none_gives_noise_free_reconstructions():
    x = make_ellipse_images(2, RES, seed=3)
    const, none = make_detector(), make_detector(noise_mode="none")
    for layer in [m for m in none.generator.modules() if hasattr(m, "noise_strength")]:
        layer.noise_strength.data.fill_(0.5)
    expected = none.generator.synthesis(none.encoder(x), noise_mode="none")
    assert torch.equal(none.reconstruct(x)[1], expected)
    assert not torch.equal(none.reconstruct(x)[1], none.generator.synthesis(none.encoder(x), noise_mode="const"))
    assert const.noise_mode == "const"
    with pytest.raises(ValueError, match="noise_mode"):
        make_detector(noise_mode="random")


def test_pixel_threshold_from_synthetic_lesion_masks_maximises_dice():
    det = make_detector()
    normal = make_ellipse_images(12, RES, seed=1)
    lesioned, masks = add_synthetic_lesions(make_ellipse_images(12, RES, seed=2), seed=3)
    images = torch.cat([normal, lesioned])
    all_masks = torch.cat([torch.zeros_like(masks), masks])
    labels = torch.cat([torch.zeros(12), torch.ones(12)])
    # normal-only: real lesion masks of the validation images choose nothing
    with pytest.raises(ValueError, match="choose nothing under protocol 'normal-only'"):
        det.calibrate(normal, images, labels, val_masks=all_masks)
    # the opt-in protocol takes them
    report = det.calibrate(normal, images, labels, val_masks=all_masks, protocol="labelled-validation")
    assert report["pixel_threshold_from"].startswith("Dice max") and report["protocol"] == "labelled-validation"
    threshold = float(det.calibration.pixel_threshold)
    # normal-only: the same images given as the synthetic-lesion selection set set the same pixel threshold
    report = det.calibrate(
        normal, normal[:6], selection_images=images, selection_labels=labels, selection_masks=all_masks
    )
    assert report["pixel_threshold_from"].endswith("(synthetic lesions)") and report["protocol"] == "normal-only"
    assert float(det.calibration.pixel_threshold) == pytest.approx(threshold)
    assert report["weights_from"].startswith("synthetic-lesion AUROC on 24")
    maps = det(images)
    best = (
        2
        * ((maps >= det.calibration.pixel_threshold) & all_masks.bool()).sum()
        / ((maps >= det.calibration.pixel_threshold).sum() + all_masks.sum())
    )
    for t in torch.quantile(maps[maps > 0].flatten(), torch.tensor([0.5, 0.9, 0.99])):  # no listed threshold is better
        other = 2 * ((maps >= t) & all_masks.bool()).sum() / ((maps >= t).sum() + all_masks.sum())
        assert float(best) >= float(other) - 0.02


def test_calibrate_fits_the_cycle_statistics_on_the_fit_images():
    """The per-layer cycle statistics of ``cycle_fine`` come from the normal fit images, the same images as the W+
    Gaussian; after calibration the fit images' fine-layer z-scores average to 0."""
    det, normal = calibrated()
    layers = det.score_components(normal)["cycle_layers"]
    torch.testing.assert_close(det.calibration.cycle_mean, layers.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(det.calibration.cycle_std, layers.std(0).clamp_min(1e-8), rtol=1e-4, atol=1e-6)
    assert abs(float(det.score_components(normal)["cycle_fine"].mean())) < 1e-4
