"""Input that used to be accepted silently and is now refused before any work, with a message naming the problem:
misspelt main-job overrides and settings keys (they were ignored: the run used the defaults), abnormal items in a
datalist's ``training`` list (they trained the generator), an out-of-range inference ``slice_axis`` (7 became axis
1). Where a run folder exists, every file under it is byte-identical afterwards."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_hqanogan.workflows import SETTINGS_KEYS, check_datalist, check_settings, check_slice_axis, save_stage
from monai_hqanogan.workflows.main_job import check_command_line_overrides, main, run_main_job
from tests.bundle_utils import (
    BUNDLE,
    TINY_SETTINGS,
    config_files,
    make_tiny_dataset,
    record_main_job_steps,
    tiny_overrides,
)
from tests.bundle_utils import error_messages as chain
from tests.bundle_utils import file_hashes as hashes

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("silent_data")
    make_tiny_dataset(root)
    return root


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """The run folder of an earlier run: checkpoints, a stage file, a report, main_job.json."""
    runs = tmp_path / "runs"
    (runs / "generator" / "checkpoints").mkdir(parents=True)
    torch.save({"trainer": {"iteration": 4}}, runs / "generator" / "checkpoints" / "checkpoint_iteration=4.pt")
    torch.save({"generator": {}}, runs / "generator.pt")
    (runs / "evaluation").mkdir()
    (runs / "evaluation" / "report.md").write_text("# earlier report\n")
    (runs / "main_job.json").write_text('{"setting": "demo", "seconds": {"train_generator": 1.0}}')
    return runs


@pytest.fixture
def no_steps(monkeypatch):
    """Fail the test if the main job starts any step (``monai.bundle run`` subprocess)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a step was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", refuse)


def bundle_run(config: str, **overrides) -> BaseException:
    """Initialise and run a bundle config through ConfigWorkflow (what ``monai.bundle run`` does); the error it
    raised (the test fails if it raised none)."""
    kind = "train" if config.startswith("train") else "infer"
    logging.disable(logging.WARNING)  # MONAI's config warnings
    try:
        with pytest.raises(Exception) as info:
            w = ConfigWorkflow(
                config_file=config_files(config), workflow_type=kind, bundle_root=str(BUNDLE), **overrides
            )
            w.initialize()
            w.run()
    finally:
        logging.disable(logging.NOTSET)
    return info.value


def run_job(data: Path, runs: Path, *overrides: str) -> int:
    return main(["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--run_dir", str(runs), *overrides])


# ---------------------------------------------------------------------------------------------------- 1. overrides
UNKNOWN_OVERRIDES = {  # id: (the main job's extra arguments, the message)
    "misspelt_key": (["--total_kimgs", "5"], r"unknown override --total_kimgs \(did you mean 'total_kimg'\?\)"),
    "key_equals_value": (["--total_kimgs=5"], r"unknown override --total_kimgs \(did you mean 'total_kimg'\?\)"),
    "misspelt_batch": (["--batchsize", "8"], r"unknown override --batchsize \(did you mean 'batch_size'\?\)"),
    "misspelt_protocol": (["--protocl", "x"], r"unknown override --protocl \(did you mean 'protocol'\?\)"),
    "misspelt_job_option": (["--datset_dir", "x"], r"unknown override --datset_dir \(did you mean 'dataset_dir'"),
    "settings_path": (
        ["--settings#generator_kimgs", "5"],
        r"settings key 'generator_kimgs' \(did you mean 'generator_k",
    ),
    "config_path": (["--train#handlrs#0#n_saved", "3"], r"'train#handlrs' does not exist \(did you mean 'handlers'"),
    "settings_dict": (
        ["--settings", json.dumps({**TINY_SETTINGS, "total_kimgs": 5})],
        r"settings key 'total_kimgs' is unknown \(did you mean top-level 'total_kimg'\?\).*--total_kimg VALUE",
    ),
    "settings_dict_typo": (
        ["--settings", json.dumps({**TINY_SETTINGS, "generatr_lr": 1})],
        r"unknown settings key 'generatr_lr' \(did you mean 'generator_lr'\?\)",
    ),
    "partial_settings_dict": (["--settings", '{"total_kimgs": 5}'], r"'total_kimgs' is unknown.*settings lack"),
    "set_by_the_job": (["--config_file", "other.json"], "--config_file: the main job sets it"),
    "stray_argument": (["stray"], "unexpected argument 'stray'"),
}


@pytest.mark.parametrize("kind", list(UNKNOWN_OVERRIDES))
def test_main_job_refuses_unknown_overrides_before_any_work(kind, data, earlier_run, no_steps, capsys):
    overrides, message = UNKNOWN_OVERRIDES[kind]
    before = hashes(earlier_run)
    assert run_job(data, earlier_run, *overrides) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert hashes(earlier_run) == before  # main_job.json included: nothing ran, nothing was written


def test_a_key_only_other_steps_read_is_refused_for_the_steps_that_run(data, earlier_run, no_steps):
    """--protocol is calibrate's and evaluate's; with only the training steps to run nothing would read it."""
    before = hashes(earlier_run)
    with pytest.raises(ValueError, match=r"--protocol.*no step of \['train_generator'\] defines 'protocol'"):
        run_main_job(BUNDLE, dataset_dir=data, run_dir=earlier_run, stages=["train_generator"],
                     overrides=["--protocol", "labelled-validation"])  # fmt: skip
    assert hashes(earlier_run) == before


def test_documented_overrides_reach_the_steps_that_read_them(data, tmp_path, monkeypatch, capsys):
    """Every documented pass-through key still works, and each step's command holds those its config defines."""
    commands = record_main_job_steps(monkeypatch)
    overrides = [
        "--settings#generator_kimg", "0.032",  # before the dict on purpose: the job puts the dict first
        "--settings", json.dumps(TINY_SETTINGS),
        "--total_kimg", "0.016", "--resolution=16", "--batch_size", "4", "--seed", "1",
        "--protocol", "labelled-validation", "--storage_dtype", "float16", "--noise_mode", "random",
        "--train#handlers#0#n_saved", "3", "--tracking", "mlflow", "--model_file", str(tmp_path / "m.pt"),
    ]  # fmt: skip
    assert run_job(data, tmp_path / "runs", *overrides) == 0, capsys.readouterr().err
    for stage, command in commands.items():
        assert command.index("--settings") < command.index("--settings#generator_kimg"), stage
        assert json.loads(command[command.index("--settings") + 1]) == TINY_SETTINGS
        assert "--tracking" in command and "--resolution=16" in command, stage
    trains, others = ("train_generator", "train_encoder"), ("calibrate", "evaluate")
    for stage in trains:
        assert "--total_kimg" in commands[stage] and "--train#handlers#0#n_saved" in commands[stage]
        assert "--protocol" not in commands[stage] and "--storage_dtype" not in commands[stage]
    for stage in others:
        assert "--protocol" in commands[stage] and "--total_kimg" not in commands[stage]
        assert "--train#handlers#0#n_saved" not in commands[stage]
        assert commands[stage][commands[stage].index("--model_file") + 1] == str(tmp_path / "m.pt")
    assert "--storage_dtype" in commands["calibrate"] and "--storage_dtype" not in commands["evaluate"]
    # common.json's ids (noise_mode, the paths, the networks) are every step's: train_generator gets them too
    assert all("--noise_mode" in command for command in commands.values())


def test_a_single_settings_value_without_a_dict_gets_the_settings_of_the_setting(data, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(
        subprocess, "run", lambda c, check=False: commands.append(c) or subprocess.CompletedProcess(c, 0)
    )
    assert run_job(data, tmp_path / "runs", "--setting", "cpu", "--stages", "train_generator",
                   "--settings#generator_kimg", "2") == 0  # fmt: skip
    (command,) = commands
    shipped = json.loads((BUNDLE / "configs" / "settings.json").read_text())["cpu"]
    assert json.loads(command[command.index("--settings") + 1]) == shipped
    assert command[command.index("--settings#generator_kimg") :][:2] == ["--settings#generator_kimg", "2"]


MONAI_MAIN = str(Path(monai.bundle.__file__).with_name("__main__.py"))  # sys.argv[0] of python -m monai.bundle


def bundle_argv(config: str, *overrides: str) -> list[str]:
    return [MONAI_MAIN, "run", "--config_file", str(config_files(config)), *overrides]


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("train_generator.json", ["--total_kimgs", "5"], r"--total_kimgs \(did you mean 'total_kimg'\?\): no id"),
        ("inference.json", ["--output-dir=o"], r"--output-dir \(did you mean 'output_dir'\?\)"),
        ("calibrate.json", ["--protocol", "x", "--model_fil", "m.pt"], r"--model_fil \(did you mean 'model_file'"),
        ("train_encoder.json", ["--train#handlerz#0", "1"], r"'train#handlerz' does not exist"),
    ],
)
def test_a_bundle_command_line_refuses_unknown_overrides(config, overrides, message):
    """``python -m monai.bundle run`` adds a misspelt id and runs with the defaults; each config's ``initialize``
    now checks its command line first."""
    with pytest.raises(ValueError, match=message):
        check_command_line_overrides(bundle_argv(config, *overrides))
    known = ["--meta_file", "m.json", "--run_id", "run", "--bundle_root", "b", "--settings#generator_kimg", "2"]
    check_command_line_overrides(bundle_argv(config, *known))  # known ids and monai.bundle run's own options pass
    check_command_line_overrides(["pytest", "run", "--config_file", config, *overrides])  # not a bundle command line
    files = str(config_files("train_generator.json", "multi_gpu_train_generator.json"))
    check_command_line_overrides([MONAI_MAIN, "run", "--config_file", files, "--backend", "gloo"])  # the overlay's


@pytest.mark.parametrize("config", ["train_generator.json", "train_encoder.json", "calibrate.json", "evaluate.json"])
def test_a_bundle_command_line_without_common_json_names_the_list_to_pass(config):
    """The configs composed with common.json refuse to run without it, naming the ``--config_file`` list (MONAI would
    stop later with "the referring item '@settings' is not defined"); ids that only common.json defines are known
    overrides of the composed command line."""
    alone = str(BUNDLE / "configs" / config)
    common = str(BUNDLE / "configs" / "common.json")
    expected = re.escape(f"--config_file \"['{common}','{alone}']\"")
    with pytest.raises(ValueError, match=rf"refer to \[.*'settings'.*\], which .*common.json' defines.*{expected}"):
        check_command_line_overrides([MONAI_MAIN, "run", "--config_file", alone])
    with pytest.raises(ValueError, match="compose them with it"):
        check_command_line_overrides([MONAI_MAIN, "run", "--config_file", str([alone])])
    shared = ["--setting", "cpu", "--device", "cpu", "--resolution", "16", "--generator_def#channel_max", "8"]
    check_command_line_overrides(bundle_argv(config, *shared))
    check_command_line_overrides(bundle_argv("inference.json", "--setting", "cpu", "--resolution", "16"))  # alone


def test_the_main_job_passes_each_step_only_ids_its_config_defines(data, tmp_path, monkeypatch, capsys):
    """The main job's step commands pass the configs' own check (``--model_file`` went to the training steps, whose
    configs do not read it)."""
    commands = record_main_job_steps(monkeypatch)
    assert run_job(data, tmp_path / "runs", "--total_kimg", "0.016", "--protocol", "labelled-validation") == 0
    for command in commands.values():
        check_command_line_overrides([MONAI_MAIN, *command[3:]])
    assert "--model_file" in commands["calibrate"] and "--model_file" not in commands["train_generator"]


def test_a_misspelt_override_stops_python_m_monai_bundle_run(data, earlier_run):
    """End to end: the real command line fails before any work and names the nearest id."""
    before = hashes(earlier_run)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_files("calibrate.json")),
        "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--run_dir", str(earlier_run),
        "--protocl", "labelled-validation",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert re.search(r"ValueError: unknown override.*--protocl \(did you mean 'protocol'\?\)", result.stderr)
    assert hashes(earlier_run) == before


def test_check_settings_refuses_unknown_keys_naming_the_nearest():
    with pytest.raises(ValueError, match=r"unknown settings key 'generator_kimgs' \(did you mean 'generator_kimg'\?\)"):
        check_settings({**TINY_SETTINGS, "generator_kimgs": 5})
    with pytest.raises(ValueError, match=r"'total_kimg' is a top-level value, not a settings entry.*--total_kimg"):
        check_settings({**TINY_SETTINGS, "total_kimg": 5})
    with pytest.raises(ValueError, match=r"unknown settings key 'colour'; settings hold \["):
        check_settings({**TINY_SETTINGS, "colour": "blue"})
    # every key of the shipped settings is known; description and the optional wall-clock caps are allowed
    shipped = json.loads((BUNDLE / "configs" / "settings.json").read_text())
    assert set().union(*map(set, shipped.values())) <= set(SETTINGS_KEYS)
    assert check_settings({**TINY_SETTINGS, "description": "x", "generator_seconds": 5, "encoder_seconds": 5})


def test_a_bundle_run_refuses_a_settings_dict_with_an_unknown_key_and_keeps_the_earlier_run(data, earlier_run):
    """``python -m monai.bundle run ... --settings '{...}'`` (here the same call through ConfigWorkflow)."""
    before = hashes(earlier_run)
    settings = {**TINY_SETTINGS, "total_kimgs": 5}
    error = bundle_run("train_generator.json", **{**tiny_overrides(data, earlier_run), "settings": settings})
    assert re.search(r"ValueError: bad bundle settings: settings key 'total_kimgs' is unknown", chain(error))
    assert hashes(earlier_run) == before


# ---------------------------------------------------------------------------------------------------- 2. datalist
def _with_abnormal_training(data: Path, folder: Path, count: int) -> Path:
    shutil.copytree(data, folder)
    datalist = json.loads((folder / "datalist.json").read_text())
    lesions = [item for item in datalist["test"] if item["label"] == 1]
    datalist["training"] += [dict(lesions[i % len(lesions)], label=1) for i in range(count)]
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder / "datalist.json"


def test_check_datalist_refuses_abnormal_training_items_naming_how_many_and_the_first(data, tmp_path):
    datalist = _with_abnormal_training(data, tmp_path / "data", 7)
    with pytest.raises(ValueError) as info:
        check_datalist(datalist, ["training"])
    message = str(info.value)
    assert "list 'training' holds 7 abnormal item(s) (label != 0) of 23" in message
    assert "lesion_4.png, lesion_5.png, lesion_6.png, lesion_7.png, lesion_4.png and 2 more" in message
    assert "normal images only" in message
    # validation and test may hold abnormal items; any list can be declared normal-only
    assert len(check_datalist(datalist, ["validation", "test"], verify_images=False)["test"]) == 8
    with pytest.raises(ValueError, match="list 'test' holds 4 abnormal"):
        check_datalist(datalist, ["test"], verify_images=False, normal_keys=["test"])
    content = json.loads(datalist.read_text())
    content["training"] = [dict(item, label="tumour") for item in content["training"][:2]]
    datalist.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"item 0 of 'training' \('.*normal_0.png'\) has label 'tumour'"):
        check_datalist(datalist, ["training"])


def _real_generator_file(runs: Path) -> None:
    """``generator.pt`` of the tiny networks, as train_generator.json writes it (train_encoder.json loads it)."""
    parser = ConfigParser()
    parser.read_config(config_files("train_encoder.json"))
    parser.update({"bundle_root": str(BUNDLE), "settings": dict(TINY_SETTINGS)})
    generator, discriminator = (
        parser.get_parsed_content("generator_def"),
        parser.get_parsed_content("discriminator_def"),
    )
    save_stage(runs / "generator.pt", generator=generator, discriminator=discriminator)


@pytest.mark.parametrize("config", ["train_generator.json", "train_encoder.json"])
def test_training_refuses_abnormal_training_items_and_keeps_the_earlier_run(config, data, tmp_path, earlier_run):
    _with_abnormal_training(data, tmp_path / "data", 2)
    _real_generator_file(earlier_run)
    before = hashes(earlier_run)
    error = bundle_run(config, **tiny_overrides(tmp_path / "data", earlier_run))
    assert re.search(r"list 'training' holds 2 abnormal item\(s\).*lesion_4.png, lesion_5.png", chain(error))
    assert hashes(earlier_run) == before  # no checkpoint, no tensorboard file, no lock left behind


# ---------------------------------------------------------------------------------------------------- 3. slice_axis
@pytest.mark.parametrize("axis", [3, 7, -4, -7, 100, 1.0, "1", True, None])
def test_check_slice_axis_refuses_every_value_that_is_not_a_spatial_axis(axis):
    with pytest.raises(ValueError, match=r"slice_axis must be a spatial axis of a 3D volume, an integer from -3 to 2"):
        check_slice_axis(axis)


def test_check_slice_axis_accepts_the_six_axes():
    assert [check_slice_axis(a) for a in (-3, -2, -1, 0, 1, 2)] == [-3, -2, -1, 0, 1, 2]


def _inference_parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "settings": dict(TINY_SETTINGS), **overrides})
    return parser


@pytest.mark.parametrize("axis", [7, 3, -4])
def test_inference_refuses_an_out_of_range_slice_axis_before_any_work(axis, tmp_path):
    """inference.json's check at initialize (before anything is written), and the inferer built from the config
    (what MONAI Label builds) refuses it too: SliceAnomalyInferer takes the axis modulo 3."""
    out = tmp_path / "inference"
    out.mkdir()
    (out / "scores.json").write_text('{"images": 3}')
    before = hashes(out)
    error = bundle_run(
        "inference.json",
        settings=dict(TINY_SETTINGS),
        run_dir=str(tmp_path / "runs"),
        output_dir=str(out),
        slice_axis=axis,
    )
    assert f"slice_axis must be a spatial axis of a 3D volume, an integer from -3 to 2 (-1: the last), got {axis}" in (
        chain(error)
    )
    assert hashes(out) == before
    with pytest.raises(Exception) as info:
        _inference_parser(slice_axis=axis).get_parsed_content("inferer")
    assert f"got {axis} (int)" in chain(info.value)
    assert _inference_parser(slice_axis=-2).get_parsed_content("inferer").slice_axis == -2
