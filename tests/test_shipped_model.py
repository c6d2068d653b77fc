"""The weights shipped in the bundle (models/model.pt): they load safely with their calibration's fingerprint, match
what models/README.md records, and are what every entry point uses without overrides (inference on a PNG and on a
NIfTI volume, MONAI's verify_net_in_out)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_hqanogan.utils import load_checkpoint
from monai_hqanogan.workflows import SHIPPED_SETTING
from tests.bundle_utils import BUNDLE, config_files

CONFIGS = BUNDLE / "configs"
MODEL = BUNDLE / "models" / "model.pt"


def bundle_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=timeout, env=env,
        cwd=str(BUNDLE),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_shipped_model_is_recorded_small_and_safe():
    assert MODEL.is_file(), "the bundle ships models/model.pt"
    assert MODEL.stat().st_size < 16 * 2**20
    readme = (BUNDLE / "models" / "README.md").read_text()
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest in readme, "models/README.md records the sha256 of the shipped file"
    assert re.search(rf"setting\W+{SHIPPED_SETTING}\b", readme)
    state = load_checkpoint(MODEL)  # weights_only=True
    assert bool(state["calibration.calibrated"])
    assert state["calibration._extra_state"]["info"]["protocol"] == "normal-only"


def test_defaults_infer_on_a_png_and_a_nifti_volume_with_the_shipped_model(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :52]
    head = (((yy - 20) / 17) ** 2 + ((xx - 26) / 22) ** 2 < 1).astype(np.float32)
    png = tmp_path / "inputs" / "slice.png"
    png.parent.mkdir()
    Image.fromarray((head * (120 + 40 * rng.random((40, 52)))).astype(np.uint8)).save(png)
    volume = np.stack([head * (100 + 30 * rng.random((40, 52))) for _ in range(3)], axis=-1).astype(np.float32)
    nii = tmp_path / "inputs" / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 2.5, 1.0])), str(nii))
    for source, out in ((png, tmp_path / "out_png"), (nii, tmp_path / "out_nii")):
        bundle_cli(
            "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
            "--input", str(source), "--output_dir", str(out),
        )  # fmt: skip
        scores = json.loads((out / "scores.json").read_text())
        assert scores["images"] == 1 and len(scores["rows"]) == 1
        assert np.isfinite(scores["rows"][0]["score"])
    label = nib.load(str(tmp_path / "out_nii" / "volume_anomaly_label.nii.gz"))
    assert label.shape[:3] == volume.shape and np.allclose(label.affine, np.diag([0.9, 0.9, 2.5, 1.0]))


def test_verify_net_in_out_passes_with_the_defaults():
    result = bundle_cli(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json",
    )  # fmt: skip
    assert "verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_the_configs_default_to_the_shipped_weights(config):
    from monai.bundle import ConfigWorkflow

    w = ConfigWorkflow(config_file=config_files(config), workflow_type="infer", bundle_root=str(BUNDLE))
    assert w.parser.get_parsed_content("model_file") == str(MODEL)
