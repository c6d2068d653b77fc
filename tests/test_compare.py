"""benchmarks/compare.py on a tiny synthetic set: every method's row, the ablations and the figure are written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.bundle_utils import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare_module():
    return load_benchmark("compare")


def test_quick_comparison_writes_both_protocols_for_every_row(compare_module, tmp_path, single_thread):
    cmp = compare_module
    budget = dataclasses.replace(
        cmp.BUDGETS["tiny"], hq={**cmp.BUDGETS["tiny"].hq, "generator_kimg": 0.016, "encoder_kimg": 0.016},
        fanogan_gan_iterations=2, fanogan_encoder_iterations=2, anogan_steps=2, anogan_max_images=6,
        refine_steps=1, refine_max_images=6,
    )  # fmt: skip
    data = cmp.toy_data(16, n_train=32, n_test=8)
    runs, out = [], None
    for seed in (0, 1):
        out = cmp.compare(data, budget, "cpu", log=lambda *a: None, seed=seed, ablations=seed == 0)
        runs.append(cmp.run_record(data, out, "toy", seed))
    args = type("Args", (), {"device": "cpu", "toy": True, "dataset_dir": None, "name": ""})()
    path = cmp.write_report(tmp_path, "tiny", runs, args, seconds=1.0, figure_data=(data, out))
    text = path.read_text()
    headline = text.split("## Normal-only (headline)")[1].split("##")[0]
    secondary = text.split("## Labelled-validation (secondary")[1].split("##")[0]
    assert text.index("## Normal-only (headline)") < text.index("## Labelled-validation")
    ran = [name for name in cmp.METHODS if name not in out["notes"]]
    assert {"HQ-AnoGAN", "f-AnoGAN", "AnoGAN", "autoencoder", "PCA", "mean intensity"} <= set(ran), out["notes"]
    for table in (headline, secondary):
        assert "| method | test image AUROC |" in table
        for name in cmp.METHODS:  # one row per method, run or not
            assert f"| {name} |" in table, name
        for name in ran:  # mean ± sd over the two seeds, and the runs counted
            row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
            assert " ± " in row and "| 2 |" in row, row
    # a method that could not run keeps its row and says why
    for name, why in out["notes"].items():
        assert f"**{name}**" in text and why in text
    runs_json = json.loads(path.with_suffix(".json").read_text())
    assert [r["seed"] for r in runs_json] == [0, 1]
    # each run's table gives the image AUROC's bootstrap interval (toy data: one group per image)
    ci = runs_json[0]["table"]["normal-only"]["test"]["PCA"]["image_auroc_ci"]
    assert ci["low"] <= runs_json[0]["table"]["normal-only"]["test"]["PCA"]["image_auroc"] <= ci["high"]
    assert "95% interval (groups)" in text and f"[{ci['low']:.3f}, {ci['high']:.3f}]" in text
    for protocol in ("normal-only", "labelled-validation"):
        table = runs_json[0]["table"][protocol]
        assert 0 <= table["test"]["PCA"]["image_auroc"] <= 1
        assert table["test"]["AnoGAN"]["images"] == 6  # the stratified subset
        assert table["localisation_test"]["HQ-AnoGAN"]["pixel_auroc"] is not None
        # which member of the score family each method used is in the table
        for name in ("autoencoder", "PCA", "AnoGAN"):
            used = table["test"][name]["score"]
            assert used and all(part.split()[-1] in ("residual", "map_max", "feature") for part in used.split(" + "))
        assert table["test"]["autoencoder"]["score"].count("feature") == 0  # no critic, no feature member
        # every method with a map chose its width among the widths HQ-AnoGAN's calibration chose among (16 px: 1 px
        # times the bundle's factors); the mean-intensity shortcut has no map
        widths = [float(f) for f in cmp.SMOOTHING_FACTORS]
        for name in ("HQ-AnoGAN", "f-AnoGAN", "AnoGAN", "autoencoder", "PCA"):
            assert table["test"][name]["map width px"] in widths, name
        assert table["test"]["mean intensity"]["map width px"] is None
    for name in ("f-AnoGAN", "AnoGAN", "autoencoder", "PCA"):  # the chosen width is the best on synthetic lesions
        width = out["results"][name]["width"]
        aurocs = width["smoothing_aurocs"]
        assert list(aurocs) == [f"{w:g}" for w in widths], name
        assert aurocs[f"{width['smoothing_sigma']:g}"] == max(aurocs.values()), name
        assert out["results"][name]["selections"]["normal-only"].report["selection_auroc"] == max(aurocs.values())
        assert table["test"]["mean intensity"]["score"] == "score"
    variants = [row["variant"] for row in runs_json[0]["ablations"]]
    assert any(v.startswith("selected under normal-only") for v in variants)
    assert any(v.startswith("latent refinement 1") for v in variants)
    assert runs_json[1]["ablations"] == []
    assert path.with_suffix(".png").stat().st_size > 1000


def test_normal_only_selection_ignores_real_labels_and_labelled_validation_uses_them(compare_module):
    import torch

    cmp = compare_module
    data = cmp.toy_data(16, n_train=8, n_test=20)
    n = len(data["validation"]["labels"])
    g = torch.Generator().manual_seed(0)
    # residual separates the synthetic lesions of localisation_validation; map_max the "real" abnormal validation
    # images; a normal-only choice must follow the first, a labelled one the second
    loc_labels = data["localisation_validation"]["labels"].float()
    val_labels = data["validation"]["labels"].float()
    sets = {
        "validation": {
            "residual": torch.randn(n, generator=g), "map_max": torch.randn(n, generator=g) + 5 * val_labels,
        },
        "localisation_validation": {
            "residual": torch.randn(n, generator=g) + 5 * loc_labels, "map_max": torch.randn(n, generator=g),
        },
    }  # fmt: skip
    result = {"candidates": ["residual", "map_max"], "sets": {k: {"components": v} for k, v in sets.items()}}
    normal_only = cmp.select_scores(result, data, "normal-only")
    assert normal_only.weights == {"residual": 1.0}
    assert normal_only.report["threshold_from"].startswith("FPR 0.05")
    # relabelling the validation abnormal images as anything else changes nothing under normal-only...
    flipped = {**data, "validation": {**data["validation"], "labels": 1 - data["validation"]["labels"]}}
    sets["validation"] = {k: v[data["validation"]["labels"] == 0] for k, v in sets["validation"].items()}
    flipped["validation"]["labels"] = torch.zeros(n // 2, dtype=torch.long)
    again = cmp.select_scores(
        {**result, "sets": {k: {"components": v} for k, v in sets.items()}}, flipped, "normal-only"
    )
    assert again.weights == normal_only.weights
    assert again.report["image_threshold"] == pytest.approx(normal_only.report["image_threshold"])
    # ...while the labelled protocol follows the real labels
    labelled = cmp.select_scores(result, data, "labelled-validation")
    assert labelled.weights == {"map_max": 1.0} and labelled.report["threshold_from"].startswith("F1 max")


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


TRAINING = {"generator_kimg": 16.0, "generator_s": 1.0, "encoder_kimg": 8.0, "encoder_s": 1.0, "ada_p": 0.0}


def _report(tmp_path, name, split, seed, aurocs):
    """A compare.py .json report with one run: ``aurocs`` method -> test image AUROC (others not run)."""

    methods = ("HQ-AnoGAN", "f-AnoGAN", "AnoGAN", "GANomaly", "autoencoder", "PCA", "mean intensity")

    def rows():
        return {
            m: {"image_auroc": aurocs[m], "score": "map_max"} if m in aurocs else {"note": "skipped"} for m in methods
        }

    table = {p: {"test": rows(), "localisation_test": rows()} for p in ("normal-only", "labelled-validation")}
    run = {"split": split, "seed": seed, "resolution": 16, "training_images": 8, "table": table, "notes": {},
           "ablations": [{"variant": name, "image AUROC": 0.5}] if "HQ-AnoGAN" in aurocs else [],
           "hq_training": {**TRAINING, "from": name} if "HQ-AnoGAN" in aurocs else None}  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([run]))
    return str(path)


def test_merge_joins_one_split_and_seed_and_takes_named_methods_from_each_file(compare_module, tmp_path):
    cmp = compare_module
    old = _report(tmp_path, "old", "s0", 0, {"HQ-AnoGAN": 0.80, "AnoGAN": 0.70, "PCA": 0.75})
    new = _report(tmp_path, "new", "s0", 0, {"HQ-AnoGAN": 0.90})
    gan = _report(tmp_path, "gan", "s0", 0, {"GANomaly": 0.60})
    other = _report(tmp_path, "other", "s1", 0, {"PCA": 0.65})
    runs = cmp.merge_runs([cmp.parse_merge_source(s) for s in (f"{old}:PCA", new, f"{gan}:GANomaly", other)])
    assert [(r["split"], r["seed"]) for r in runs] == [("s0", 0), ("s1", 0)]
    test = runs[0]["table"]["normal-only"]["test"]
    assert test["HQ-AnoGAN"]["image_auroc"] == 0.90 and test["PCA"]["image_auroc"] == 0.75
    assert test["GANomaly"]["image_auroc"] == 0.60
    assert "note" in test["AnoGAN"]  # only PCA was taken from the old file
    assert runs[0]["hq_training"]["from"] == "new" and runs[0]["ablations"][0]["variant"] == "new"
    assert runs[0]["sources"] == {"HQ-AnoGAN": "new.json", "GANomaly": "gan.json", "PCA": "old.json"}
    # without a filter the last file wins
    last = cmp.merge_runs([cmp.parse_merge_source(s) for s in (new, old)])
    assert last[0]["table"]["normal-only"]["test"]["HQ-AnoGAN"]["image_auroc"] == 0.80
    # the merged runs make a report whose headline averages over both splits
    report = cmp.main(["--merge", f"{old}:PCA", new, other, "--out", str(tmp_path / "out"), "--name", "merged"])
    text = report.read_text()
    assert "| PCA | 0.700 ± 0.071 |" in text
    assert "Merged: HQ-AnoGAN from `new.json`; PCA from `old.json`." in text
    with pytest.raises(SystemExit, match="unknown method"):
        cmp.parse_merge_source(f"{old}:HQ-AnoGANN")


def test_merge_takes_a_relative_and_an_absolute_path_of_one_split_as_one_split(compare_module, tmp_path):
    cmp = compare_module
    relative = "bundles/brain_mri_anomaly_hqanogan/data/br35h"
    first = _report(tmp_path, "rel", relative, 0, {"PCA": 0.75})
    second = _report(tmp_path, "abs", str(cmp.ROOT / relative), 0, {"AnoGAN": 0.70})
    runs = cmp.merge_runs([cmp.parse_merge_source(s) for s in (first, second)])
    assert [(r["split"], r["seed"]) for r in runs] == [(relative, 0)]
    assert runs[0]["sources"] == {"PCA": "rel.json", "AnoGAN": "abs.json"}
    assert cmp.split_name("/elsewhere/data/./br35h") == "/elsewhere/data/br35h"  # outside the repo: kept as given
