"""Experiment tracking for the bundle: MONAI's ``--tracking mlflow`` with this package's step outputs and results.

``python -m monai.bundle run --config_file configs/train_generator.json --tracking mlflow`` appends MONAI's default
``MLFlowHandler`` (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) to ``train#handlers``. Its ``output_transform``
is ``monai.handlers.from_engine(["loss"], first=True)``, written for MONAI's ``SupervisedTrainer``, whose output is
the decollated batch: a list of dicts that each hold the batch's ``loss``. The trainers of this package
(:class:`~monai_hqanogan.engines.StyleGAN2Trainer`, :class:`~monai_hqanogan.engines.EncoderTrainer`) output one
dict of floats per iteration (``loss/G``, ``loss/D``, ``ada/p``, ... and ``loss/E``, ``loss/l2``, ...): a
``from_engine`` selection raises ``KeyError`` on it (no ``loss`` key), and would return a tuple, which MLflow cannot
log, even if there were one. :func:`log_step_outputs` points such handlers at the whole dict instead, which
``MLFlowHandler`` logs key by key, so every loss, ADA's ``p`` and the progress in kimg reach MLflow.

Calibration and evaluation are not ignite loops: they compute their results in one call. MONAI's tracking settings
add their handler to the ``handlers`` of a config's ``evaluator`` (``monai.bundle.utils.DEFAULT_HANDLERS_ID``), so
``calibrate.json`` and ``evaluate.json`` name a :class:`ResultsPublisher` ``evaluator``: an ignite engine of one
iteration that hands the finished step's numbers to those handlers as ``engine.state.metrics``, its text choices as
parameters and its report files as artifacts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import MLFlowHandler

__all__ = ["ResultsPublisher", "flatten_results", "log_step_outputs", "step_output_scalars"]


def step_output_scalars(output: Any) -> dict[str, float] | None:
    """The scalars of a trainer's step output, for ``MLFlowHandler(output_transform=...)``.

    Args:
        output: ``engine.state.output`` of this package's trainers: a dict of floats (None before the first step).

    Returns:
        a dict of the float and int entries of ``output`` (MLflow logs one metric per key), or None (nothing to
        log) when ``output`` is not a mapping.
    """
    if not isinstance(output, Mapping):
        return None
    return {str(k): float(v) for k, v in output.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_from_engine_selection(transform: Any) -> bool:
    """Whether ``transform`` was made by ``monai.handlers.from_engine`` (a closure named ``from_engine.<locals>``)."""
    return getattr(transform, "__qualname__", "").startswith("from_engine.")


def log_step_outputs(handlers: Iterable[Any]) -> list[MLFlowHandler]:
    """Make the ``MLFlowHandler`` objects among a trainer's handlers log the trainer's dict of step outputs.

    A handler whose ``output_transform`` is a ``monai.handlers.from_engine`` selection (MONAI's default for
    ``--tracking mlflow``: ``from_engine(["loss"], first=True)``, which needs a decollated list with a ``loss``
    key) gets :func:`step_output_scalars` instead. Handlers with any other ``output_transform`` are kept as they
    are: a user who wrote one for this package's dict outputs chose what to log. Other handlers are not touched.
    The bundle's train configs call this in ``run``, before the trainer runs, so that it applies to the handler
    that ``--tracking mlflow`` adds (and does nothing without one).

    Args:
        handlers: the trainer's handlers (``train#handlers`` in the train configs).

    Returns:
        the ``MLFlowHandler`` objects whose ``output_transform`` was replaced.
    """
    changed = []
    for handler in handlers:
        if isinstance(handler, MLFlowHandler) and _is_from_engine_selection(handler.output_transform):
            handler.output_transform = step_output_scalars
            changed.append(handler)
    return changed


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """Split a nested results dict into metrics and parameters, with ``/``-joined keys.

    Args:
        results: a JSON-like dict (a calibration or evaluation report): nested dicts are walked; lists and
            ``None`` are left out.
        prefix: put before every key.

    Returns:
        ``(metrics, params)``: the finite numbers (booleans and NaN or inf are left out: a missing value is not a
        number to plot) and the strings, e.g. ``{"test/HQ-AnoGAN/image_auroc": 0.88}`` and ``{"score": "map_max"}``.
    """
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            sub_metrics, sub_params = flatten_results(value, f"{name}/")
            metrics.update(sub_metrics)
            params.update(sub_params)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                metrics[name] = float(value)
        elif isinstance(value, str):
            params[name] = value
    return metrics, params


class ResultsPublisher(Engine):
    """An ignite engine of one iteration that gives a finished step's results to ignite handlers.

    The bundle's ``calibrate.json`` and ``evaluate.json`` compute their results in one call, not in an ignite loop,
    so ``--tracking mlflow`` had no engine to attach MONAI's ``MLFlowHandler`` to. Named ``evaluator`` in those
    configs, with ``handlers`` as its ``val_handlers`` (the ids of ``monai.bundle.utils.DEFAULT_HANDLERS_ID``), this
    engine receives that handler; :meth:`publish` then runs one iteration whose ``engine.state.metrics`` are the
    results' numbers, so the handler logs them as metrics at the end of the epoch, like an evaluator's, and closes
    its run. Without handlers (no ``--tracking``) publishing does nothing but return the results.

    Args:
        val_handlers: ignite handlers with ``attach(engine)`` (MONAI's handlers), attached here; named as MONAI's
            evaluators name theirs.
    """

    def __init__(self, val_handlers: Sequence[Any] | None = None) -> None:
        super().__init__(self._publish_step)
        self.handlers = list(val_handlers or [])
        self._metrics: dict[str, float] = {}
        for handler in self.handlers:
            handler.attach(self)

    def _publish_step(self, engine: Engine, batch: Any) -> dict[str, float]:
        engine.state.metrics.update(self._metrics)
        return dict(self._metrics)

    def publish(self, results: Mapping[str, Any], artifacts: Iterable[str | os.PathLike] = ()) -> Mapping[str, Any]:
        """Give ``results`` to the handlers: numbers as metrics, strings as MLflow parameters, ``artifacts`` as files.

        Args:
            results: a nested dict of results (see :func:`flatten_results`).
            artifacts: files an ``MLFlowHandler`` stores with the run, next to the executed config.

        Returns:
            ``results``, unchanged.
        """
        if not self.handlers:
            return results
        self._metrics, params = flatten_results(results)
        files = [str(path) for path in artifacts if path is not None and Path(path).is_file()]
        for handler in self.handlers:
            if isinstance(handler, MLFlowHandler):
                handler.experiment_param = {**(handler.experiment_param or {}), **params}
                handler.artifacts = (*handler.artifacts, *files)
        self.run([0], max_epochs=1, epoch_length=1)
        return results

    def publish_report(self, paths: Mapping[str, str | os.PathLike]) -> Mapping[str, str | os.PathLike]:
        """Publish an evaluation's report: the metrics of its ``report.json``, every written file as an artifact.

        Args:
            paths: what :func:`~monai_hqanogan.workflows.evaluate_detector` returns (``"json"``: the report).

        Returns:
            ``paths``, unchanged.
        """
        if self.handlers:
            report = json.loads(Path(paths["json"]).read_text())
            self.publish(report["metrics"], artifacts=paths.values())
        return paths
