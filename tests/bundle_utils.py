"""Shared pieces of the bundle tests: a tiny prepared dataset and settings for tiny networks (not a test module)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_anomaly_hqanogan"


def config_files(config: str, *overlays: str) -> list[str]:
    """The ``config_file`` list that runs ``config`` of the bundle (``configs/common.json`` first, but for
    ``inference.json``), then ``overlays``."""
    from monai_hqanogan.workflows import bundle_config_files

    return bundle_config_files(BUNDLE, config, *overlays)


#: a tiny model and a few iterations: each step of the bundle runs in seconds on the CPU
TINY_SETTINGS = {
    "resolution": 16,
    "z_dim": 16,
    "w_dim": 16,
    "mapping_layers": 1,
    "channel_base": 64,
    "channel_max": 16,
    "encoder_base_channels": 8,
    "encoder_max_channels": 16,
    "batch_size": 4,
    "generator_lr": 0.002,
    "generator_kimg": 0.016,
    "encoder_lr": 0.001,
    "encoder_kimg": 0.016,
    "checkpoint_epochs": 1,
    "sample_epochs": 1,
    "amp": False,
    "num_workers": 0,
    "autoencoder_seconds": 5,
    "autoencoder_epochs": 1,
}


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_tiny_dataset(root: Path, height: int = 24, width: int = 20) -> Path:
    """A prepared dataset like ``monai_hqanogan.data.prepare`` writes: grey PNGs (not square, to exercise the
    padding) and a ``datalist.json`` with every list the bundle reads. Returns the datalist path."""
    size = max(height, width)
    normal = make_ellipse_images(32, size, seed=0, inner=True)
    lesioned, masks = add_synthetic_lesions(normal[24:], seed=1, contrast_range=(0.6, 1.0), radius_range=(0.15, 0.3))

    def crop(t):  # [1, S, S] in [-1, 1] -> uint8 [H, W]
        return ((t[0, :height, :width].numpy() + 1) * 127.5).clip(0, 255)

    lists: dict[str, list] = {k: [] for k in ("training", "validation", "test")}
    lists.update(localisation_validation=[], localisation_test=[])
    for i in range(32):
        split = "training" if i < 16 else "validation" if i < 20 else "test" if i < 24 else None
        if split is None:
            continue
        _save_png(crop(normal[i]), root / "images" / f"normal_{i}.png")
        lists[split].append({"image": f"images/normal_{i}.png", "label": 0, "group": i})
        if split != "training":  # as prepare does: the synthetic-lesion sets hold normal slices too
            lists[f"localisation_{split}"].append({"image": f"images/normal_{i}.png", "label": 0, "group": i})
    for j in range(8):
        split = "validation" if j < 4 else "test"
        _save_png(crop(lesioned[j]), root / "images" / f"lesion_{j}.png")
        _save_png(masks[j, 0, :height, :width].numpy() * 255, root / "masks" / f"lesion_{j}.png")
        lists[split].append({"image": f"images/lesion_{j}.png", "label": 1, "group": 100 + j})
        lists[f"localisation_{split}"].append(
            {"image": f"images/lesion_{j}.png", "mask": f"masks/lesion_{j}.png", "label": 1, "group": 100 + j}
        )
    lists["info"] = {"source": "tests/bundle_utils.py"}
    path = root / "datalist.json"
    path.write_text(json.dumps(lists, indent=1))
    return path


def tiny_overrides(dataset_dir: Path, run_dir: Path, **extra) -> dict:
    """ConfigWorkflow keyword overrides: tiny settings, the tiny dataset and a temporary run folder."""
    return {"settings": dict(TINY_SETTINGS), "dataset_dir": str(dataset_dir), "run_dir": str(run_dir), **extra}


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder``, dot files too (relative path -> SHA-256); empty for a folder that does not
    exist. Tests compare it before and after a refused run: nothing may change."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def error_chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and its causes (MONAI's bundle runner wraps errors), at most 20."""
    out = []
    while err is not None and len(out) < 20:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def error_messages(err: BaseException | None) -> str:
    """The ``Type: message`` lines of ``err`` and its causes."""
    return "\n".join(f"{type(e).__name__}: {e}" for e in error_chain(err))


def assert_clear(err: BaseException, kind: type, pattern: str) -> None:
    """``err`` or one of its causes is a ``kind`` whose message matches ``pattern``."""
    found = [e for e in error_chain(err) if isinstance(e, kind) and re.search(pattern, str(e), re.S)]
    assert found, f"no {kind.__name__} matching {pattern!r} in:\n{error_messages(err)}"


def tiny_detector():
    """A calibrated tiny detector built from the bundle's ``inference.json`` with :data:`TINY_SETTINGS` (its untrained
    encoder's heads are re-drawn so that the codes depend on the image)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "settings": dict(TINY_SETTINGS)})
    torch.manual_seed(0)
    det = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for head in det.encoder.heads:
            head.linear.weight.normal_()
    normal = make_ellipse_images(16, 16, seed=1)
    det.calibrate(normal[:8], normal[8:])
    return det.eval()


def tiny_model_runs(runs: Path) -> Path:
    """``runs`` holding ``models/model.pt``: :func:`tiny_detector` as ``calibrate.json`` exports it."""
    from monai_hqanogan.workflows import export_detector

    export_detector(tiny_detector(), Path(runs) / "models" / "model.pt")
    return Path(runs)


def run_tiny_inference(runs: Path, source: Path, out: Path, **extra) -> None:
    """The bundle's ``inference.json`` with the tiny settings and the model of ``runs``: initialize (the checks of
    every input, before any work) and run."""
    import logging

    from monai.bundle import ConfigWorkflow

    logging.disable(logging.WARNING)
    try:
        w = ConfigWorkflow(
            config_file=str(BUNDLE / "configs" / "inference.json"),
            workflow_type="infer",
            bundle_root=str(BUNDLE),
            **tiny_overrides(Path(runs) / "no_dataset", runs),
            input=str(source),
            output_dir=str(out),
            **extra,
        )
        w.initialize()
        w.run()
    finally:
        logging.disable(logging.NOTSET)


def record_main_job_steps(monkeypatch) -> dict[str, list[str]]:
    """Replace the main job's ``monai.bundle run`` subprocesses by a recorder, so that no step runs: the dict it returns
    fills with step name -> that step's latest command line."""
    import ast
    import subprocess

    from monai_hqanogan.workflows.main_job import STAGES

    commands: dict[str, list[str]] = {}

    def record(command, check=False):
        files = ast.literal_eval(command[command.index("--config_file") + 1])  # common.json, then the step's config
        config = Path(files[-1]).name
        commands[next(s for s, c in STAGES.items() if c == config)] = command
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", record)
    return commands


def load_benchmark(name: str, suffix: str = "benchmark"):
    """``benchmarks/<name>.py`` imported as the module ``<name>_<suffix>`` (registered in ``sys.modules``, where
    dataclasses look their module up)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{name}_{suffix}", BUNDLE.parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
