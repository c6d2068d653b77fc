"""benchmarks/compare.py on a tiny synthetic set: every method's row, the ablations and the figure are written."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare_module():
    spec = importlib.util.spec_from_file_location("compare_benchmark", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_comparison_writes_every_row(compare_module, tmp_path, single_thread):
    cmp = compare_module
    budget = dataclasses.replace(
        cmp.BUDGETS["tiny"], hq={**cmp.BUDGETS["tiny"].hq, "generator_kimg": 0.016, "encoder_kimg": 0.016},
        fanogan_gan_iterations=2, fanogan_encoder_iterations=2, anogan_steps=2, anogan_max_images=6,
        refine_steps=1, refine_max_images=6,
    )  # fmt: skip
    data = cmp.toy_data(16, n_train=32, n_test=8)
    out = cmp.compare(data, budget, "cpu", log=lambda *a: None)
    args = type("Args", (), {"device": "cpu", "toy": True, "dataset_dir": None})()
    path = cmp.write_report(tmp_path, "tiny", data, out, args, seconds=1.0)
    text = path.read_text()
    table = text.split("## Test split")[1].split("##")[0]
    assert "| method | image AUROC |" in table
    for name in cmp.METHODS:  # one row per method, run or not
        assert f"| {name} |" in table, name
    ran = [name for name in cmp.METHODS if name not in out["notes"]]
    assert {"HQ-AnoGAN", "f-AnoGAN", "AnoGAN", "autoencoder", "PCA", "mean intensity"} <= set(ran), out["notes"]
    # a method that could not run keeps its row and says why
    for name, why in out["notes"].items():
        assert f"**{name}**" in text and why in text
    numbers = json.loads(path.with_suffix(".json").read_text())
    assert 0 <= numbers["table"]["test"]["PCA"]["image_auroc"] <= 1
    assert numbers["table"]["test"]["AnoGAN"]["images"] == 6  # the stratified subset
    assert numbers["table"]["localisation_test"]["HQ-AnoGAN"]["pixel_auroc"] is not None
    variants = [row["variant"] for row in numbers["ablations"]]
    assert "calibrated combination" in variants and any(v.startswith("latent refinement 1") for v in variants)
    assert path.with_suffix(".png").stat().st_size > 1000


def test_data_cache_round_trip_and_resolution_check(compare_module, tmp_path):
    cmp = compare_module
    data = cmp.toy_data(16, n_train=8, n_test=4)
    small = {k: {**v, "images": v["images"].half()} for k, v in data.items()}
    cache = tmp_path / "cache.pt"
    import torch

    torch.save({"resolution": 16, "data": small}, cache)
    back = cmp.dataset_data(None, 16, cache)
    assert back["test"]["images"].dtype == torch.float32
    assert torch.allclose(back["test"]["images"], data["test"]["images"], atol=1e-3)
    assert torch.equal(back["localisation_test"]["masks"], data["localisation_test"]["masks"])
    with pytest.raises(ValueError, match="holds 16 px images, this mode needs 32 px"):
        cmp.dataset_data(None, 32, cache)
    with pytest.raises(ValueError, match="give --dataset_dir"):
        cmp.dataset_data(None, 16, tmp_path / "absent.pt")


def test_skipped_methods_keep_their_row(compare_module, tmp_path, single_thread):
    cmp = compare_module
    budget = dataclasses.replace(
        cmp.BUDGETS["tiny"], hq={**cmp.BUDGETS["tiny"].hq, "generator_kimg": 0.008, "encoder_kimg": 0.008},
        hq_generator_s=0.0, anogan_steps=1, anogan_max_images=4, refine_steps=1, refine_max_images=4,
    )  # fmt: skip
    data = cmp.toy_data(16, n_train=16, n_test=4)
    skip = ("f-AnoGAN", "GANomaly", "autoencoder")
    out = cmp.compare(data, budget, "cpu", log=lambda *a: None, skip=skip)
    assert {name: out["notes"][name] for name in skip} == {name: "skipped (--skip)" for name in skip}
    assert {"HQ-AnoGAN", "AnoGAN", "PCA", "mean intensity"} <= set(out["results"])
    # a zero-second generator budget stops at the first batch
    assert out["results"]["HQ-AnoGAN"]["training"]["generator_kimg"] == 0
