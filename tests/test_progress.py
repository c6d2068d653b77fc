"""Progress bars outside training (issue 18): calibration, evaluation and folder inference show bars on stderr when it
is a terminal, none with ``progress: false`` (``--progress false``, the main job's ``--no-progress``), and the files
they write are the same either way.

A bar shows only on a terminal, so the tests put a stream that says it is one in place of stderr (:class:`Terminal`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_hqanogan.baselines import MeanIntensityBaseline
from monai_hqanogan.handlers import EngineProgressBar, KimgProgressBar
from monai_hqanogan.utils import progress_bar, progress_disable, progress_shown
from monai_hqanogan.workflows import calibrate_detector, check_overrides, check_settings, evaluate_detector
from monai_hqanogan.workflows.main_job import STAGES, main
from tests.bundle_utils import (
    BUNDLE,
    TINY_SETTINGS,
    assert_clear,
    config_files,
    make_tiny_dataset,
    record_main_job_steps,
    run_tiny_inference,
    tiny_detector,
    tiny_overrides,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bars into it."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def terminal() -> Iterator[Terminal]:
    """stderr is a :class:`Terminal` inside (set in the test itself: pytest's capture resets stderr after fixtures)."""
    stream, saved = Terminal(), sys.stderr
    sys.stderr = stream
    try:
        yield stream
    finally:
        sys.stderr = saved


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("progress_data")
    make_tiny_dataset(root)
    return root


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


def test_the_switch_shows_bars_on_a_terminal_only(monkeypatch):
    assert progress_disable(True) is None and progress_disable("TRUE") is None  # tqdm decides: terminal or not
    assert progress_disable(False) is True and progress_disable("false") is True  # --progress false is a string
    with pytest.raises(ValueError, match="progress must be true or false, got 'maybe'"):
        progress_disable("maybe")
    with terminal() as stream:
        assert progress_shown(True) and not progress_shown("false")
        for progress, desc in ((True, "shown"), (False, "hidden")):
            with progress_bar(range(3), progress=progress, desc=desc) as bar:
                list(bar)
    assert "shown" in stream.getvalue() and "hidden" not in stream.getvalue()
    log = io.StringIO()  # a log file or a pipe: no bar although the switch is on
    monkeypatch.setattr(sys, "stderr", log)
    assert not progress_shown(True)
    with progress_bar(range(3), progress=True, desc="logged") as bar:
        list(bar)
    assert log.getvalue() == ""


def test_the_switch_is_a_top_level_value_with_its_own_check():
    assert check_overrides(progress=False) == {"progress": False}
    assert check_overrides(progress="false") == {"progress": "false"}
    with pytest.raises(ValueError, match="progress must be true or false"):
        check_overrides(progress="maybe")
    with pytest.raises(ValueError, match="'progress' is a top-level value, not a settings entry.*--progress"):
        check_settings({**TINY_SETTINGS, "progress": False})


def test_calibration_shows_bars_when_on_and_writes_the_same_report(detector, data, tmp_path):
    reports = {}
    for progress in (True, False):
        out = tmp_path / str(progress)
        with terminal() as stream:
            calibrate_detector(
                detector, data / "datalist.json", 16, out / "model.pt", out / "calibration.json", progress=progress
            )
        drawn = stream.getvalue()
        bars = ("loading training", "loading validation", "calibration: fit images", "calibration: validation")
        bars += ("calibration: synthetic lesions",)
        for bar in bars:
            assert (bar in drawn) == progress, (progress, bar, drawn[-500:])
        reports[progress] = json.loads((out / "calibration.json").read_text())
        reports[progress].pop("seconds")
    assert reports[True] == reports[False]


class RecordingBaseline(MeanIntensityBaseline):
    """The mean-intensity baseline with a ``fit`` that takes ``progress``, as the autoencoder's does."""

    def fit(self, images, batch_size: int = 256, progress: bool = True):
        self.progress_given = progress
        return super().fit(images, batch_size)


def test_evaluation_shows_bars_when_on_and_passes_the_switch_to_the_baselines(detector, data, tmp_path):
    metrics = {}
    for progress in (True, False):
        baseline = RecordingBaseline()
        with terminal() as stream:
            paths = evaluate_detector(
                detector, data / "datalist.json", 16, tmp_path / str(progress), baselines={"mean": baseline},
                panel_rows=1, progress=progress,
            )  # fmt: skip
        drawn = stream.getvalue()
        for bar in ("loading test", "HQ-AnoGAN: test", "HQ-AnoGAN: localisation_test", "baselines"):
            assert (bar in drawn) == progress, (progress, bar, drawn[-500:])
        assert baseline.progress_given is progress
        metrics[progress] = json.loads(paths["json"].read_text())["metrics"]
    assert metrics[True] == metrics[False]


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory, detector) -> Path:
    from monai_hqanogan.workflows import export_detector

    runs = tmp_path_factory.mktemp("runs")
    export_detector(detector, runs / "models" / "model.pt")
    return runs


@pytest.mark.parametrize("progress", [True, False, "false"])
def test_folder_inference_shows_a_bar_over_the_files_when_on(progress, model_runs, data, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    for name in ("normal_0.png", "normal_1.png", "lesion_4.png"):
        shutil.copy(data / "images" / name, source / name)
    with terminal() as stream:
        run_tiny_inference(model_runs, source, tmp_path / "out", progress=progress)
    drawn = stream.getvalue()
    assert ("inference" in drawn and "file" in drawn) == (progress is True), drawn[-500:]
    if progress is True:
        assert "0/3 [" in drawn  # counted in files
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["images"] == 3


@pytest.mark.parametrize("config", ["train_generator.json", "calibrate.json", "evaluate.json", "inference.json"])
def test_a_bad_progress_value_is_refused_before_any_work(config, data, tmp_path):
    kind = "train" if config.startswith("train") else "infer"
    w = ConfigWorkflow(
        config_file=config_files(config), workflow_type=kind, bundle_root=str(BUNDLE),
        **tiny_overrides(data, tmp_path / "runs"), input=str(data / "images"), progress="maybe",
    )  # fmt: skip
    with pytest.raises(Exception) as info:
        w.initialize()
    assert_clear(info.value, ValueError, "progress must be true or false, got 'maybe'")
    assert not (tmp_path / "runs").exists()


def _handler(config: str, target: str, path: str, **overrides):
    parser = ConfigParser()
    parser.read_config(config_files(config))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    handlers = parser.get(path)
    index = next(i for i, h in enumerate(handlers) if isinstance(h, dict) and h.get("_target_", "").endswith(target))
    return parser.get_parsed_content(f"{path}#{index}")


@pytest.mark.parametrize(
    "config, target, path",
    [
        ("train_generator.json", "KimgProgressBar", "train#handlers"),
        ("train_encoder.json", "KimgProgressBar", "train#handlers"),
        ("inference.json", "EngineProgressBar", "handlers"),
    ],
)
def test_the_engines_bars_follow_the_configs_switch(config, target, path):
    on = _handler(config, target, path)
    assert isinstance(on, (KimgProgressBar, EngineProgressBar)) and on.disable is None
    assert _handler(config, target, path, progress="false").disable is True


@pytest.fixture
def commands(monkeypatch) -> dict[str, list[str]]:
    """The command of each step the main job starts, none of them run."""
    return record_main_job_steps(monkeypatch)


def _job(data: Path, runs: Path, *extra: str) -> int:
    return main(["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--run_dir", str(runs), *extra])


def test_main_job_no_progress_turns_every_steps_bars_off(data, tmp_path, commands, capsys):
    assert _job(data, tmp_path / "runs") == 0
    assert set(commands) == set(STAGES)
    assert not any("--progress" in command for command in commands.values())
    assert _job(data, tmp_path / "runs", "--no-progress") == 0
    for stage, command in commands.items():
        assert command[command.index("--progress") :][:2] == ["--progress", "false"], stage
    assert _job(data, tmp_path / "runs", "--progress", "false", "--stages", "calibrate") == 0  # a known override
    assert commands["calibrate"][-2:] == ["--progress", "false"]
    capsys.readouterr()
    assert _job(data, tmp_path / "runs", "--no-progress", "--progress", "true") == 1
    assert "--no-progress and a --progress override were both given" in capsys.readouterr().err


def test_main_job_help_shows_the_flag_the_defaults_and_the_pass_through(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "--no-progress" in shown and "[--KEY VALUE ...]" in shown
    assert "(default: bundles/brain_mri_anomaly_hqanogan)" in " ".join(shown.split())
    assert "is passed through to the steps' configs as an override" in " ".join(shown.split())
