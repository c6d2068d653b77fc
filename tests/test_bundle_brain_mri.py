"""The brain MRI bundle end to end at 16 px on a tiny synthetic dataset: every config through MONAI's ConfigWorkflow,
inference as a ``python -m monai.bundle run`` subprocess, 3D NIfTI volumes, MONAI's bundle tools, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from monai_hqanogan.utils import list_checkpoints, load_checkpoint
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, config_files, make_tiny_dataset, tiny_overrides

CONFIGS = BUNDLE / "configs"


def workflow(config: str, workflow_type: str, **overrides) -> ConfigWorkflow:
    w = ConfigWorkflow(
        config_file=config_files(config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **overrides,
    )
    w.initialize()
    return w


def bundle_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_thread):
    """Run train_generator -> train_encoder -> calibrate once for the module's tests."""
    root = tmp_path_factory.mktemp("bundle")
    make_tiny_dataset(root / "data")
    runs = root / "runs"
    for config in ("train_generator.json", "train_encoder.json"):
        w = workflow(config, "train", **tiny_overrides(root / "data", runs))
        assert w.check_properties() == []
        w.run()
        w.finalize()
    w = workflow("calibrate.json", "infer", **tiny_overrides(root / "data", runs))
    w.run()
    return {"root": root, "data": root / "data", "runs": runs}


def test_training_writes_checkpoints_stage_files_and_pictures(trained):
    runs = trained["runs"]
    for stage in ("generator", "encoder"):
        assert list_checkpoints(runs / stage / "checkpoints"), stage
        assert (runs / f"{stage}.pt").is_file()
        assert any((runs / stage / "tensorboard").iterdir())
    assert list((runs / "generator" / "samples").glob("*.png"))
    assert list((runs / "encoder" / "reconstructions").glob("*.png"))
    stage = load_checkpoint(runs / "generator.pt")
    assert set(stage) == {"generator", "discriminator"}
    assert set(load_checkpoint(runs / "encoder.pt")) == {"encoder"}
    # the total kimg was reached: 0.016 kimg at batch 4 is 4 iterations
    newest = list_checkpoints(runs / "generator" / "checkpoints")[-1][1]
    assert load_checkpoint(newest)["trainer"]["training"]["nimg"] >= 16


def test_calibration_is_saved_in_the_model_file(trained):
    report = json.loads((trained["runs"] / "calibration" / "calibration.json").read_text())
    # normal-only: the 4 abnormal validation images are never read; the synthetic lesions choose the weights
    assert report["counts"] == {"fit": 16, "validation": 4, "validation_abnormal": 0, "selection": 8}
    assert report["protocol"] == "normal-only" and report["ignored_abnormal"] == 4
    assert report["weights_from"].startswith("synthetic-lesion AUROC on 8")
    assert report["threshold_from"].startswith("FPR 0.05 on 4 normal")
    assert "Dice" in report["pixel_threshold_from"]
    state = load_checkpoint(trained["runs"] / "models" / "model.pt")
    assert bool(state["calibration.calibrated"])
    assert float(state["calibration.pixel_threshold"]) == pytest.approx(report["pixel_threshold"])


def test_labelled_validation_calibration_is_opt_in_and_unknown_protocols_are_refused(trained, tmp_path):
    extra = {"model_file": str(tmp_path / "model.pt"), "output_dir": str(tmp_path / "calibration")}
    w = workflow(
        "calibrate.json", "infer", **tiny_overrides(trained["data"], trained["runs"]), protocol="labelled-validation",
        **extra,
    )  # fmt: skip
    w.run()
    report = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    assert report["protocol"] == "labelled-validation" and report["weights_from"] == "labelled validation AUROC"
    assert report["counts"]["validation_abnormal"] == 4 and report["threshold_from"].startswith("F1 max on 8")
    with pytest.raises(Exception) as info:
        workflow("calibrate.json", "infer", **tiny_overrides(trained["data"], trained["runs"]), protocol="tuned")
    assert "unknown protocol 'tuned'" in "".join(str(e) for e in _chain(info.value))


def test_rerun_resumes_and_extends_training(trained, tmp_path):
    """The same command again resumes from the last checkpoint; a larger total_kimg trains on from there."""
    runs = trained["runs"]
    before = list_checkpoints(runs / "generator" / "checkpoints")[-1][0]
    settings = {**TINY_SETTINGS, "generator_kimg": 0.032}
    w = workflow("train_generator.json", "train", **{**tiny_overrides(trained["data"], runs), "settings": settings})
    w.run()
    trainer = w.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == before + 4  # 4 more iterations, not 8 from scratch
    assert trainer.nimg == 32


def test_inference_cli_writes_maps_labels_scores_and_panels(trained, tmp_path):
    out = tmp_path / "inference"
    bundle_cli(
        "run",
        "--config_file", str(CONFIGS / "inference.json"),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(trained["data"]),
        "--run_dir", str(trained["runs"]),
        "--output_dir", str(out),
        "--settings", json.dumps(TINY_SETTINGS),
    )  # fmt: skip
    scores = json.loads((out / "scores.json").read_text())
    assert scores["images"] == 8 and len(scores["rows"]) == 8
    assert {Path(r["image"]).name for r in scores["rows"]} == {f"normal_{i}.png" for i in range(20, 24)} | {
        f"lesion_{j}.png" for j in range(4, 8)
    }
    assert (out / "scores.csv").read_text().splitlines()[0] == "image,score,label,threshold,slice"
    from PIL import Image

    # PNG inputs get PNG maps on the input grid, in its orientation ((H, W) = (24, 20)), not the 16 px model grid
    amap = np.asarray(Image.open(out / "lesion_4_anomaly_map.png"))
    label = np.asarray(Image.open(out / "lesion_4_anomaly_label.png"))
    assert amap.shape == label.shape == (24, 20)
    assert set(np.unique(label)) <= {0, 255} and not list(out.glob("*.nii.gz"))
    assert len(list((out / "panels").glob("*_panel.png"))) == 8
    # the maps are the run's own files: no MONAI Label heat map (that writer is for MONAI Label requests only)
    assert not (trained["runs"] / "heatmaps").exists()


def test_inference_on_a_3d_volume_keeps_shape_and_affine(trained, tmp_path):
    volume = np.zeros((20, 24, 5), dtype=np.float32)
    yy, xx = np.mgrid[:20, :24]
    for k in range(1, 4):  # slices 0 and 4 stay empty and are skipped
        volume[..., k] = 100.0 * (((yy - 10) / 8) ** 2 + ((xx - 12) / 10) ** 2 < 1)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "vol.nii.gz"))
    out = tmp_path / "out"
    w = workflow(
        "inference.json", "infer", **tiny_overrides(trained["data"], trained["runs"]),
        input=str(tmp_path / "vol.nii.gz"), output_dir=str(out),
    )  # fmt: skip
    assert w.check_properties() == []
    w.run()
    amap = nib.load(str(out / "vol_anomaly_map.nii.gz"))
    assert amap.shape[:3] == (20, 24, 5)
    np.testing.assert_allclose(amap.affine, affine, atol=1e-5)
    data = np.asarray(amap.dataobj).reshape(20, 24, 5)
    assert np.all(data[..., 0] == 0) and np.all(data[..., 4] == 0)  # empty slices are not scored
    row = json.loads((out / "scores.json").read_text())["rows"][0]
    assert row["slice_scores"][0] is None and row["slice_scores"][4] is None
    assert row["slice"] in (1, 2, 3)
    assert row["score"] == pytest.approx(max(s for s in row["slice_scores"] if s is not None))


def test_png_output_option(trained, tmp_path):
    out = tmp_path / "png"
    w = workflow(
        "inference.json", "infer", **tiny_overrides(trained["data"], trained["runs"]),
        input=str(trained["data"] / "images" / "lesion_5.png"), output_dir=str(out), output_ext=".png",
    )  # fmt: skip
    w.run()
    from PIL import Image

    label = np.asarray(Image.open(out / "lesion_5_anomaly_label.png"))
    assert label.shape == (24, 20) and set(np.unique(label)) <= {0, 255}
    assert (out / "lesion_5_anomaly_map.png").is_file()


def test_evaluate_writes_the_report_with_baselines(trained):
    out = trained["runs"] / "evaluation"
    w = workflow("evaluate.json", "infer", **tiny_overrides(trained["data"], trained["runs"]))
    w.run()
    report = json.loads((out / "report.json").read_text())
    methods = {"HQ-AnoGAN", "mean intensity", "PCA", "autoencoder"}
    assert set(report["metrics"]["test"]) == methods
    test = report["metrics"]["test"]["HQ-AnoGAN"]
    assert test["num_images"] == 8 and test["num_abnormal"] == 4 and 0 <= test["image_auroc"] <= 1
    # the interval resamples the datalist's groups (one per slice here), and HQ-AnoGAN is compared with each method
    assert test["image_auroc_ci"]["num_groups"] == {"normal": 4, "abnormal": 4}
    assert set(report["comparisons"]["test"]) == methods - {"HQ-AnoGAN"}
    # each method's own threshold, as calibrated, applied to the test set
    assert test["image_threshold"] == report["info"]["calibration"]["image_threshold"]
    assert 0 <= test["fpr_at_threshold"] <= 1 and 0 <= test["tpr_at_threshold"] <= 1
    for name in methods - {"HQ-AnoGAN"}:
        threshold = report["metrics"]["test"][name]["image_threshold"]
        assert threshold == report["info"]["baseline_scores"][name]["image_threshold"], name
    loc = report["metrics"]["localisation_test"]["HQ-AnoGAN"]
    assert loc["pixel_auroc"] is not None and loc["aupro"] is not None
    markdown = (out / "report.md").read_text()
    for name in methods:
        assert f"| {name} |" in markdown
    for figure in ("roc_test.png", "panels_test.png", "panels_localisation_test.png"):
        assert (out / figure).stat().st_size > 1000, figure


def test_calibration_can_choose_the_map_width_and_the_baselines_choose_among_the_same(trained, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for stage in ("generator.pt", "encoder.pt"):  # the trained networks, in a run folder of this test's own
        (runs / stage).write_bytes((trained["runs"] / stage).read_bytes())
    overrides = tiny_overrides(trained["data"], runs)
    workflow("calibrate.json", "infer", **overrides, smoothing_factors=[1, 2, 3]).run()
    report = json.loads((runs / "calibration" / "calibration.json").read_text())
    assert report["smoothing_candidates"] == [1.0, 2.0, 3.0]  # multiples of the 16 px family width, 1 px
    aurocs = report["smoothing_aurocs"]
    assert set(aurocs) == {"1", "2", "3"}
    assert report["smoothing_sigma"] == float(max(aurocs, key=aurocs.get))
    # how firm the choice is, reported next to it: the selection AUROC's interval over the selection set's groups
    # (each normal slice and its lesioned copy in one), and the lead over the best other width
    ci = report["selection_auroc_ci"]
    assert ci["low"] <= report["selection_auroc"] <= ci["high"] and ci["num_groups"] == {"normal": 4, "abnormal": 4}
    runner_up = report["smoothing_runner_up"]
    assert runner_up["sigma"] != report["smoothing_sigma"] and runner_up["low"] <= runner_up["difference"]
    assert runner_up["difference"] == pytest.approx(
        aurocs[f"{report['smoothing_sigma']:g}"] - aurocs[f"{runner_up['sigma']:g}"], abs=1e-6
    )
    state = load_checkpoint(runs / "models" / "model.pt")
    assert float(state["smoothing.kernel_sigma_0"]) == report["smoothing_sigma"]  # the file keeps the width
    w = workflow("evaluate.json", "infer", **overrides)
    w.run()
    scores = json.loads((runs / "evaluation" / "report.json").read_text())["info"]["baseline_scores"]
    for name in ("PCA", "autoencoder"):
        chosen = scores[name]
        assert set(chosen["smoothing_aurocs"]) == {"1", "2", "3"}, name
        best = max(chosen["smoothing_aurocs"].values())
        assert chosen["smoothing_aurocs"][f"{chosen['smoothing_sigma']:g}"] == best == chosen["selection_auroc"]
        assert chosen["selection_auroc_ci"]["low"] <= best <= chosen["selection_auroc_ci"]["high"], name
        assert chosen["smoothing_runner_up"]["sigma"] != chosen["smoothing_sigma"], name
    assert "smoothing_sigma" not in scores["mean intensity"]  # it has no map to smooth


def test_monai_bundle_tools_accept_the_bundle(trained, tmp_path):
    tiny = json.dumps(TINY_SETTINGS)
    bundle_cli(
        "verify_net_in_out", "network_def",
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", str(CONFIGS / "inference.json"),
        "--bundle_root", str(BUNDLE),
        "--settings", tiny,
        "--_meta_#network_data_format#inputs#image#spatial_shape", "[16,16]",
        "--_meta_#network_data_format#outputs#pred#spatial_shape", "[16,16]",
    )  # fmt: skip
    ts = tmp_path / "model.ts"
    bundle_cli(
        "ckpt_export", "network_def",
        "--filepath", str(ts),
        "--ckpt_file", str(trained["runs"] / "models" / "model.pt"),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", str(CONFIGS / "inference.json"),
        "--bundle_root", str(BUNDLE),
        "--settings", tiny,
        "--use_trace", "True",
        "--input_shape", "[1,1,16,16]",
    )  # fmt: skip
    exported = torch.jit.load(str(ts))
    w = workflow("inference.json", "infer", **tiny_overrides(trained["data"], trained["runs"]))
    net = w.parser.get_parsed_content("network")
    net.load_state_dict(load_checkpoint(trained["runs"] / "models" / "model.pt"))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net.eval()(x), atol=1e-5, rtol=1e-4)


def _targets(node) -> list[str]:
    """Every ``_target_`` of a config (nested dicts and lists)."""
    if isinstance(node, dict):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    return [t for v in node for t in _targets(v)] if isinstance(node, list) else []


def test_common_json_holds_the_shared_pieces_and_inference_json_runs_alone():
    """The network definitions, the settings lookup, the device and the paths live in common.json only; inference.json
    (read alone by MONAI Label and MONAI's bundle tools) builds common.json's detector with its own values."""
    from monai.bundle import ConfigParser

    configs = {p.name: json.loads(p.read_text()) for p in CONFIGS.glob("*.json")}
    shared = {"imports", "bundle_root", "settings", "device", "dataset_dir", "run_dir", "resolution"}
    shared |= {"image_transforms", "generator_file"}
    for name, config in configs.items():
        if name in ("metadata.json", "settings.json"):
            continue
        networks = [t for t in _targets(config) if t.startswith("monai_hqanogan.networks")]
        assert bool(networks) == (name == "common.json"), (name, networks)
        if name not in ("common.json", "inference.json"):  # the multi-GPU overlays set each rank's device
            own = {"device"} if name.startswith("multi_gpu_") else set()
            assert not shared & set(config) - own, name
    assert shared <= set(configs["common.json"])

    def parsed(file, id, **values):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / file))
        parser.update({"bundle_root": str(BUNDLE), "settings": dict(TINY_SETTINGS), **values})
        return parser.get_parsed_content(id)

    torch.manual_seed(0)
    detector = parsed("inference.json", "network_def", resolution=8, noise_mode="none")
    torch.manual_seed(0)
    reference = parsed("common.json", "detector_def", resolution=8, noise_mode="none")
    assert type(detector) is type(reference) and detector.noise_mode == "none"  # the overrides reach common.json's
    assert detector.generator.resolution == detector.encoder.resolution == 8

    def shapes(net):
        return {k: getattr(v, "shape", None) for k, v in net.state_dict().items()}

    assert shapes(detector) == shapes(reference)


def test_metadata_has_the_keys_monai_requires():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    # the mandatory keys of the MONAI Bundle specification (verify_metadata downloads its schema: not reachable here);
    # MONAI >= 1.2 renamed optional_packages_version to required_packages_version (and warns about the old name)
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format", "changelog"):  # fmt: skip
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image"} and set(fmt["outputs"]) == {"pred"}
    tensor_keys = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                   "is_patch_data", "channel_def")  # fmt: skip
    for name in ("network_data_format", "generator_data_format", "encoder_data_format"):
        for part in ("inputs", "outputs"):
            for spec in meta[name][part].values():
                assert all(key in spec for key in tensor_keys), (name, part, sorted(spec))
    assert "optional_packages_version" not in meta
    assert "monai-hqanogan" in meta["required_packages_version"]
    import monai_hqanogan

    assert meta["required_packages_version"]["monai-hqanogan"] == monai_hqanogan.__version__


def test_metadata_shapes_follow_the_shipped_setting():
    from monai_hqanogan.workflows import SHIPPED_SETTING

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    resolution = json.loads((CONFIGS / "settings.json").read_text())[SHIPPED_SETTING]["resolution"]
    for name in ("network_data_format", "encoder_data_format"):
        assert meta[name]["inputs"]["image"]["spatial_shape"] == [resolution, resolution]
    for name in ("network_data_format", "generator_data_format"):
        assert meta[name]["outputs"]["pred"]["spatial_shape"] == [resolution, resolution]
    # inference and evaluation default to the shipped setting and read models/model.pt
    for config in ("inference.json", "evaluate.json"):
        w = ConfigWorkflow(config_file=config_files(config), workflow_type="infer", bundle_root=str(BUNDLE))
        assert w.parser.get_parsed_content("setting") == SHIPPED_SETTING
        assert Path(w.parser.get_parsed_content("model_file")) == BUNDLE / "models" / "model.pt"
        # any other run folder reads its own weights, never the shipped ones
        w = ConfigWorkflow(
            config_file=config_files(config), workflow_type="infer", bundle_root=str(BUNDLE), run_dir="/tmp/elsewhere"
        )
        assert w.parser.get_parsed_content("model_file") == "/tmp/elsewhere/models/model.pt"
    w = ConfigWorkflow(config_file=config_files("calibrate.json"), workflow_type="infer", bundle_root=str(BUNDLE))
    assert "runs" in Path(w.parser.get_parsed_content("model_file")).parts  # calibration never writes into models/


def test_one_override_switches_demo_to_full():
    settings = json.loads((CONFIGS / "settings.json").read_text())
    assert set(settings["demo"]) == set(settings["full"]) == set(settings["cpu"])
    for name, expected in (("demo", 32), ("cpu", 32), ("full", 128)):
        w = ConfigWorkflow(
            config_file=config_files("train_generator.json"),
            workflow_type="train",
            bundle_root=str(BUNDLE),
            setting=name,
        )
        w.initialize()
        assert w.parser.get_parsed_content("resolution") == expected
        assert w.parser.get_parsed_content("generator_def").resolution == expected


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda data: (data / "datalist.json").unlink(), "Prepare the data first"),
        (lambda data: (data / "images" / "normal_3.png").unlink(), "normal_3.png"),
        (lambda data: (data / "images" / "normal_5.png").write_bytes(b"not a png"), "normal_5.png"),
    ],
)
def test_bad_training_data_fails_before_training(tmp_path, break_it, message):
    make_tiny_dataset(tmp_path / "data")
    break_it(tmp_path / "data")
    w = workflow("train_generator.json", "train", **tiny_overrides(tmp_path / "data", tmp_path / "runs"))
    with pytest.raises(Exception) as info:
        w.run()
    assert message in "".join(str(e) for e in _chain(info.value))
    assert not list((tmp_path / "runs" / "generator").glob("checkpoints/*.pt"))


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def test_unwritable_output_folder_is_refused(tmp_path):
    make_tiny_dataset(tmp_path / "data")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(Exception) as info:
        workflow("train_generator.json", "train", **tiny_overrides(tmp_path / "data", blocker))
    assert "cannot be written" in "".join(str(e) for e in _chain(info.value))


def test_inference_refuses_missing_model_and_missing_input(trained, tmp_path):
    with pytest.raises(Exception) as info:
        workflow("inference.json", "infer", **tiny_overrides(trained["data"], tmp_path / "nothing"))
    assert "run calibrate.json first" in "".join(str(e) for e in _chain(info.value))
    with pytest.raises(Exception) as info:  # inputs are listed and checked before any work, in initialize
        workflow(
            "inference.json", "infer", **tiny_overrides(trained["data"], trained["runs"]),
            input=str(tmp_path / "missing.nii.gz"), output_dir=str(tmp_path / "o"),
        )  # fmt: skip
    assert "does not exist" in "".join(str(e) for e in _chain(info.value))
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 0), dtype=np.float32), np.eye(4)), str(empty))
    with pytest.raises(Exception) as info:
        workflow(
            "inference.json", "infer", **tiny_overrides(trained["data"], trained["runs"]),
            input=str(empty), output_dir=str(tmp_path / "o"),
        ).run()  # fmt: skip
    assert "no 2D slice" in "".join(str(e) for e in _chain(info.value))
    assert not (tmp_path / "o").exists() and [p.name for p in tmp_path.iterdir()] == ["empty.nii.gz"]


def test_multi_gpu_overlays_under_torchrun_then_resume_in_one_process(tmp_path):
    """torchrun --nproc_per_node 2 with gloo on the CPU: the overlays train G/D and E data-parallel, only rank 0
    writes, and the checkpoints they write resume in a plain single-process run."""
    make_tiny_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    tiny = json.dumps(TINY_SETTINGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage in ("train_generator", "train_encoder"):
        configs = str(config_files(f"{stage}.json", f"multi_gpu_{stage}.json"))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", str(CONFIGS / "metadata.json"),
            "--bundle_root", str(BUNDLE), "--dataset_dir", str(tmp_path / "data"), "--run_dir", str(runs),
            "--settings", tiny,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("generator", "encoder"):
        checkpoints = list_checkpoints(runs / stage / "checkpoints")
        # 0.016 kimg at 4 images per rank and 2 ranks: 2 iterations, counted as 16 images
        assert [n for n, _ in checkpoints] == [2], stage
        state = load_checkpoint(checkpoints[0][1])
        assert state["trainer"]["training"]["nimg"] == 16
        assert not any(k.startswith("module.") for k in state["generator" if stage == "generator" else "encoder"])
    assert len(list((runs / "generator" / "samples").glob("*.png"))) == 1  # rank 0 only
    # the same run goes on in one process from the DDP checkpoint
    settings = {**TINY_SETTINGS, "generator_kimg": 0.032}
    w = workflow("train_generator.json", "train", **{**tiny_overrides(tmp_path / "data", runs), "settings": settings})
    w.run()
    trainer = w.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 + 4 and trainer.nimg == 32


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sheets_and_panels_show_png_data_upright(tmp_path):
    """MONAI reads PNGs as (width, height) arrays: the sample sheets and panels transpose them back for display."""
    from monai_hqanogan.handlers import ReconstructionSampleHandler

    images = torch.zeros(1, 1, 8, 8)
    images[..., 0, :] = 1.0  # the first array row = the first image column when read from a PNG

    class FakeEngine:
        state = type("S", (), {"iteration": 1})()
        encoder = torch.nn.Linear(1, 1)

        @staticmethod
        def reconstruct(x):
            return None, x

    handler = ReconstructionSampleHandler(images, output_dir=tmp_path, transpose=True)
    handler(FakeEngine())
    from PIL import Image

    sheet = np.asarray(Image.open(handler.last_path).convert("L")).astype(float)
    left_column = sheet[:, : sheet.shape[1] // 2]
    assert left_column[:, :2].mean() > left_column[:2, :].mean()  # the bright line is drawn as a column
