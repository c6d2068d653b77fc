"""benchmarks/pseudo_normal_panels.py: two detectors' pseudo-normals on the same evenly spread slices."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from monai_hqanogan.workflows.main_job import run_main_job
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, load_benchmark, make_tiny_dataset


@pytest.fixture(scope="module")
def panels_module():
    return load_benchmark("pseudo_normal_panels")


def test_slices_are_spread_evenly_through_each_class_not_chosen_by_score(panels_module):
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 0])
    # normal rows 0 2 4 6 8 9 -> first, two between, last; tumour rows 1 3 5 7 -> all four
    assert panels_module.evenly_spread(labels, 4) == [0, 4, 6, 9, 1, 3, 5, 7]
    assert panels_module.evenly_spread(labels, 1) == [0, 1]
    assert panels_module.evenly_spread(torch.zeros(3, dtype=torch.long), 5) == [0, 1, 2]  # no more than there are


def test_model_arguments_need_a_name_a_setting_and_a_path(panels_module):
    assert panels_module.parse_model("new=cpu:runs/cpu/models/model.pt") == (
        "new",
        "cpu",
        Path("runs/cpu/models/model.pt"),
    )
    for bad in ("cpu:model.pt", "new=model.pt", "new=cpu:", "=cpu:model.pt"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=SETTING:PATH"):
            panels_module.parse_model(bad)


def test_two_models_side_by_side_on_tiny_weights(panels_module, tmp_path, single_thread, capsys):
    make_tiny_dataset(tmp_path / "data")
    overrides = ["--settings", json.dumps(TINY_SETTINGS)]
    run_main_job(BUNDLE, dataset_dir=tmp_path / "data", stages=["train_generator", "train_encoder", "calibrate"],
                 overrides=overrides, run_dir=tmp_path / "runs")  # fmt: skip
    model = tmp_path / "runs" / "models" / "model.pt"
    out = tmp_path / "panels.png"
    args = ["--dataset_dir", str(tmp_path / "data"), "--settings", json.dumps(TINY_SETTINGS), "--per_class", "2"]
    with pytest.raises(SystemExit):  # one name for two models would mix their columns
        panels_module.main([*args, "--model", f"a=demo:{model}", "--model", f"a=demo:{model}", "--out", str(out)])
    assert not out.exists()
    assert (
        panels_module.main([*args, "--model", f"a=demo:{model}", "--model", f"b=demo:{model}", "--out", str(out)]) == 0
    )
    # 5 columns (the input, then each model's pseudo-normal and map) by 4 rows (2 per class), 1.9 in at 110 dpi
    assert Image.open(out).size == (round(5 * 1.9 * 110), round(4 * 1.9 * 110))
    rows = [
        line.split() for line in capsys.readouterr().out.splitlines() if line.split()[1:2] in (["normal"], ["tumour"])
    ]
    assert [row[1] for row in rows] == ["normal", "normal", "tumour", "tumour"]
    for row in rows:  # the same weights give the same score in both columns
        assert row[2] == row[3] and float(row[2]) == float(row[2])
