"""benchmarks/latent_study.py: where a map peaks, the normal-only latent candidates, and a whole run on tiny weights."""

from __future__ import annotations

import json

import pytest
import torch

from monai_hqanogan.workflows.main_job import run_main_job
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, load_benchmark, make_tiny_dataset


@pytest.fixture(scope="module")
def study_module():
    return load_benchmark("latent_study")


def test_peak_places_tell_the_border_the_skull_rim_and_the_inside_apart(study_module):
    images = torch.full((3, 1, 32, 32), -1.0)
    images[..., 6:26, 6:26] = 0.5  # a 20 x 20 head; margin 2 px
    amap = torch.zeros(3, 1, 32, 32)
    amap[0, 0, 0, 15] = 1.0  # the top edge: a frame
    amap[1, 0, 6, 15] = 1.0  # the head's outermost row: the skull
    amap[2, 0, 15, 15] = 1.0  # the middle of the head
    assert study_module.peak_places(amap, images) == ["border", "rim", "inside"]
    counts = study_module.shortcut_counts(
        torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0]), ["border", "rim", "inside"], top=1
    )
    assert counts == {"abnormal": {"border": 1, "rim": 0, "inside": 0}, "normal": {"border": 0, "rim": 0, "inside": 1}}


def test_latent_candidates_take_their_statistics_from_the_fit_codes_only(study_module):
    torch.manual_seed(0)
    fit = {"ws": torch.randn(40, 6, 4), "ws_cycle": torch.randn(40, 6, 4)}
    for name in ("map_max", "residual", "feature", "latent_cycle", "mahalanobis", "w_avg_distance"):
        fit[name] = torch.rand(40)
    cands = study_module.LatentCandidates(fit, k=3)
    scores = cands(fit, exclude_self=True)
    assert set(scores) >= set(study_module.LATENT) | set(study_module.FAMILY)
    assert abs(float(scores["cycle_z"].mean())) < 1e-6  # z-scored per layer on these very codes
    assert bool((scores["latent_knn"] > 0).all())  # an image is not its own neighbour
    far = {**fit, "ws": fit["ws"] + 10.0}  # codes far from every fit code
    assert bool((cands(far)["latent_knn"] > scores["latent_knn"].max()).all())


def test_a_whole_study_on_tiny_weights_writes_every_table(study_module, tmp_path, single_thread):
    make_tiny_dataset(tmp_path / "data")
    overrides = ["--settings", json.dumps(TINY_SETTINGS)]
    run_main_job(BUNDLE, dataset_dir=tmp_path / "data", stages=["train_generator", "train_encoder", "calibrate"],
                 overrides=overrides, run_dir=tmp_path / "runs")  # fmt: skip
    out = tmp_path / "study"
    result = study_module.main([
        "--dataset_dir", str(tmp_path / "data"), "--model_file", str(tmp_path / "runs" / "models" / "model.pt"),
        "--settings", json.dumps(TINY_SETTINGS), "--margins", "0", "1", "--out", str(out),
    ])  # fmt: skip
    assert json.loads((out / "latent_study.json").read_text())["counts"]["test"] == 8
    text = (out / "latent_study.md").read_text()
    for name in study_module.LATENT:
        assert f"| {name} | latent |" in text
    assert set(result["margins"]) == {0, 1}
    for part in result["margins"].values():
        assert "family" in part["combinations"] and "family + latent" in part["combinations"]
        for per_class in part["shortcuts"].values():  # the 8 test images: 4 of each class, all in the "top 50"
            assert sum(per_class["abnormal"].values()) == 4 and sum(per_class["normal"].values()) == 4
    assert 0.0 <= result["margins"][0]["alone"]["cycle_fine"]["test"] <= 1.0
