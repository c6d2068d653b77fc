"""tqdm progress bars for ignite engines: training counted in thousands of images (kimg), as GAN training is, and
any engine counted in iterations (the files of a folder inference)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.utils import IgniteInfo, min_version, optional_import
from tqdm.auto import tqdm

from monai_hqanogan.engines.distributed import is_main_process

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["KimgProgressBar", "EngineProgressBar"]


class _EngineBar:
    """What the bars share: a tqdm bar opened by ``open`` at ``STARTED``, moved by ``update`` after each iteration,
    closed at ``COMPLETED`` and on an error, which is raised again."""

    bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_and_reraise)

    def _close_and_reraise(self, engine: Engine, e: Exception) -> None:
        # ignite swallows an exception once any EXCEPTION_RAISED handler exists, unless the handler re-raises it
        self.close(engine)
        raise e

    def open(self, engine: Engine) -> None:
        raise NotImplementedError

    def update(self, engine: Engine) -> None:
        raise NotImplementedError

    def close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class KimgProgressBar(_EngineBar):
    """Show training progress in kimg with the latest values of a few outputs.

    Under ``torch.distributed`` only rank 0 shows a bar (the kimg count is global there), so the handler can be
    attached on every rank.

    Args:
        total_kimg: length of the bar; None takes ``engine.total_kimg`` or estimates it from ``max_epochs``,
            ``epoch_length`` and the data loader's batch size.
        keys: keys of ``engine.state.output`` shown after the bar.
        kimg_attr: engine attribute counting kimg.
        disable: hide the bar (None: hide it when the output is not a terminal, as tqdm decides).
    """

    def __init__(
        self,
        total_kimg: float | None = None,
        keys: Sequence[str] = ("loss/G", "loss/D", "ada/p"),
        kimg_attr: str = "kimg",
        disable: bool | None = None,
    ) -> None:
        self.total_kimg, self.keys, self.kimg_attr, self.disable = total_kimg, tuple(keys), kimg_attr, disable
        self.bar: tqdm | None = None
        self._shown = 0.0

    def _total(self, engine: Engine) -> float | None:
        if self.total_kimg is not None:
            return self.total_kimg
        if getattr(engine, "total_kimg", None) is not None:
            return engine.total_kimg
        batch = getattr(getattr(engine, "data_loader", None), "batch_size", None)
        if batch and engine.state.epoch_length and engine.state.max_epochs:
            world = getattr(engine, "world_size", 1)  # a distributed trainer counts the global batch
            return engine.state.max_epochs * engine.state.epoch_length * batch * world / 1000
        return None

    def open(self, engine: Engine) -> None:
        if not is_main_process():
            return
        self._shown = float(getattr(engine, self.kimg_attr, 0.0))
        total = self._total(engine)
        self.bar = tqdm(
            total=None if total is None else round(total, 3),
            initial=round(self._shown, 3),
            unit="kimg",
            desc="training",
            disable=self.disable,
            bar_format="{l_bar}{bar}| {n:.3f}/{total_fmt} kimg [{elapsed}<{remaining}{postfix}]",
        )

    def update(self, engine: Engine) -> None:
        if self.bar is None:
            return
        kimg = float(getattr(engine, self.kimg_attr, 0.0))
        self.bar.update(round(kimg - self._shown, 6))
        self._shown = kimg
        out = engine.state.output if isinstance(engine.state.output, dict) else {}
        shown = {k.split("/")[-1]: f"{out[k]:.3g}" for k in self.keys if k in out}
        if shown:
            self.bar.set_postfix(shown, refresh=False)


class EngineProgressBar(_EngineBar):
    """Show an engine's progress in iterations, e.g. the files of a folder inference (one file per iteration at batch
    size 1), with the time left.

    The bar goes to stderr and, with the default ``disable=None``, only shows when stderr is a terminal (as tqdm
    decides; :func:`~monai_hqanogan.utils.progress_disable` turns the bundles' ``progress`` switch into ``disable``).
    Under ``torch.distributed`` only rank 0 shows a bar. An error closes the bar and is raised again; ignite stops at
    the first ``EXCEPTION_RAISED`` handler that raises, so attach the bar after handlers whose own error handling
    must run (e.g. :class:`~monai_hqanogan.workflows.InferenceOutputFolder`, which discards a failed run's files).

    Args:
        desc: the bar's label.
        unit: what one iteration is.
        disable: hide the bar (None: hide it when the output is not a terminal, as tqdm decides).
    """

    def __init__(self, desc: str = "inference", unit: str = "file", disable: bool | None = None) -> None:
        self.desc, self.unit, self.disable = desc, unit, disable
        self.bar: tqdm | None = None

    def open(self, engine: Engine) -> None:
        self.close(engine)  # a bar left by an earlier run of the engine
        if not is_main_process():
            return
        length, epochs = engine.state.epoch_length, engine.state.max_epochs
        self.bar = tqdm(
            total=length * epochs if length and epochs else None,
            initial=engine.state.iteration,
            desc=self.desc,
            unit=self.unit,
            disable=self.disable,
            leave=False,
        )

    def update(self, engine: Engine) -> None:
        if self.bar is None:
            return
        self.bar.update(engine.state.iteration - self.bar.n)
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            self.close(engine)  # before ignite's "Epoch[...] Complete" log line, which would follow the bar's text
