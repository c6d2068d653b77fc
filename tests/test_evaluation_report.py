from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from monai_hqanogan.data import make_toy_lesion_set
from monai_hqanogan.evaluation import evaluate_detection, write_evaluation_report
from monai_hqanogan.metrics import (
    compute_aupro,
    compute_dice_at_threshold,
    compute_f1_max_threshold,
    compute_image_auroc,
    compute_pixel_auroc,
)

N = 24  # images per class


def _method(labels, masks, signal, seed, with_maps=True):
    """Fake outputs of a detector: scores and maps that follow the truth with ``signal`` strength plus noise."""
    g = torch.Generator().manual_seed(seed)
    scores = signal * labels + torch.rand(labels.shape, generator=g)
    maps = signal * masks + torch.rand(masks.shape, generator=g) if with_maps else None
    return {"scores": scores, "labels": labels, "maps": maps, "masks": masks}


@pytest.fixture(scope="module")
def toy():
    _, labels, masks = make_toy_lesion_set(N, 16, seed=5)
    return labels, masks


@pytest.fixture(scope="module")
def results(toy):
    labels, masks = toy
    test = {
        "HQ-AnoGAN": _method(labels, masks, 0.8, 0),
        "mean intensity": {"scores": 0.3 * labels + torch.rand(2 * N, generator=torch.Generator().manual_seed(1)),
                           "labels": labels},
        "PCA": _method(labels, masks, 0.3, 2),
        "autoencoder": {**_method(labels, masks, 0.5, 3), "pixel_threshold": 0.9},
    }  # fmt: skip
    lesioned = labels == 1
    localisation = {
        name: {**entry, "scores": entry["scores"][lesioned], "labels": entry["labels"][lesioned]}
        | (
            {"maps": entry["maps"][lesioned], "masks": entry["masks"][lesioned]}
            if entry.get("maps") is not None
            else {}
        )
        for name, entry in test.items()
    }
    return {"test": test, "localisation_test": localisation}


# ---------------------------------------------------------------------------------------------------------------------
# evaluate_detection


def test_metrics_equal_the_metric_functions(toy):
    labels, masks = toy
    m = _method(labels, masks, 0.4, 7)
    out = evaluate_detection(m["scores"], labels, m["maps"], masks)
    assert out["image_auroc"] == compute_image_auroc(m["scores"], labels)
    assert (out["f1_max"], out["f1_max_threshold"]) == compute_f1_max_threshold(m["scores"], labels)
    assert out["pixel_auroc"] == compute_pixel_auroc(m["maps"], masks)
    assert out["aupro"] == compute_aupro(m["maps"], masks, fpr_limit=0.3)
    assert out["dice_kind"] == "max"
    assert out["dice"] == compute_dice_at_threshold(m["maps"], masks, out["dice_threshold"])
    # Dice over the set equals the pixel F1, so the Dice-max is the pixel F1-max and no threshold does better
    assert out["dice"] == pytest.approx(compute_f1_max_threshold(m["maps"].ravel(), masks.ravel())[0])
    for t in np.quantile(m["maps"].numpy(), [0.5, 0.8, 0.9, 0.95, 0.99]):
        assert compute_dice_at_threshold(m["maps"], masks, float(t)) <= out["dice"] + 1e-12
    assert (out["num_images"], out["num_normal"], out["num_abnormal"]) == (2 * N, N, N)
    assert out["num_pixels"] == masks.numel() and out["num_anomalous_pixels"] == int(masks.sum())
    assert out["image_note"] is None and out["pixel_note"] is None and out["pixel_subsampling"] is None
    json.dumps(out, allow_nan=False)  # plain values only

    at = evaluate_detection(m["scores"], labels, m["maps"], masks, pixel_threshold=0.7, max_fpr_pro=0.1)
    assert at["dice_kind"] == "at_threshold" and at["dice_threshold"] == 0.7
    assert at["dice"] == compute_dice_at_threshold(m["maps"], masks, 0.7)
    assert at["aupro"] == compute_aupro(m["maps"], masks, fpr_limit=0.1) and at["aupro_fpr_limit"] == 0.1


def test_without_maps_or_masks(toy):
    labels, masks = toy
    m = _method(labels, masks, 0.4, 7)
    no_maps = evaluate_detection(m["scores"], labels)
    assert no_maps["image_auroc"] == compute_image_auroc(m["scores"], labels)
    assert no_maps["pixel_auroc"] is None and no_maps["aupro"] is None and no_maps["dice"] is None
    assert "no anomaly map" in no_maps["pixel_note"]
    no_masks = evaluate_detection(m["scores"], labels, maps=m["maps"])
    assert no_masks["pixel_auroc"] is None and "no ground-truth masks" in no_masks["pixel_note"]
    empty_masks = evaluate_detection(m["scores"], labels, m["maps"], torch.zeros_like(masks))
    assert empty_masks["aupro"] is None and "no anomalous pixel" in empty_masks["pixel_note"]


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_none_with_a_reason(toy, label):
    labels, masks = toy
    keep = labels == label
    m = _method(labels, masks, 0.4, 7)
    out = evaluate_detection(m["scores"][keep], labels[keep], m["maps"][keep], masks[keep])
    assert out["image_auroc"] is None and out["f1_max"] is None and out["f1_max_threshold"] is None
    assert ("normal" if label == 0 else "abnormal") in out["image_note"] and "both" in out["image_note"]
    if label == 1:  # all lesioned: the pixels still have both classes
        assert out["pixel_auroc"] == compute_pixel_auroc(m["maps"][keep], masks[keep])
    else:
        assert out["pixel_auroc"] is None and out["pixel_note"]


def test_pixel_subsampling_is_deterministic_and_close(toy):
    labels, masks = toy
    m = _method(labels, masks, 0.4, 7)
    exact = evaluate_detection(m["scores"], labels, m["maps"], masks)
    runs = [evaluate_detection(m["scores"], labels, m["maps"], masks, max_pixels=4000) for _ in range(2)]
    assert runs[0] == runs[1]
    sub = runs[0]["pixel_subsampling"]
    assert sub is not None and 3000 < sub["pixels_for_auroc"] < 5000 and 0 < sub["images_for_aupro"] < 2 * N
    assert "subset" in sub["note"]
    for key in ("pixel_auroc", "aupro", "dice"):
        assert runs[0][key] == pytest.approx(exact[key], abs=0.05), key
    # the Dice is counted on all pixels, at the threshold found on the subset
    assert runs[0]["dice"] == compute_dice_at_threshold(m["maps"], masks, runs[0]["dice_threshold"])
    assert evaluate_detection(m["scores"], labels, m["maps"], masks, max_pixels=4000, seed=1) != runs[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scores": torch.rand(5)}, "same length"),
        ({"maps": torch.rand(3, 1, 16, 16)}, "one entry per image"),
        ({"max_fpr_pro": 0.0}, "max_fpr_pro"),
        ({"max_pixels": 10}, "max_pixels"),
        ({"scores": torch.full((2 * N,), float("nan"))}, "NaN"),
    ],
)
def test_evaluate_bad_input(toy, kwargs, match):
    labels, masks = toy
    args = {**_method(labels, masks, 0.4, 7), **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate_detection(**args)


# ---------------------------------------------------------------------------------------------------------------------
# write_evaluation_report


def _table(markdown: str, section: str) -> list[list[str]]:
    """The rows (cells) of the first table after the heading ``## section``."""
    lines = markdown.split(f"## {section}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in r.strip("|").split("|")] for r in lines[start:end] if not r.startswith("|---")]


def test_report_files_and_numbers(results, tmp_path):
    info = {"machine": "2 CPU cores", "command": "python eval.py", "timings_s": {"fit": 1.5}, "counts": [48, 24]}
    paths = write_evaluation_report(tmp_path / "out", results, title="Toy report", info=info)
    out = tmp_path / "out"
    assert paths["json"] == out / "report.json" and paths["markdown"] == out / "report.md"
    expected_figures = {"roc_test", "hist_test_hq-anogan", "hist_test_mean-intensity", "hist_test_pca"}
    expected_figures.add("hist_test_autoencoder")  # no ROC for the set with one class
    assert set(paths) == expected_figures | {"json", "markdown", "scores_test", "scores_localisation-test"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    for name in expected_figures:
        with Image.open(paths[name]) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100

    report = json.loads(paths["json"].read_text())
    assert report["title"] == "Toy report" and report["info"] == info
    for set_name, methods in results.items():
        assert list(report["metrics"][set_name]) == list(methods)
        for method, entry in methods.items():
            got = report["metrics"][set_name][method]
            expected = evaluate_detection(
                entry["scores"], entry["labels"], entry.get("maps"), entry.get("masks"),
                pixel_threshold=entry.get("pixel_threshold"),
            )  # fmt: skip
            assert got == expected
    test_metrics = report["metrics"]["test"]
    hq = results["test"]["HQ-AnoGAN"]
    assert test_metrics["HQ-AnoGAN"]["image_auroc"] == compute_image_auroc(hq["scores"], hq["labels"])
    assert test_metrics["HQ-AnoGAN"]["aupro"] == compute_aupro(hq["maps"], hq["masks"], fpr_limit=0.3)
    assert test_metrics["autoencoder"]["dice"] == compute_dice_at_threshold(
        results["test"]["autoencoder"]["maps"], results["test"]["autoencoder"]["masks"], 0.9
    )
    assert test_metrics["mean intensity"]["pixel_auroc"] is None
    assert report["figures"]["test"]["roc"] == "roc_test.png"
    assert report["figures"]["localisation_test"] == {
        "roc": None,
        "histograms": {},
        "scores": "scores_localisation-test.csv",
    }
    # the set with lesioned images only: no image metrics, with the reason, but pixel metrics
    loc = report["metrics"]["localisation_test"]["PCA"]
    assert loc["image_auroc"] is None and "abnormal" in loc["image_note"] and loc["pixel_auroc"] is not None


def test_report_markdown(results, tmp_path):
    paths = write_evaluation_report(tmp_path, results, info={"machine": "cpu", "timings_s": {"fit": 1.5}})
    markdown = paths["markdown"].read_text()
    report = json.loads(paths["json"].read_text())
    assert markdown.startswith("# Anomaly detection report\n")
    assert "- **machine**: cpu" in markdown and '- **timings_s**: {"fit": 1.5}' in markdown
    for set_name in results:
        rows = _table(markdown, set_name)
        header, body = rows[0], rows[1:]
        with_interval = set_name == "test"  # the other set holds one class: no AUROC, no interval
        assert header[:2] == ["method", "image AUROC"]
        assert header[2:] == ["95% interval"] * with_interval + ["F1-max", "pixel AUROC", "AUPRO", "Dice"]
        assert [r[0] for r in body] == list(results[set_name])  # one row per method, in order
        if with_interval:
            for row in body:
                ci = report["metrics"][set_name][row[0]]["image_auroc_ci"]
                assert row[2] == f"[{ci['low']:.3f}, {ci['high']:.3f}]"
                assert ci["low"] <= report["metrics"][set_name][row[0]]["image_auroc"] <= ci["high"]
            body = [r[:2] + r[3:] for r in rows[1:]]
        keys = ["image_auroc", "f1_max", "pixel_auroc", "aupro", "dice"]
        for col, key in enumerate(keys, start=1):
            values = {m: report["metrics"][set_name][m][key] for m in results[set_name]}
            present = {m: round(v, 3) for m, v in values.items() if v is not None}
            for row in body:
                cell, value = row[col], values[row[0]]
                if value is None:
                    assert cell == "n/a"
                    continue
                assert cell.strip("*") == f"{value:.3f}"
                assert cell.startswith("**") == (round(value, 3) == max(present.values()))
    test_rows = {r[0]: r for r in _table(markdown, "test")[1:]}
    assert test_rows["HQ-AnoGAN"][1].startswith("**")  # the strongest fake detector wins the image AUROC
    assert "both normal and abnormal" in markdown.split("## localisation_test", 1)[1]
    assert "Dice at the pixel threshold 0.900" in markdown
    for link in re.findall(r"\]\(([^)]+)\)", markdown):  # relative links to files that exist
        assert not link.startswith("/") and (tmp_path / link).is_file()
    assert "(roc_test.png)" in markdown and "(hist_test_pca.png)" in markdown


def test_report_overwrites_previous(results, tmp_path):
    write_evaluation_report(tmp_path, {"test": {"PCA": results["test"]["PCA"]}}, title="first")
    paths = write_evaluation_report(tmp_path, {"test": {"PCA": results["test"]["PCA"]}}, title="second")
    assert json.loads(paths["json"].read_text())["title"] == "second"


def test_report_unwritable_dir(results, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write the evaluation report"):
        write_evaluation_report(blocker / "report", results)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({}, "non-empty"),
        ({"test": {}}, "non-empty"),
        ({"test": {"PCA": {"scores": torch.rand(4)}}}, "missing"),
        ({"test": {"PCA": {"scores": torch.rand(4), "labels": torch.ones(4), "mask": None}}}, "unknown"),
    ],
)
def test_report_bad_results(bad, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        write_evaluation_report(tmp_path, bad)


def test_report_info_must_be_json(results, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        write_evaluation_report(tmp_path, results, info={"path": tmp_path})
    assert not list(tmp_path.iterdir())  # nothing written


def test_rates_at_the_methods_own_threshold(toy, tmp_path):
    labels, masks = toy
    m = _method(labels, masks, 0.8, 21)
    threshold = float(m["scores"][labels == 0].quantile(0.9))  # about 10 % of the normal images flagged
    out = evaluate_detection(m["scores"], labels, image_threshold=threshold)
    flagged = m["scores"] >= threshold
    assert out["image_threshold"] == threshold
    assert out["fpr_at_threshold"] == float(flagged[labels == 0].double().mean())
    assert out["tpr_at_threshold"] == float(flagged[labels == 1].double().mean())
    assert 0 < out["fpr_at_threshold"] < out["tpr_at_threshold"]
    normals = evaluate_detection(m["scores"][labels == 0], labels[labels == 0], image_threshold=threshold)
    assert normals["tpr_at_threshold"] is None and normals["fpr_at_threshold"] == out["fpr_at_threshold"]
    plain = evaluate_detection(m["scores"], labels)
    assert plain["image_threshold"] is plain["fpr_at_threshold"] is plain["tpr_at_threshold"] is None
    with pytest.raises(ValueError, match="image_threshold must be a finite number"):
        evaluate_detection(m["scores"], labels, image_threshold=float("nan"))
    # in the report: two columns, shown only when a method has a threshold, never bolded (a lower FPR is better)
    low = {**m, "image_threshold": float(m["scores"].max()) + 1}  # flags nothing: FPR 0, TPR 0
    paths = write_evaluation_report(tmp_path, {"test": {"a": {**m, "image_threshold": threshold}, "b": low}})
    rows = _table(paths["markdown"].read_text(), "test")
    header = rows[0]
    assert header[-5:-3] == ["FPR at threshold", "TPR at threshold"]
    fpr_col = header.index("FPR at threshold")
    assert [r[fpr_col] for r in rows[1:]] == [f"{out['fpr_at_threshold']:.3f}", "0.000"]
    assert not any(r[fpr_col].startswith("**") or r[fpr_col + 1].startswith("**") for r in rows[1:])
    paths = write_evaluation_report(tmp_path / "none", {"test": {"a": m}})
    assert "FPR at threshold" not in _table(paths["markdown"].read_text(), "test")[0]
