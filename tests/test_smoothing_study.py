"""benchmarks/smoothing_study.py: selection AUROC of map_max per smoothing width, on synthetic lesions only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from monai_hqanogan.baselines import PCABaseline
from monai_hqanogan.evaluation import family_scores
from monai_hqanogan.metrics import compute_image_auroc
from monai_hqanogan.workflows import load_split
from tests.bundle_utils import TINY_SETTINGS, load_benchmark, make_tiny_dataset, tiny_model_runs


@pytest.fixture(scope="module")
def study_module():
    return load_benchmark("smoothing_study")


def test_model_arguments(study_module):
    assert study_module.parse_model("a=cpu:m.pt") == ("a", "cpu", None, Path("m.pt"))
    assert study_module.parse_model("b=cpu@64:runs/m.pt") == ("b", "cpu", 64, Path("runs/m.pt"))
    for bad in ("cpu:m.pt", "a=m.pt", "a=cpu:", "a=cpu@x:m.pt", "a=cpu@:m.pt"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=SETTING"):
            study_module.parse_model(bad)


def test_named_settings_and_a_resolution_override(study_module):
    assert study_module.bundle_settings(study_module.BUNDLE, "cpu", 64)["resolution"] == 64
    with pytest.raises(ValueError, match="setting 'nope' is not in configs/settings.json"):
        study_module.bundle_settings(study_module.BUNDLE, "nope", None)


def test_tiny_study_scores_only_training_and_synthetic_lesions(study_module, tmp_path, single_thread, monkeypatch):
    datalist = make_tiny_dataset(tmp_path / "data")
    model = tiny_model_runs(tmp_path / "runs") / "models" / "model.pt"
    read = []

    def recording(path, key, *args, **kwargs):
        read.append(key)
        return load_split(path, key, *args, **kwargs)

    monkeypatch.setattr(study_module, "load_split", recording)
    out = tmp_path / "study.md"
    args = ["--dataset_dir", str(tmp_path / "data"), "--model", f"tiny=demo:{model}", "--settings",
            json.dumps(TINY_SETTINGS), "--factors", "1", "2", "--out", str(out)]  # fmt: skip
    assert study_module.main(args) == 0
    assert set(read) == {"training", "localisation_validation"}  # no test image, no real tumour
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in result["rows"]] == ["HQ-AnoGAN", "PCA", "autoencoder"]
    for row in result["rows"]:
        assert row["resolution"] == 16 and len(row["auroc"]) == 2 and all(0 <= a <= 1 for a in row["auroc"])
    # PCA is deterministic: its row is map_max's AUROC at sigma = f * 16 / 32 px, computed here directly
    fit = load_split(datalist, "training", 16)
    sel = load_split(datalist, "localisation_validation", 16, require_labels=True)
    pca = PCABaseline(n_components=0.95).fit(fit["images"])
    rec = pca.reconstruct(sel["images"])
    expected = [compute_image_auroc(family_scores(sel["images"], rec, smoothing=f / 2)["map_max"], sel["labels"])
                for f in (1, 2)]  # fmt: skip
    assert result["rows"][1]["auroc"] == pytest.approx(expected)
    assert "| tiny (16 px) | PCA |" in out.read_text()


def test_factors_must_be_positive_and_names_unique(study_module, tmp_path):
    for extra in (["--factors", "0"], ["--model", "a=cpu:m.pt"]):
        with pytest.raises(SystemExit):
            study_module.main(["--dataset_dir", str(tmp_path), "--model", "a=cpu:m.pt", "--out", "x.md", *extra])
