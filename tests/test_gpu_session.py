"""benchmarks/gpu_session.py end to end at tiny size on the CPU: what a GPU session runs, before device time is
spent (throughput, the model file, the comparison, the session record)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.bundle_utils import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    return load_benchmark(name, "under_test")


def test_tiny_gpu_session_writes_every_result(tmp_path, single_thread):
    session = _module("gpu_session")
    out = session.main(["--tiny", "--out", str(tmp_path / "out"), "--device", "cpu"])
    names = {p.name for p in out.iterdir()}
    assert {"throughput.md", "model.pt", "model.json", "session.json"} <= names
    assert any(n.endswith("-compare-gpu-session.md") for n in names)
    rows = [line for line in (out / "throughput.md").read_text().splitlines() if line.startswith("| 8 ")]
    assert rows and float(rows[0].split("|")[4]) > 0  # images/s
    info = json.loads((out / "model.json").read_text())
    assert info["sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert info["calibration"]["protocol"] == "normal-only"
    assert info["training"]["generator_stopped_by"] in ("total_kimg", "max_seconds")
    record = json.loads((out / "session.json").read_text())
    assert set(record["seconds"]) >= {"throughput", "model", "compare", "total"}
    # the model file is the detector the comparison scored, loadable with its calibration's fingerprint intact
    cmp = _module("compare")
    budget = cmp.BUDGETS["tiny"]
    budget = type(budget)(**{**budget.__dict__, "hq": info["setting"]})
    det = cmp.load_hqanogan(out / "model.pt", budget, "cpu", 0.0)["detector"]
    assert det.calibration.fingerprint == det.fingerprint()
    report = json.loads(next(out.glob("*-compare-gpu-session.json")).read_text())
    assert report[0]["table"]["normal-only"]["test"]["HQ-AnoGAN"]["image_auroc"] is not None


def test_gpu_setting_is_a_complete_bundle_setting():
    from monai_hqanogan.workflows import check_settings

    settings = json.loads((ROOT / "bundles/brain_mri_anomaly_hqanogan/configs/settings.json").read_text())["gpu"]
    check_settings(settings)
    assert settings["resolution"] == 64 and settings["generator_seconds"] + settings["encoder_seconds"] < 8 * 60
