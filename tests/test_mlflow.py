"""MONAI's ``--tracking mlflow`` on the bundle: both trainers, calibration, evaluation and inference log to a local
MLflow store.

The bundle runs through ``ConfigWorkflow(..., tracking="mlflow")``, which is what ``python -m monai.bundle run
--tracking mlflow`` builds: MONAI's default MLflow settings, with the tracking URI pointed at a SQLite file in the
test's folder (MONAI's ``MLFlowHandler`` refuses ``file://`` stores, which MLflow 3 retired). Needs the ``mlflow``
extra (``mlflow-skinny`` plus SQLAlchemy and Alembic for the SQLite store); CI installs it, so the module skips only
where MLflow itself is missing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import monai.bundle
import pytest
from monai.bundle import ConfigWorkflow
from monai.handlers import MLFlowHandler, from_engine
from monai.utils import path_to_sqlite_uri

from monai_hqanogan.workflows import ResultsPublisher, flatten_results, log_step_outputs, step_output_scalars
from monai_hqanogan.workflows.main_job import check_command_line_overrides, main
from tests.bundle_utils import (
    BUNDLE,
    config_files,
    make_tiny_dataset,
    record_main_job_steps,
    run_tiny_inference,
    tiny_model_runs,
    tiny_overrides,
)

mlflow = pytest.importorskip("mlflow")

#: 16 training images at batch 4 for 0.016 kimg: 4 iterations per stage
ITERATIONS = 4


def tracked_workflow(config: str, root: Path, run_name: str) -> ConfigWorkflow:
    """One bundle config with ``tracking="mlflow"``, the tiny settings and the test's tracking store."""
    w = ConfigWorkflow(
        config_file=config_files(config),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        tracking="mlflow",
        **tiny_overrides(root / "data", root / "runs", progress=False),
        tracking_uri=path_to_sqlite_uri(str(root / "mlruns.db")),
        experiment_name="hqanogan_test",
        run_name=run_name,
    )
    w.initialize()
    return w


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, single_thread):
    """Train the generator, then the encoder, each tracked as one MLflow run; returns the client and the runs."""
    root = tmp_path_factory.mktemp("mlflow")
    make_tiny_dataset(root / "data")
    for config, name in (("train_generator.json", "generator"), ("train_encoder.json", "encoder")):
        w = tracked_workflow(config, root, name)
        w.run()
        w.finalize()
    uri = path_to_sqlite_uri(str(root / "mlruns.db"))
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("hqanogan_test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    return {"root": root, "uri": uri, "client": client, "experiment": experiment, "runs": runs}


@pytest.mark.parametrize(
    "stage, keys",
    [
        ("generator", ["loss/G", "loss/D", "D/real_logit", "D/fake_logit", "ada/p", "progress/kimg"]),
        ("encoder", ["loss/E", "loss/l2", "loss/feature", "loss/w_norm", "progress/kimg"]),
    ],
)
def test_each_trainer_logs_every_step_output_per_iteration(tracked, stage, keys):
    run = tracked["runs"][stage]
    assert run.info.status == "FINISHED"  # close_on_complete: the run ended with the training
    for key in keys:
        history = tracked["client"].get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == list(range(1, ITERATIONS + 1)), key
        assert all(math.isfinite(m.value) for m in history), key
    kimg = tracked["client"].get_metric_history(run.info.run_id, "progress/kimg")
    assert [round(m.value, 3) for m in kimg] == [0.004, 0.008, 0.012, 0.016]
    # the trainer's parameters, and the executed config as an artifact, as MONAI's default settings ask
    assert run.data.params["epoch_length"] == str(ITERATIONS)
    artifacts = [a.path for a in tracked["client"].list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts


def test_the_two_stages_are_two_runs_of_one_experiment(tracked):
    assert set(tracked["runs"]) == {"generator", "encoder"}
    assert {r.info.experiment_id for r in tracked["runs"].values()} == {tracked["experiment"].experiment_id}
    # each stage wrote its model as usual
    assert (tracked["root"] / "runs" / "generator.pt").is_file() and (tracked["root"] / "runs" / "encoder.pt").is_file()


def test_calibration_and_evaluation_log_their_results(tracked):
    """Neither step is an ignite loop: their ``evaluator`` (a ResultsPublisher) takes MONAI's handler and logs the
    numbers of the step's report as metrics, its text choices as parameters and its files as artifacts."""
    client, root = tracked["client"], tracked["root"]
    for config, name in (("calibrate.json", "calibration"), ("evaluate.json", "evaluation")):
        w = tracked_workflow(config, root, name)
        w.run()
        w.finalize()
    runs = {r.info.run_name: r for r in client.search_runs([tracked["experiment"].experiment_id])}
    calibration = json.loads((root / "runs" / "calibration" / "calibration.json").read_text())
    run = runs["calibration"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["image_threshold"] == pytest.approx(calibration["image_threshold"])
    assert run.data.params["protocol"] == calibration["protocol"] == "normal-only"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "calibration.json" in artifacts and any(a.startswith("config_") for a in artifacts), artifacts

    report = json.loads((root / "runs" / "evaluation" / "report.json").read_text())
    run = runs["evaluation"]
    assert run.info.status == "FINISHED"
    for method in ("HQ-AnoGAN", "PCA", "autoencoder"):
        key = f"test/{method}/image_auroc"
        assert run.data.metrics[key] == pytest.approx(report["metrics"]["test"][method]["image_auroc"]), key
    assert run.data.metrics["localisation_test/HQ-AnoGAN/pixel_auroc"] == pytest.approx(
        report["metrics"]["localisation_test"]["HQ-AnoGAN"]["pixel_auroc"]
    )
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert {"report.json", "report.md", "roc_test.png", "panels_test.png"} <= set(artifacts), artifacts


def test_results_are_split_into_finite_metrics_and_text_parameters():
    results = {"a": 1, "b": {"c": 0.5, "d": float("nan"), "e": "x", "f": True, "g": [1, 2], "h": None}}
    assert flatten_results(results) == ({"a": 1.0, "b/c": 0.5}, {"b/e": "x"})
    # without handlers (no --tracking) publishing runs nothing and hands the results on
    publisher = ResultsPublisher()
    assert publisher.publish(results) is results and publisher.state.iteration == 0


def test_inference_with_tracking_logs_a_finished_run(tracked, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for image in sorted((tracked["root"] / "data" / "images").glob("*.png"))[:4]:
        shutil.copy(image, source)
    out = tmp_path / "out"
    run_tiny_inference(
        tiny_model_runs(tmp_path / "runs"),
        source,
        out,
        tracking="mlflow",
        tracking_uri=tracked["uri"],
        experiment_name="hqanogan_inference",
        run_name="inference",
    )
    # inference.json sets save_execute_config to false: MONAI would write config_<time>.json into the output
    # folder before the run, and the output folder takes only the files of an inference run
    assert (out / "scores.json").is_file() and not list(out.glob("config_*.json"))
    client = tracked["client"]
    (run,) = client.search_runs([client.get_experiment_by_name("hqanogan_inference").experiment_id])
    assert run.info.run_name == "inference" and run.info.status == "FINISHED"
    assert run.data.params["epoch_length"] == "4"  # the evaluator took the 4 images of the folder one by one


def test_only_from_engine_selections_are_replaced(tracked):
    uri = tracked["uri"]  # an existing store: a new one takes seconds to set up
    default = MLFlowHandler(tracking_uri=uri, output_transform=from_engine(["loss"], first=True))
    own = MLFlowHandler(tracking_uri=uri, output_transform=lambda x: {"g": x["loss/G"]})
    kept = own.output_transform
    assert log_step_outputs([object(), default, own]) == [default]
    assert default.output_transform is step_output_scalars and own.output_transform is kept
    # what the default transform would have done with a trainer's output, and what the replacement does
    output = {"loss/G": 0.5, "loss/D": 1.25, "progress/kimg": 0.004, "flag": True, "name": "x"}
    with pytest.raises(KeyError):
        from_engine(["loss"], first=True)(output)
    assert step_output_scalars(output) == {"loss/G": 0.5, "loss/D": 1.25, "progress/kimg": 0.004}
    assert step_output_scalars(None) is None


def test_tracking_settings_are_known_overrides_once_tracking_is_on(tmp_path, monkeypatch):
    """``--tracking mlflow --tracking_uri ...`` on the command line: the ids that the tracking settings add pass the
    bundle's check of unknown overrides (and the main job gives them to every step); without ``--tracking`` they
    are still refused, as ids that nothing would read."""
    command = [str(Path(monai.bundle.__file__).with_name("__main__.py")), "run", "--config_file"]
    command.append(str(config_files("train_generator.json")))
    ids = ["--tracking_uri", "sqlite:///x.db", "--experiment_name", "e", "--run_name", "g"]
    check_command_line_overrides([*command, "--tracking", "mlflow", *ids])
    with pytest.raises(ValueError, match="--tracking_uri .*no id of the config defines 'tracking_uri'"):
        check_command_line_overrides([*command, *ids])
    settings = tmp_path / "tracking.json"  # a tracking settings file adds its own ids
    handler = {"_target_": "MLFlowHandler", "tracking_uri": "@my_uri"}
    handlers_id = {"trainer": {"id": "train#trainer", "handlers": "train#handlers"}}
    settings.write_text(json.dumps({"handlers_id": handlers_id, "configs": {"my_uri": "x", "trainer": handler}}))
    check_command_line_overrides([*command, "--tracking", str(settings), "--my_uri", "y"])
    with pytest.raises(ValueError, match="--trainer .*no id of the config defines 'trainer'"):  # goes to handlers
        check_command_line_overrides([*command, "--tracking", str(settings), "--trainer", "y"])

    make_tiny_dataset(tmp_path / "data")
    steps = record_main_job_steps(monkeypatch)
    args = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(tmp_path / "data"), "--run_dir", str(tmp_path / "r")]
    assert main([*args, "--tracking", "mlflow", *ids]) == 0
    for step, step_command in steps.items():
        assert step_command[step_command.index("--tracking_uri") + 1] == "sqlite:///x.db", step
        assert step_command[step_command.index("--tracking") + 1] == "mlflow", step
