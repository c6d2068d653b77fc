"""The bundle's postprocessing as MONAI Label's stock bundle task runs it: ``AnomalyLabeld`` (the label in ``pred``,
the score in ``result``) and ``SaveRequestHeatmapd`` (the heat map of a request); both without MONAI Label."""

from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from monai_hqanogan.apps.monailabel import heatmap_file_name
from monai_hqanogan.apps.monailabel.transforms import SaveRequestHeatmapd
from monai_hqanogan.transforms import AnomalyLabeld, resolve_pixel_threshold
from tests.bundle_utils import BUNDLE, TINY_SETTINGS

AFFINE = torch.tensor([[0.9, 0, 0, -10.0], [0, 0.9, 0, 5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1.0]], dtype=torch.float64)


def _item(values: np.ndarray) -> dict:
    """One decollated item as the bundle's evaluator or MONAI Label hands it to postprocessing: the image and
    SliceAnomalyInferer's record under ``pred`` (a 4 x 5 x 3 volume, slice 1 the most anomalous, slice 2 skipped)."""
    heat = MetaTensor(torch.as_tensor(values, dtype=torch.float32)[None], affine=AFFINE)
    return {
        "image": MetaTensor(torch.zeros(1, *values.shape), affine=AFFINE),
        "pred": {
            "pred": heat,
            "pred_label": (heat >= 0.5).to(torch.uint8),
            "pred_score": torch.tensor(2.5),
            "pred_image_label": torch.tensor(1),
            "image_threshold": torch.tensor(1.5),
            "pixel_threshold": torch.tensor(0.5),
            "slice_scores": torch.tensor([0.1, 2.5, float("nan")]),
            "panel_slice": torch.tensor(1),
            "panel": torch.zeros(3, 16, 16),
        },
    }


VALUES = np.linspace(0, 1, 60, dtype=np.float32).reshape(4, 5, 3)


def test_anomaly_labeld_puts_the_label_in_pred_and_the_score_in_result():
    out = AnomalyLabeld(keys="pred")(_item(VALUES))
    expected = VALUES >= 0.5
    assert out["pred"].dtype == torch.uint8 and tuple(out["pred"].shape) == (1, 4, 5, 3)
    np.testing.assert_array_equal(out["pred"][0].numpy(), expected)
    assert torch.equal(out["pred_label"], out["pred"])
    assert isinstance(out["pred"], MetaTensor) and torch.allclose(out["pred"].affine, AFFINE)  # on the input grid
    np.testing.assert_allclose(out["anomaly_map"][0].numpy(), VALUES)
    assert out["result"] == {
        "anomaly_score": 2.5,
        "anomalous": True,
        "image_threshold": 1.5,
        "pixel_threshold": 0.5,
        "calibrated_pixel_threshold": 0.5,
        "anomalous_voxels": int(expected.sum()),
        "slice_scores": [pytest.approx(0.1), 2.5, None],  # NaN (a slice not scored) -> None: plain JSON
        "top_slice": 1,
    }
    json.dumps(out["result"], allow_nan=False)


def test_anomaly_labeld_takes_a_threshold_from_its_argument_or_the_request():
    item = _item(VALUES)
    fixed = AnomalyLabeld(keys="pred", pixel_threshold=0.9)(item)
    assert fixed["result"]["pixel_threshold"] == 0.9 and fixed["pixel_threshold"] == 0.9
    assert fixed["result"]["anomalous_voxels"] == int((VALUES >= 0.9).sum())
    assert fixed["result"]["anomaly_score"] == 2.5  # the image score and decision do not move
    labeller = AnomalyLabeld(keys="pred", pixel_threshold=0.9, option_key="pixel_threshold")
    requested = labeller({**item, "pixel_threshold": "0.25"})  # a request option, as MONAI Label passes it
    assert requested["result"]["pixel_threshold"] == 0.25
    np.testing.assert_array_equal(requested["pred"][0].numpy(), VALUES >= 0.25)
    assert labeller({**item, "pixel_threshold": "calibrated"})["result"]["pixel_threshold"] == 0.5
    assert labeller(item)["result"]["pixel_threshold"] == 0.9  # no option in the data: the argument


@pytest.mark.parametrize("bad", ["$print('x')", "high", -1, 0, float("nan"), "inf"])
def test_a_bad_pixel_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="pixel_threshold must be a positive number or 'calibrated'"):
        resolve_pixel_threshold(bad, 0.5)
    with pytest.raises(ValueError, match="pixel_threshold must be a positive number"):
        AnomalyLabeld(keys="pred", pixel_threshold=bad)
    with pytest.raises(ValueError, match="pixel_threshold must be a positive number"):
        AnomalyLabeld(keys="pred", option_key="pixel_threshold")({**_item(VALUES), "pixel_threshold": bad})


def test_anomaly_labeld_needs_the_record_unless_it_may_be_missing():
    with pytest.raises(KeyError):
        AnomalyLabeld(keys="pred")({"image": torch.zeros(1, 2, 2)})
    assert AnomalyLabeld(keys="pred", allow_missing_keys=True)({"image": 1}) == {"image": 1}
    with pytest.raises(TypeError, match="expected the SliceAnomalyInferer record"):
        AnomalyLabeld(keys="pred")({"pred": torch.zeros(1, 2, 2)})


def test_save_request_heatmapd_writes_the_map_of_a_request_only(tmp_path):
    item = AnomalyLabeld(keys="pred")(_item(VALUES))
    saver = SaveRequestHeatmapd(keys="anomaly_map", output_dir=tmp_path / "heatmaps")
    assert saver(item) == item and not (tmp_path / "heatmaps").exists()  # the bundle's own run: no image_path
    request = {**item, "image_path": str(tmp_path / "studies" / "case.nii.gz")}
    out = saver(request)
    path = tmp_path / "heatmaps" / heatmap_file_name(request["image_path"])
    assert out["result"]["heatmap"] == str(path) and out["result"]["anomaly_score"] == 2.5  # merged, not replaced
    written = nib.load(str(path))
    np.testing.assert_allclose(np.asarray(written.dataobj), VALUES)  # the channel dropped
    np.testing.assert_allclose(written.affine, AFFINE.numpy())
    assert [p.name for p in (tmp_path / "heatmaps").iterdir()] == [path.name]  # no partial file left
    for off in (False, "false", "0", "off"):  # the request's save_heatmap option
        assert "heatmap" not in saver({**item, "image_path": "other.nii.gz", "save_heatmap": off})["result"]
    assert "heatmap" not in SaveRequestHeatmapd(output_dir=None)(request)["result"]


def test_the_bundle_postprocessing_builds_without_data_runs_or_an_output_folder(tmp_path):
    """MONAI Label builds ``postprocessing`` from a bundle folder that may hold no data: it must not reach the
    inference run's inputs or output folder (a datalist that is not there stopped it)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "settings": dict(TINY_SETTINGS)})
    post = parser.get_parsed_content("postprocessing")
    request = {**_item(VALUES), "image_path": str(tmp_path / "case.nii.gz"), "pixel_threshold": "calibrated"}
    out = post(request)
    assert tuple(out["pred"].shape) == (4, 5, 3)  # channel dropped: MONAI Label writes a 2D label as an image
    assert out["result"]["anomalous_voxels"] == int(out["pred"].sum())
    assert out["result"]["heatmap"].startswith(str(bundle / "runs"))
    assert math.isfinite(out["result"]["anomaly_score"])
    assert parser.get_parsed_content("displayable_configs") == {"pixel_threshold": "calibrated", "save_heatmap": True}
    assert not (bundle / "data").exists()
