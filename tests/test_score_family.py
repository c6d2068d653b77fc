"""The score family's smoothing is a fraction of the image, and every method in an evaluation gets the detector's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.layers import GaussianFilter
from torch import nn

from monai_hqanogan.baselines import MeanIntensityBaseline
from monai_hqanogan.evaluation import FAMILY_FOREGROUND, family_scores, family_smoothing, method_components
from monai_hqanogan.workflows import evaluate as evaluate_module
from monai_hqanogan.workflows import evaluate_detector
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, make_tiny_dataset, tiny_detector

pytestmark = pytest.mark.usefixtures("single_thread")


def spike_pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square image and its reconstruction with one wrong pixel in the middle."""
    image = torch.full((1, 1, size, size), -1.0)
    image[..., size // 4 : -size // 4, size // 4 : -size // 4] = 0.5
    rec = image.clone()
    rec[..., size // 2, size // 2] = -0.5
    return image, rec


@pytest.mark.parametrize("resolution,sigma", [(8, 1.0), (16, 1.0), (32, 1.0), (48, 1.5), (64, 2.0), (128, 4.0)])
def test_the_smoothing_is_one_32nd_of_the_image_and_at_least_a_pixel(resolution, sigma):
    assert family_smoothing(resolution) == sigma


@pytest.mark.parametrize("bad", [0, -32, 32.0, True, "64"])
def test_a_bad_resolution_is_refused(bad):
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        family_smoothing(bad)


def test_family_scores_smooth_by_the_image_width_unless_told():
    image, rec = spike_pair(64)
    default = family_scores(image, rec)
    assert torch.equal(default["map_max"], family_scores(image, rec, smoothing=2.0)["map_max"])
    one_px = family_scores(image, rec, smoothing=1.0)["map_max"]
    raw = family_scores(image, rec, smoothing=0)["map_max"]
    # a single wrong pixel: the wider the Gaussian, the lower its peak; with no smoothing the peak is the error
    assert default["map_max"] < one_px < raw
    assert raw.item() == pytest.approx(1.0)


class SpikeReconstructor(nn.Module):
    """A reference method that reconstructs every image with one wrong pixel in the middle."""

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        rec = images.clone()
        rec[..., images.shape[-2] // 2, images.shape[-1] // 2] -= 1.0
        return rec


def test_method_components_uses_the_rule_it_is_given():
    image, _ = spike_pair(32)
    method = SpikeReconstructor()
    comps, maps, _, names = method_components(method, image)
    assert names == ["residual", "map_max"]
    wide, wide_maps, _, _ = method_components(method, image, smoothing=GaussianFilter(2, sigma=3.0))
    assert wide["map_max"] < comps["map_max"]
    assert not torch.equal(wide_maps, maps)
    whole, *_ = method_components(method, image, foreground_threshold=None)  # the background counts too
    assert whole["residual"] < comps["residual"]  # one wrong pixel over more pixels


def test_the_bundle_detector_smooths_by_the_family_rule():
    for resolution in (16, 64, 128):
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / "common.json")])
        parser.update({"bundle_root": str(BUNDLE), "settings": {**TINY_SETTINGS, "resolution": resolution}})
        det = parser.get_parsed_content("detector_def")
        assert float(det.smoothing.sigma[0]) == family_smoothing(resolution)
        assert det.foreground_threshold == FAMILY_FOREGROUND


def test_evaluation_gives_the_baselines_the_detectors_rule(tmp_path, monkeypatch):
    datalist = make_tiny_dataset(tmp_path / "data")
    detector = tiny_detector()
    detector.smoothing = GaussianFilter(2, sigma=1.7)  # not the family default of 16 px: it must be passed on
    detector.foreground_threshold = -0.8
    seen = []

    def recording(method, images, own_score=False, **rule):
        seen.append(rule)
        return method_components(method, images, own_score, **rule)

    monkeypatch.setattr(evaluate_module, "method_components", recording)
    paths = evaluate_detector(
        detector, datalist, TINY_SETTINGS["resolution"], tmp_path / "eval",
        baselines={"mean": MeanIntensityBaseline()}, panel_rows=1, progress=False,
    )  # fmt: skip
    assert len(seen) == 4  # validation, synthetic selection, test, localisation test
    for rule in seen:
        assert rule["smoothing"] is detector.smoothing and rule["foreground_threshold"] == -0.8
    assert "mean" in json.loads(Path(paths["json"]).read_text())["metrics"]["test"]


def test_the_calibration_chooses_the_width_with_the_best_selection_auroc(tmp_path):
    from monai_hqanogan.data import make_toy_lesion_set

    detector = tiny_detector()
    images, labels, _ = make_toy_lesion_set(12, 16, seed=3)  # 12 normal, then 12 with a lesion
    fit, val = images[:6], images[6:12]
    sel, labels = images[6:18], labels[6:18]
    report = detector.calibrate(fit, val, selection_images=sel, selection_labels=labels, smoothing_factors=[1, 2, 3])
    aurocs = report["smoothing_aurocs"]
    assert report["smoothing_candidates"] == [1.0, 2.0, 3.0] and set(aurocs) == {"1", "2", "3"}
    assert report["smoothing_sigma"] == float(max(aurocs, key=aurocs.get))
    assert float(detector.smoothing.sigma[0]) == float(detector.smoothing.sigma[1]) == report["smoothing_sigma"]
    # each width's AUROC is what a calibration at that fixed width reaches on the same images
    for width, auroc in aurocs.items():
        fixed = tiny_detector()
        fixed.smoothing = GaussianFilter(2, sigma=float(width))
        assert fixed.calibrate(fit, val, selection_images=sel, selection_labels=labels)["selection_auroc"] == (
            pytest.approx(auroc, abs=1e-6)
        )


@pytest.mark.parametrize(
    "factors,detector_sigma,selection,match",
    [
        ([], 1.0, True, "non-empty list of numbers > 0"),
        ([1, 0], 1.0, True, "non-empty list of numbers > 0"),
        ([1, float("nan")], 1.0, True, "non-empty list of numbers > 0"),
        ([1, 2], 0.0, True, "a detector that smooths its map"),
        ([1, 2], 1.0, False, "give selection_images"),
    ],
)
def test_bad_width_choices_are_refused_before_any_scoring(factors, detector_sigma, selection, match):
    detector = tiny_detector()
    detector.smoothing = GaussianFilter(2, sigma=detector_sigma) if detector_sigma else None
    before = {k: v.clone() for k, v in detector.calibration.state_dict().items() if torch.is_tensor(v)}
    images = torch.zeros(4, 1, 16, 16)
    sel = {"selection_images": images, "selection_labels": torch.tensor([0, 1, 0, 1])} if selection else {}
    with pytest.raises(ValueError, match=match):
        detector.calibrate(images, images, smoothing_factors=factors, **sel)
    after = detector.calibration.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the earlier calibration is untouched


def test_calibrating_again_tries_the_same_widths_even_after_loading_a_chosen_one():
    from monai_hqanogan.data import make_toy_lesion_set

    images, labels, _ = make_toy_lesion_set(12, 16, seed=3)
    args = (images[:6], images[6:12])
    kwargs = {"selection_images": images[6:18], "selection_labels": labels[6:18], "smoothing_factors": [1, 3]}
    detector = tiny_detector()
    detector.smoothing.sigma[0].data.fill_(3.0)  # as if a file with a 3 px width had been loaded
    detector.smoothing.sigma[1].data.fill_(3.0)
    first = detector.calibrate(*args, **kwargs)
    assert first["smoothing_candidates"] == [1.0, 3.0]  # multiples of the 1 px it was built with, not of 3 px
    fresh = tiny_detector()
    fresh.load_state_dict(detector.state_dict())
    assert float(fresh.smoothing.sigma[0]) == first["smoothing_sigma"]  # the chosen width travels in the state
    second = fresh.calibrate(*args, **kwargs)
    assert second["smoothing_candidates"] == [1.0, 3.0] and second["smoothing_aurocs"] == first["smoothing_aurocs"]


def test_best_width_takes_the_highest_auroc_the_first_of_equal_ones_and_never_a_missing_one():
    from monai_hqanogan.evaluation import best_width

    aurocs = {1.0: 0.8, 2.0: 0.9, 3.0: 0.9, 4.0: None}
    assert best_width([1, 2, 3, 4], aurocs.get) == (2.0, {"1": 0.8, "2": 0.9, "3": 0.9, "4": None})
    assert best_width([4, 1], aurocs.get)[0] == 1.0  # a width without an AUROC does not beat one with
    with pytest.raises(ValueError, match="no width"):
        best_width([], aurocs.get)
