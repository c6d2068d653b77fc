"""Resumable, crash-safe training checkpoints as one ignite handler.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), so a crash while saving can leave a broken newest
file. This handler writes each checkpoint to a temporary file and renames it, keeps the last ``n_saved``, and on
start resumes from the newest one found in ``save_dir``: running the same command again continues the run.
The files are plain dicts of state dicts, so MONAI's ``CheckpointLoader`` reads them too.

Under data-parallel training every rank resumes from the same file and only rank 0 writes (see the class).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.engines.distributed import any_rank, check_same_on_all_ranks, distributed_world
from monai_hqanogan.utils.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint_atomic,
)

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["TrainingCheckpointHandler"]


class TrainingCheckpointHandler:
    """Save ``{prefix}_iteration={n}.pt`` atomically every ``save_interval`` epochs and at the end; resume on start.

    At ``STARTED``: if ``save_dir`` holds checkpoints and ``resume`` is True, the newest is loaded (with
    ``weights_only=True``) into ``save_dict``; if ``resume`` is False the run refuses to start rather than mix
    with or overwrite the earlier run. A newest file that cannot be loaded gives a clear error naming it and
    the previous usable checkpoint; nothing is deleted but the temporary files that a process killed while saving
    left behind (``.{prefix}_iteration={n}.pt.*.tmp.pt``, never a complete checkpoint).

    Saving at epoch ends makes resumption exact: N steps straight equal N/2 steps, save, resume, N/2 steps,
    provided N/2 is a whole number of epochs (the data order of a new epoch depends only on the restored RNG).

    Data-parallel training (an engine whose ``distributed`` attribute is True, or, for other engines, a
    ``torch.distributed`` process group of more than one rank): ``save_dir`` must be a directory all ranks see
    (a shared file system). Every rank resumes from the same newest file (the ranks check that they found the
    same one); only rank 0 writes and deletes files. Both are collective: after ``save`` returns, the file exists
    for every rank, and a failure on one rank (a refused directory, a broken file, a full disk) raises on all ranks
    instead of leaving the others waiting. Saving on an exception is the exception: it is local (rank 0 writes if
    it is the rank that failed), since the other ranks may be anywhere in their step. The checkpoint holds rank
    0's replicas, which equal every other rank's, with the same keys as a single-process checkpoint.

    Args:
        save_dir: directory of the run's checkpoints.
        save_dict: name -> object with ``state_dict``/``load_state_dict``; None uses
            ``engine.checkpoint_dict()`` (``StyleGAN2Trainer`` provides it).
        save_interval: save every this many epochs (0: only at the end).
        n_saved: how many recent checkpoints to keep (at least 1; 2 keeps a fallback).
        resume: resume from the newest checkpoint in ``save_dir`` (True) or refuse a non-empty ``save_dir``.
        file_prefix: file name prefix.
        map_location: ``torch.load`` map location when resuming (default: the engine's device).
        save_on_exception: also save when the run stops on an exception. Off by default: the last periodic
            checkpoint is the last known-good state.
        keep_optimizer_settings: when resuming, keep the optimisers' hyperparameters (learning rate, betas, ...) as
            constructed instead of as saved, so that a resumed run follows the current configuration (a learning
            rate lowered after a divergence takes effect); their state (Adam's moments, steps) is restored. With
            an unchanged configuration resuming stays exact.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any] | None = None,
        save_interval: int = 1,
        n_saved: int = 2,
        resume: bool = True,
        file_prefix: str = "checkpoint",
        map_location: Any = None,
        save_on_exception: bool = False,
        keep_optimizer_settings: bool = True,
    ) -> None:
        if n_saved < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval}.")
        self.save_dir = Path(save_dir)
        self.save_dict = save_dict
        self.save_interval, self.n_saved, self.resume = save_interval, n_saved, resume
        self.file_prefix, self.map_location = file_prefix, map_location
        self.save_on_exception = save_on_exception
        self.keep_optimizer_settings = keep_optimizer_settings
        self.logger = logging.getLogger(self.__class__.__name__)
        self.last_saved_iteration: int | None = None
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.resume_or_check)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        if self.save_on_exception:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._save_and_reraise)

    def _save_and_reraise(self, engine: Engine, e: Exception) -> None:
        # ignite swallows an exception once any EXCEPTION_RAISED handler exists, unless the handler re-raises it;
        # no collective here: the other ranks may be anywhere in their step
        self._save(engine, collective=False)
        raise e

    @staticmethod
    def _distributed(engine: Engine) -> bool:
        flag = getattr(engine, "distributed", None)
        return bool(flag) if flag is not None else distributed_world()[1] > 1

    def _raise_together(self, engine: Engine, error: BaseException | None, what: str) -> None:
        """Distributed: raise on every rank when ``what`` failed on any. Otherwise raise ``error`` if any."""
        if self._distributed(engine) and any_rank(error is not None, engine.state.device) and error is None:
            raise RuntimeError(f"{what} failed on another rank; see that rank's error.")
        if error is not None:
            raise error

    def _objects(self, engine: Engine) -> Mapping[str, Any]:
        if self.save_dict is not None:
            return self.save_dict
        if not hasattr(engine, "checkpoint_dict"):
            raise TypeError("save_dict is None and the engine has no checkpoint_dict(): pass save_dict explicitly.")
        return engine.checkpoint_dict()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files that an interrupted save left in ``save_dir`` (the process was killed between
        creating the file and renaming it); returns them. A complete checkpoint is never a temporary file."""
        if not self.save_dir.is_dir():
            return []
        pattern = re.compile(rf"^\.{re.escape(self.file_prefix)}_iteration=\d+\.pt\..+\.tmp\.pt$")
        stale = [p for p in self.save_dir.iterdir() if pattern.match(p.name) and p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
            self.logger.info(f"removed {path.name}, left by an interrupted save")
        return stale

    def resume_or_check(self, engine: Engine) -> None:
        if not self._distributed(engine) or distributed_world()[0] == 0:
            self.remove_stale_temporaries()
        found = list_checkpoints(self.save_dir, self.file_prefix)
        if self._distributed(engine):
            newest = found[-1][0] if found else -1
            what = f"the newest checkpoint in {str(self.save_dir)!r} (iteration; -1: none)"
            check_same_on_all_ranks({what: newest}, engine.state.device)
            error: BaseException | None = None
            try:
                self._resume(engine, found)
            except Exception as e:
                error = e
            self._raise_together(engine, error, "resuming from the checkpoint")
        else:
            self._resume(engine, found)

    def _resume(self, engine: Engine, found: list) -> None:
        if not found:
            return
        newest = found[-1][1]
        if not self.resume:
            raise FileExistsError(
                f"{str(self.save_dir)!r} already holds checkpoints of an earlier run (newest: {newest.name}); "
                "set resume=True to continue it, or choose an empty directory. Nothing was overwritten."
            )
        try:
            checkpoint = load_checkpoint(newest, map_location=self.map_location or engine.state.device)
        except CheckpointError as e:
            previous = [p.name for _, p in found[:-1]]
            hint = f" The previous checkpoint {previous[-1]!r} is intact" if previous else " No older checkpoint exists"
            raise CheckpointError(f"{e}{hint}; move the broken file away to resume from it.") from e
        self.load_into(checkpoint, engine, source=newest)
        self.resumed_from = newest
        self.last_saved_iteration = engine.state.iteration
        if distributed_world()[0] == 0:
            self.logger.info(f"resumed from {newest} (iteration {engine.state.iteration}, epoch {engine.state.epoch})")

    def load_into(self, checkpoint: Mapping[str, Any], engine: Engine, source: Path | str = "checkpoint") -> None:
        """Load ``checkpoint`` into the objects; the trainer's own state goes last so that its RNG restore wins."""
        objects = self._objects(engine)
        missing = [k for k in objects if k not in checkpoint]
        if missing:
            raise CheckpointError(f"checkpoint {str(source)!r} lacks {missing}; it holds {sorted(checkpoint)}.")
        for name in sorted(objects, key=lambda k: objects[k] is engine):
            target = objects[name]
            configured = None
            if self.keep_optimizer_settings and isinstance(target, torch.optim.Optimizer):
                configured = [{k: v for k, v in group.items() if k != "params"} for group in target.param_groups]
            try:
                target.load_state_dict(checkpoint[name])
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(
                    f"checkpoint {str(source)!r}: '{name}' does not fit the current model or settings: {e}"
                ) from e
            if configured is not None:
                self._keep_settings(name, target, configured)

    def _keep_settings(self, name: str, optimizer: torch.optim.Optimizer, configured: list[dict[str, Any]]) -> None:
        changed = []
        for group, settings in zip(optimizer.param_groups, configured):
            for key, value in settings.items():
                saved = group.get(key)
                if not _same(saved, value):
                    changed.append(f"{key} {value} (checkpoint: {saved})")
                group[key] = value
        if changed and distributed_world()[0] == 0:
            self.logger.info(f"{name}: the configured {', '.join(changed)} replaces the checkpoint's")

    def save(self, engine: Engine) -> Path | None:
        """Write the checkpoint of the current iteration (rank 0 only when distributed; collective there) and drop
        the oldest beyond ``n_saved``. Returns the path written, or None (nothing new, or not rank 0)."""
        return self._save(engine, collective=True)

    def _save(self, engine: Engine, collective: bool) -> Path | None:
        it = engine.state.iteration
        if it == self.last_saved_iteration:
            return None  # e.g. the end of the run coincides with an epoch end, or nothing ran after resuming
        distributed = self._distributed(engine)
        writes = not distributed or distributed_world()[0] == 0
        path: Path | None = None
        error: BaseException | None = None
        if writes:
            try:
                path = self._write(engine, it)
            except Exception as e:
                if not (distributed and collective):
                    raise
                error = e
        if distributed and collective:
            self._raise_together(engine, error, f"saving the checkpoint of iteration {it}")
        self.last_saved_iteration = it
        return path

    def _write(self, engine: Engine, it: int) -> Path:
        objects = self._objects(engine)
        path = self.save_dir / f"{self.file_prefix}_iteration={it}.pt"
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {str(path)!r} written by another run.")
        save_checkpoint_atomic({k: v.state_dict() for k, v in objects.items()}, path)
        self.last_saved_iteration = it
        for _, old in list_checkpoints(self.save_dir, self.file_prefix)[: -self.n_saved]:
            old.unlink(missing_ok=True)
        self.logger.info(f"saved {path}")
        return path


def _same(a: Any, b: Any) -> bool:
    """Whether two optimiser hyperparameters (floats, tuples, bools or tensors) are equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool(torch.equal(torch.as_tensor(a).double(), torch.as_tensor(b).double()))
        except (TypeError, RuntimeError, ValueError):
            return False
    return bool(a == b)
