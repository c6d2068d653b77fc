"""The bundle's model.pt: float16 storage that reproduces the calibration exactly, and loads that fail closed (NaN
weights, a calibration made for other networks)."""

from __future__ import annotations

import pytest
import torch

from monai_hqanogan.utils import CheckpointError, load_checkpoint
from monai_hqanogan.workflows import export_detector, load_model_file, round_networks_to_half
from tests.test_detector import calibrated, make_detector


def test_float16_storage_halves_the_file_and_reproduces_scores_and_fingerprint(tmp_path):
    det, normal = calibrated()
    round_networks_to_half(det)
    det.calibration.fingerprint = det.fingerprint()  # as calibrate_detector does after rounding
    full = export_detector(det, tmp_path / "fp32.pt")
    half = export_detector(det, tmp_path / "fp16.pt", storage_dtype="float16")
    assert half.stat().st_size < 0.75 * full.stat().st_size
    state = load_checkpoint(half)
    assert state["generator.synthesis.blocks.0.const"].dtype == torch.float16  # the networks are stored in half
    assert state["calibration.score_mean"].dtype == torch.float32  # the calibration is not
    loaded = load_model_file(make_detector(seed=5), half, "test")
    assert next(loaded.generator.parameters()).dtype == torch.float32  # cast back on load
    assert loaded.fingerprint() == det.fingerprint() == loaded.calibration.fingerprint
    assert torch.equal(loaded.detect(normal[:4])["pred_score"], det.detect(normal[:4])["pred_score"])
    with pytest.raises(ValueError, match="storage_dtype"):
        export_detector(det, tmp_path / "int.pt", storage_dtype=torch.int8)


def test_nan_weights_are_refused_at_load(tmp_path):
    det, _ = calibrated()
    state = det.state_dict()
    key = "generator.synthesis.blocks.0.const"
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="NaN or inf.*generator.synthesis.blocks.0.const"):
        load_model_file(make_detector(), tmp_path / "model.pt", "test")
    state = det.state_dict()
    state["calibration.image_threshold"] = torch.tensor(float("nan"))
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="calibration.image_threshold"):
        load_model_file(make_detector(), tmp_path / "model.pt", "test")


def test_a_foreign_calibration_is_refused_at_load(tmp_path):
    det_a, _ = calibrated(seed=0)
    det_b, _ = calibrated(seed=1)
    mixed = det_a.state_dict()
    mixed.update({k: v for k, v in det_b.state_dict().items() if k.startswith("calibration.")})
    torch.save(mixed, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="made for other networks"):
        load_model_file(make_detector(), tmp_path / "model.pt", "test")
    torch.save(det_a.state_dict(), tmp_path / "model.pt")
    assert load_model_file(make_detector(seed=3), tmp_path / "model.pt", "test").fingerprint() == det_a.fingerprint()


def test_non_finite_scores_are_an_error_not_normal():
    det, normal = calibrated()
    with torch.no_grad():
        det.generator.synthesis.blocks[0].const.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite anomaly scores"):
        det.detect(normal[:2])
    with pytest.raises(FloatingPointError, match="non-finite anomaly scores"):
        det.detect_all(normal[:2])
