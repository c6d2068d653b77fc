"""Experiment tracking for the bundle's trainers: MONAI's ``--tracking mlflow`` with this package's step outputs.

``python -m monai.bundle run --config_file configs/train_generator.json --tracking mlflow`` appends MONAI's default
``MLFlowHandler`` (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) to ``train#handlers``. Its ``output_transform``
is ``monai.handlers.from_engine(["loss"], first=True)``, written for MONAI's ``SupervisedTrainer``, whose output is
the decollated batch: a list of dicts that each hold the batch's ``loss``. The trainers of this package
(:class:`~monai_hqanogan.engines.StyleGAN2Trainer`, :class:`~monai_hqanogan.engines.EncoderTrainer`) output one
dict of floats per iteration (``loss/G``, ``loss/D``, ``ada/p``, ... and ``loss/E``, ``loss/l2``, ...): a
``from_engine`` selection raises ``KeyError`` on it (no ``loss`` key), and would return a tuple, which MLflow cannot
log, even if there were one. :func:`log_step_outputs` points such handlers at the whole dict instead, which
``MLFlowHandler`` logs key by key, so every loss, ADA's ``p`` and the progress in kimg reach MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["log_step_outputs", "step_output_scalars"]


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
