"""Group-aware bootstrap intervals of the image AUROC (monai_hqanogan.metrics.bootstrap) and their place in the
evaluation report."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_hqanogan.evaluation import evaluate_detection, paired_comparisons, write_evaluation_report
from monai_hqanogan.evaluation.scores_file import compare_score_files, read_scores_csv, write_scores_csv
from monai_hqanogan.metrics import (
    bootstrap_auroc_difference,
    bootstrap_image_auroc,
    compute_image_auroc,
    weighted_image_aurocs,
)
from monai_hqanogan.metrics.bootstrap import _group_weights
from monai_hqanogan.scoring import choice_uncertainty
from monai_hqanogan.workflows import load_split
from tests.bundle_utils import load_benchmark, make_tiny_dataset


def _data(seed: int, normal: int = 40, abnormal: int = 30, shift: float = 1.0, decimals: int | None = 1):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(normal), np.ones(abnormal)]
    scores = rng.normal(size=labels.size) + shift * labels
    return (np.round(scores, decimals) if decimals is not None else scores), labels


def test_weighted_auroc_is_the_auroc_of_the_repeated_images():
    scores, labels = _data(0)  # rounded: many ties, which count 1/2
    weights = np.random.default_rng(1).integers(0, 4, size=(6, labels.size)).astype(float)
    weights[:, 0] = weights[:, -1] = 1  # both classes in every row
    got = weighted_image_aurocs(scores, labels.astype(bool), weights)
    for row, value in zip(weights, got):
        index = np.repeat(np.arange(labels.size), row.astype(int))
        assert value == pytest.approx(compute_image_auroc(scores[index], labels[index]), abs=1e-12)
    with pytest.raises(ValueError, match="one class empty"):
        weighted_image_aurocs(scores, labels.astype(bool), np.where(labels == 1, 0.0, 1.0)[None])


def test_interval_holds_the_auroc_and_is_reproducible():
    scores, labels = _data(2)
    out = bootstrap_image_auroc(torch.as_tensor(scores), torch.as_tensor(labels), num_samples=500, seed=3)
    assert out["auroc"] == pytest.approx(compute_image_auroc(scores, labels), abs=1e-12)
    assert out["low"] < out["auroc"] < out["high"] and out["sd"] > 0
    assert out["num_groups"] == {"normal": 40, "abnormal": 30} and out["num_samples"] == 500
    assert bootstrap_image_auroc(scores, labels, num_samples=500, seed=3) == out
    assert bootstrap_image_auroc(scores, labels, num_samples=500, seed=4)["low"] != out["low"]
    wider = bootstrap_image_auroc(scores, labels, num_samples=500, seed=3, confidence=0.99)
    assert wider["low"] <= out["low"] and wider["high"] >= out["high"]


def test_copies_of_a_slice_in_one_group_add_no_evidence():
    """Each image three times: resampling whole groups gives exactly the interval of the images once, resampling
    images one by one an interval too narrow (what near-duplicates in a test set do to a naive bootstrap)."""
    scores, labels = _data(5)
    once = bootstrap_image_auroc(scores, labels, num_samples=400)
    copies = np.repeat(scores, 3), np.repeat(labels, 3)
    grouped = bootstrap_image_auroc(*copies, groups=np.repeat(np.arange(labels.size), 3).tolist(), num_samples=400)
    assert (grouped["low"], grouped["high"], grouped["sd"]) == pytest.approx((once["low"], once["high"], once["sd"]))
    naive = bootstrap_image_auroc(*copies, num_samples=400)
    assert naive["sd"] < 0.7 * grouped["sd"]  # about 1 / sqrt(3) of it


def test_a_group_holding_both_classes_is_drawn_whole():
    """A normal slice and the same slice with a lesion pasted in (one group) enter each resample together."""
    scores, labels = _data(6, normal=30, abnormal=30)
    twins = [f"slice {i % 30}" for i in range(60)]  # image i and image i + 30 share a group
    weights, counts = _group_weights(labels.astype(bool), twins, 200, np.random.default_rng(0))
    assert counts == {"normal": 30, "abnormal": 30}
    np.testing.assert_array_equal(weights[:, :30], weights[:, 30:])
    assert (weights.sum(1) == 60).all() and weights.std() > 0
    # pure groups next to mixed ones: each stratum keeps its number of groups in every resample
    ids = twins[:20] + [f"n{i}" for i in range(10)] + twins[30:50] + [f"a{i}" for i in range(10)]
    weights, counts = _group_weights(labels.astype(bool), ids, 200, np.random.default_rng(1))
    assert counts == {"normal": 30, "abnormal": 30}
    assert (weights[:, 20:30].sum(1) == 10).all() and (weights[:, 50:].sum(1) == 10).all()
    assert (weights[:, :20].sum(1) == 20).all()


@pytest.mark.parametrize("grouped", [True, False])
def test_coverage_with_near_duplicates(grouped):
    """Simulated test sets whose slices come in groups of five near-copies: the group bootstrap's 90 % interval holds
    the true AUROC about 90 % of the time; the per-image bootstrap's far less often."""
    truth = 0.5 * (1 + math.erf(0.8 / 2))  # P(abnormal > normal) for N(0.8, 1) vs N(0, 1): Phi(0.8 / sqrt(2))
    rng = np.random.default_rng(0)
    hits, trials, copies = 0, 120, 5
    for _ in range(trials):
        labels = np.r_[np.zeros(12), np.ones(12)]
        base = rng.normal(size=24) + 0.8 * labels  # one value per group
        scores = np.repeat(base, copies) + rng.normal(scale=0.05, size=24 * copies)  # near-copies
        groups = np.repeat(np.arange(24), copies).tolist() if grouped else None
        out = bootstrap_image_auroc(scores, np.repeat(labels, copies), groups, num_samples=200, confidence=0.9,
                                    seed=int(rng.integers(1 << 30)))  # fmt: skip
        hits += out["low"] <= truth <= out["high"]
    coverage = hits / trials
    if grouped:
        assert 0.78 <= coverage <= 0.98, coverage
    else:
        assert coverage < 0.7, coverage


def test_paired_difference():
    scores, labels = _data(7, decimals=None)
    noise = np.random.default_rng(8).normal(size=labels.size)
    same = bootstrap_auroc_difference(scores, scores, labels, num_samples=200)
    assert (same["difference"], same["low"], same["high"], same["share_not_above"]) == (0.0, 0.0, 0.0, 1.0)
    better = bootstrap_auroc_difference(scores, noise, labels, num_samples=300, seed=1)
    expected = compute_image_auroc(scores, labels) - compute_image_auroc(noise, labels)
    assert better["difference"] == pytest.approx(expected, abs=1e-12)
    assert better["low"] > 0 and better["share_not_above"] == 0.0
    worse = bootstrap_auroc_difference(noise, scores, labels, num_samples=300, seed=1)  # the same resamples
    assert (worse["difference"], worse["low"], worse["high"]) == pytest.approx(
        (-better["difference"], -better["high"], -better["low"])
    )
    assert worse["share_not_above"] == 1.0
    # pairing: the difference's spread is below the sum of the two single spreads when the methods share errors
    close = scores + 0.3 * noise
    paired = bootstrap_auroc_difference(scores, close, labels, num_samples=400)
    singles = [bootstrap_image_auroc(s, labels, num_samples=400)["sd"] for s in (scores, close)]
    assert paired["sd"] < 0.6 * sum(singles)


def test_bad_inputs_are_refused_with_the_reason():
    scores, labels = _data(9)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_image_auroc(np.where(labels == 1, np.nan, scores), labels)
    with pytest.raises(ValueError, match="one class"):
        bootstrap_image_auroc(scores, np.zeros_like(labels))
    with pytest.raises(ValueError, match="one entry per image"):
        bootstrap_image_auroc(scores, labels, groups=[0, 1])
    with pytest.raises(ValueError, match="hashable"):
        bootstrap_image_auroc(scores, labels, groups=[[i] for i in range(labels.size)])
    with pytest.raises(ValueError, match="num_samples"):
        bootstrap_image_auroc(scores, labels, num_samples=10)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_image_auroc(scores, labels, confidence=1.0)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_auroc_difference(scores, scores[:-1], labels)


# ---------------------------------------------------------------------------------------------------------------------
# in the report


def _entry(scores, labels, groups=None):
    out = {"scores": torch.as_tensor(scores), "labels": torch.as_tensor(labels)}
    return out | ({"groups": groups} if groups is not None else {})


def test_evaluate_detection_interval_uses_the_groups():
    scores, labels = _data(11)
    copies = np.repeat(scores, 4), np.repeat(labels, 4)
    groups = np.repeat(np.arange(labels.size), 4).tolist()
    grouped = evaluate_detection(*copies, groups=groups)["image_auroc_ci"]
    naive = evaluate_detection(*copies)["image_auroc_ci"]
    assert grouped["num_groups"] == {"normal": 40, "abnormal": 30} and naive["num_groups"]["normal"] == 160
    assert grouped["high"] - grouped["low"] > 1.5 * (naive["high"] - naive["low"])
    assert evaluate_detection(scores, labels, bootstrap_samples=0)["image_auroc_ci"] is None
    assert evaluate_detection(scores, np.zeros_like(labels))["image_auroc_ci"] is None  # one class: no AUROC
    with pytest.raises(ValueError, match="bootstrap_samples"):
        evaluate_detection(scores, labels, bootstrap_samples=50)
    with pytest.raises(ValueError, match="groups must have one entry per image"):
        evaluate_detection(scores, labels, groups=[1, 2, 3])


def test_report_compares_the_first_method_with_each_other_on_the_same_images(tmp_path):
    scores, labels = _data(12, decimals=None)
    rng = np.random.default_rng(13)
    groups = [i // 2 for i in range(labels.size)]  # pairs of slices
    methods = {
        "HQ-AnoGAN": _entry(scores, labels, groups),
        "PCA": _entry(rng.normal(size=labels.size), labels, groups),
        "autoencoder": _entry(scores + 0.2 * rng.normal(size=labels.size), labels, groups),
        "other images": _entry(scores[::-1].copy(), labels[::-1].copy(), groups),  # not the same images
    }
    paths = write_evaluation_report(tmp_path, {"test": methods}, histogram_set=None)
    report = json.loads(paths["json"].read_text())
    comparisons = report["comparisons"]["test"]
    assert set(comparisons) == {"PCA", "autoencoder"}
    expected = bootstrap_auroc_difference(scores, methods["PCA"]["scores"], labels, groups)
    assert comparisons["PCA"] == {"reference": "HQ-AnoGAN", **expected}
    assert comparisons["PCA"]["low"] > 0  # a real lead over noise is separated
    assert comparisons["PCA"]["num_groups"] == {"normal": 20, "abnormal": 15}
    ci = report["metrics"]["test"]["HQ-AnoGAN"]["image_auroc_ci"]
    assert ci == {k: v for k, v in bootstrap_image_auroc(scores, labels, groups).items() if k != "auroc"}
    markdown = paths["markdown"].read_text()
    assert "Paired differences on test" in markdown and "(20 normal, 15 abnormal)" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| HQ-AnoGAN - PCA |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        f"{expected['difference']:.3f}",
        f"[{expected['low']:.3f}, {expected['high']:.3f}]",
        f"{expected['share_not_above']:.3f}",
    ]
    # without resamples: no intervals, no comparisons, and the table loses its interval column
    paths = write_evaluation_report(tmp_path / "none", {"test": methods}, histogram_set=None, bootstrap_samples=0)
    report = json.loads(paths["json"].read_text())
    assert report["comparisons"] == {"test": {}} and report["metrics"]["test"]["PCA"]["image_auroc_ci"] is None
    assert "95% interval" not in paths["markdown"].read_text()
    assert paired_comparisons({"only": methods["PCA"]}) == {}


def test_load_split_gives_each_item_its_group(tmp_path):
    datalist = make_tiny_dataset(tmp_path)
    lists = json.loads(datalist.read_text())
    lists["test"][0]["group"] = lists["test"][1]["group"] = "twins"  # two slices of one near-duplicate group
    del lists["test"][2]["group"]  # an item without a group is a group of its own
    datalist.write_text(json.dumps(lists))
    split = load_split(datalist, "test", 16, require_labels=True)
    assert split["groups"][:3] == ["twins", "twins", "item 2"]
    assert split["groups"][3:] == [item["group"] for item in lists["test"][3:]]
    ci = evaluate_detection(split["labels"].float(), split["labels"], groups=split["groups"])["image_auroc_ci"]
    assert ci["num_groups"] == {"normal": 3, "abnormal": 4}


# ---------------------------------------------------------------------------------------------------------------------
# the scores files


def test_scores_file_round_trip_and_paired_comparison_between_runs(tmp_path):
    scores, labels = _data(14, decimals=None)
    rng = np.random.default_rng(15)
    groups = [i // 3 for i in range(labels.size)]
    names = [f"images/{i}.png" for i in range(labels.size)]
    other = scores + 0.5 * rng.normal(size=labels.size)
    run_a = {"HQ-AnoGAN": {**_entry(scores, labels, groups), "names": names},
             "PCA": _entry(rng.normal(size=labels.size), labels, groups)}  # fmt: skip
    paths = write_evaluation_report(tmp_path / "a", {"test": run_a}, histogram_set=None)
    assert paths["scores_test"] == tmp_path / "a" / "scores_test.csv"
    assert "[scores_test.csv](scores_test.csv)" in paths["markdown"].read_text()
    back = read_scores_csv(paths["scores_test"])
    assert back["image"] == names and back["group"] == [str(g) for g in groups]
    np.testing.assert_array_equal(back["label"], labels)
    np.testing.assert_array_equal(back["scores"]["HQ-AnoGAN"], scores)  # exact: repr of the floats
    # a later run on the same images, e.g. a candidate model, compared with this one without scoring again
    run_b = write_scores_csv(tmp_path / "b.csv", {"candidate": {**_entry(other, labels, groups), "names": names}})
    got = compare_score_files(paths["scores_test"], "HQ-AnoGAN", run_b, "candidate", num_samples=300)
    expected = bootstrap_auroc_difference(scores, other, labels, [str(g) for g in groups], num_samples=300)
    assert {k: got[k] for k in expected} == expected
    assert got["a"].endswith("scores_test.csv:HQ-AnoGAN") and got["b"].endswith("b.csv:candidate")


def test_scores_files_refuse_what_cannot_be_paired(tmp_path):
    scores, labels = _data(16)
    names = [f"images/{i}.png" for i in range(labels.size)]
    a = write_scores_csv(tmp_path / "a.csv", {"m": {**_entry(scores, labels), "names": names}})
    shuffled = write_scores_csv(tmp_path / "b.csv", {"m": {**_entry(scores, labels), "names": names[::-1]}})
    with pytest.raises(ValueError, match="differ in 'image' at row 0"):
        compare_score_files(a, "m", shuffled, "m")
    with pytest.raises(ValueError, match="no method 'x'"):
        compare_score_files(a, "x", a, "m")
    shorter = write_scores_csv(tmp_path / "c.csv", {"m": _entry(scores[:-1], labels[:-1])})
    with pytest.raises(ValueError, match="not the same images"):
        compare_score_files(a, "m", shorter, "m")
    broken = tmp_path / "nan.csv"
    broken.write_text(a.read_text().replace(repr(float(scores[5])), "nan", 1))
    with pytest.raises(ValueError, match="line 7: the score of 'm' is 'nan'"):
        read_scores_csv(broken)  # a NaN score is a broken run, never a normal image
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a scores file"):
        read_scores_csv(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="clash"):
        write_scores_csv(tmp_path / "d.csv", {"label": _entry(scores, labels)})
    with pytest.raises(ValueError, match="one score per image"):
        write_scores_csv(tmp_path / "e.csv", {"m": _entry(scores, labels), "n": _entry(scores[:3], labels[:3])})


def test_paired_compare_script(tmp_path, capsys):
    script = load_benchmark("paired_compare")
    scores, labels = _data(17, decimals=None)
    noise = np.random.default_rng(18).normal(size=labels.size)
    a = write_scores_csv(tmp_path / "a.csv", {"HQ-AnoGAN": _entry(scores, labels), "PCA": _entry(noise, labels)})
    b = write_scores_csv(tmp_path / "b.csv", {"HQ-AnoGAN": _entry(noise, labels)})
    argv = [f"{a}:HQ-AnoGAN", f"{b}:HQ-AnoGAN", "--samples", "200", "--json", str(tmp_path / "o.json")]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    expected = bootstrap_auroc_difference(scores, noise, labels, num_samples=200)
    assert f"image AUROC difference {expected['difference']:+.4f}" in printed
    assert json.loads((tmp_path / "o.json").read_text())["low"] == expected["low"]
    assert script.parse_side("C:/runs/scores_test.csv:HQ-AnoGAN") == (Path("C:/runs/scores_test.csv"), "HQ-AnoGAN")
    with pytest.raises(argparse.ArgumentTypeError, match="FILE:METHOD"):
        script.parse_side("scores_test.csv")
    for bad in ([f"{tmp_path / 'missing.csv'}:m", f"{b}:HQ-AnoGAN"], [f"{a}:PCA", f"{b}:PCA"]):
        with pytest.raises(SystemExit):
            script.main(bad)
    assert "no method 'PCA'" in capsys.readouterr().err


def test_choice_uncertainty_reports_the_interval_and_the_runner_up():
    scores, labels = _data(19, decimals=None)
    groups = [i % 20 for i in range(labels.size)]  # groups holding both classes, as slices and their lesioned copies
    noise = np.random.default_rng(20).normal(size=labels.size)
    widths = {1.0: torch.as_tensor(noise), 2.0: torch.as_tensor(scores), 3.0: torch.as_tensor(scores + 0.5 * noise)}
    out = choice_uncertainty(widths[2.0], labels, groups, widths, 2.0, num_samples=300)
    ci = bootstrap_image_auroc(scores, labels, groups, num_samples=300)
    assert out["selection_auroc_ci"] == {k: ci[k] for k in ("low", "high", "num_groups")}
    expected = bootstrap_auroc_difference(scores, scores + 0.5 * noise, labels, groups, num_samples=300)
    assert out["smoothing_runner_up"] == {"sigma": 3.0, **{k: expected[k] for k in ("difference", "low", "high")}}
    assert set(choice_uncertainty(scores, labels, num_samples=300)) == {"selection_auroc_ci"}  # no width chosen
    with pytest.raises(ValueError, match="chosen_width 5.0"):
        choice_uncertainty(scores, labels, groups, widths, 5.0)


def test_framed_images_script(tmp_path, capsys):
    """The frame check flags white-ringed images only, and removing them changes the AUROC as it must."""
    from PIL import Image

    script = load_benchmark("framed_images")
    names, labels, scores = [], [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.9, 0.5, 0.6, 3.0]
    (tmp_path / "images").mkdir()
    for i in range(len(labels)):
        img = np.full((24, 20), 40, np.uint8)
        if i == 5:  # the top-scoring abnormal image sits in a white frame
            img[:3], img[-3:], img[:, :3], img[:, -3:] = 255, 255, 255, 255
        if i == 4:  # a bright blob inside the head is not a frame
            img[8:16, 6:14] = 255
        names.append(f"images/{i}.png")
        Image.fromarray(img).save(tmp_path / names[-1])
    entry = {"scores": scores, "labels": labels, "names": names}
    csv_file = write_scores_csv(tmp_path / "scores_test.csv", {"m": entry})
    out = script.framed_report(csv_file, tmp_path)
    assert out["framed"] == {"normal": 0, "abnormal": 1} and out["images"] == {"normal": 3, "abnormal": 3}
    m = out["methods"]["m"]
    assert m["auroc"] == pytest.approx(compute_image_auroc(np.array(scores), np.array(labels)))
    assert m["auroc_without_framed"] == pytest.approx(compute_image_auroc(np.array(scores[:5]), np.array(labels[:5])))
    assert m["framed_abnormal_rank"] == 1.0  # above every normal image
    assert script.main([str(csv_file), "--dataset_dir", str(tmp_path)]) == 0
    assert "1 of 3 abnormal" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "missing.csv"), "--dataset_dir", str(tmp_path)])
