"""The one-command main job: every step as a ``monai.bundle run`` subprocess on a tiny dataset, then its refusals."""

from __future__ import annotations

import ast
import json

import pytest

from monai_hqanogan.workflows.main_job import STAGES, bundle_command, main, merge_timings, run_main_job
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, make_tiny_dataset


def test_main_job_runs_every_step_and_writes_the_report(tmp_path, capsys):
    make_tiny_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    overrides = ["--settings", json.dumps(TINY_SETTINGS), "--run_dir", str(runs)]  # --settings goes to every step
    code = main(["--bundle_root", str(BUNDLE), "--dataset_dir", str(tmp_path / "data"), *overrides])
    assert code == 0
    printed = capsys.readouterr().out
    for stage in STAGES:  # each step's command is shown, so it can be rerun by hand
        assert f"[main job] {stage}: " in printed and STAGES[stage] in printed
    report = json.loads((runs / "evaluation" / "report.json").read_text())
    assert set(report["metrics"]["test"]) == {"HQ-AnoGAN", "mean intensity", "PCA", "autoencoder"}
    assert (runs / "models" / "model.pt").is_file()
    timings = json.loads((runs / "main_job.json").read_text())
    assert set(timings["seconds"]) == set(STAGES) | {"total", "last_run"}


def test_a_run_of_some_stages_keeps_the_other_steps_times(tmp_path):
    (tmp_path / "main_job.json").write_text(
        json.dumps({"setting": "demo", "seconds": {"train_generator": 100.0, "evaluate": 9.0, "total": 109.0}})
    )
    merged = merge_timings(tmp_path, "demo", {"evaluate": 7.5, "total": 8.0})
    assert merged["seconds"] == {"train_generator": 100.0, "evaluate": 7.5, "total": 107.5, "last_run": 8.0}
    # another setting's file, or an unreadable one, is not merged
    assert merge_timings(tmp_path, "full", {"evaluate": 7.5, "total": 8.0})["seconds"]["total"] == 7.5
    (tmp_path / "main_job.json").write_text("{broken")
    assert merge_timings(tmp_path, "demo", {"evaluate": 7.5, "total": 8.0})["seconds"]["total"] == 7.5


def test_bundle_command_names_the_config_and_the_bundle(tmp_path):
    command = bundle_command(BUNDLE, "calibrate.json", ["--setting", "full"])
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    # composed with common.json, as MONAI's command line reads a list: common.json first
    files = ast.literal_eval(command[command.index("--config_file") + 1])
    assert files == [str(BUNDLE / "configs" / "common.json"), str(BUNDLE / "configs" / "calibrate.json")]
    assert command[-2:] == ["--setting", "full"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"setting": "huge"}, "unknown setting 'huge'"),
        ({"stages": ["train_everything"]}, "unknown stages"),
        ({"dataset_dir": "/nonexistent/data"}, "datalist.json' does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_main_job(BUNDLE, **kwargs)


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_run_dir_that_is_or_lies_under_a_file_is_refused_in_words(below, tmp_path, capsys):
    """It raised a bare NotADirectoryError traceback from the run-folder lock check."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datalist.json").write_text("{}")
    (tmp_path / "notes").write_text("mine")
    run_dir = tmp_path / "notes" / below
    argv = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(tmp_path / "data"), "--run_dir", str(run_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{str(tmp_path / 'notes')!r} is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "notes").read_text() == "mine"


def test_not_a_bundle_and_missing_shipped_weights(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="is not the HQ-AnoGAN bundle"):
        run_main_job(tmp_path)
    import shutil

    shutil.copytree(BUNDLE / "configs", tmp_path / "old" / "configs", ignore=shutil.ignore_patterns("common.json"))
    with pytest.raises(FileNotFoundError, match=r"configs/\['common.json'\] missing"):
        run_main_job(tmp_path / "old")

    shutil.copytree(BUNDLE / "configs", tmp_path / "bundle" / "configs")  # a bundle without models/model.pt
    assert main(["--bundle_root", str(tmp_path / "bundle"), "--pretrained"]) == 1
    assert "no shipped weights" in capsys.readouterr().err
