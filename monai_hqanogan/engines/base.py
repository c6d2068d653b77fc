"""What the GAN and encoder trainers share: a MONAI ``Trainer`` that counts images (kimg), validates every batch,
stops on non-finite losses before any optimiser step, checkpoints its progress together with the RNG states, and
trains data-parallel over the ranks of an initialised ``torch.distributed`` process group."""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from monai_hqanogan.engines.distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    broadcast_module,
    check_same_on_all_ranks,
    distributed_world,
    split_rng_streams,
)
from monai_hqanogan.transforms.array import ensure_finite
from monai_hqanogan.utils.checkpoint import get_rng_states, set_rng_states
from monai_hqanogan.utils.validation import check_image_batch

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["KimgTrainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN or inf. Raised before the optimiser step, so no weight was changed."""


def bfloat16_autocast_available(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast pays on ``device``: always on CUDA; on the CPU only where oneDNN has native
    bfloat16 kernels (AVX512-BF16 or AMX), since emulated bfloat16 convolutions are slower than float32 ones."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class KimgTrainer(Trainer):
    """Base trainer: progress in images (``nimg``, ``kimg``), optional stop at ``total_kimg``, bfloat16 autocast,
    channels-last convolutions, checked image batches, resumable state and data parallelism. Subclasses implement
    ``_iteration`` and may add state through ``_extra_state`` / ``_load_extra_state`` and the objects of
    ``checkpoint_dict``.

    Data parallelism (``distributed``): every rank holds a plain replica of the networks (no
    ``DistributedDataParallel`` wrapper, so checkpoints have the same keys as single-process ones) and trains on its
    own shard of the data. Give the loader a ``DistributedSampler``: MONAI's ``Workflow`` calls its ``set_epoch``
    at every epoch start, and this trainer does the same for one inside a ``batch_sampler``; every rank must have
    the same number of batches per epoch. At the first epoch start of each run, after every ``STARTED`` handler
    (and so after a checkpoint was resumed), the ranks check that they agree on the progress counters and take the
    replicas' parameters and buffers from rank 0; at every epoch start each rank > 0 derives its own random stream
    from rank 0's (:func:`split_rng_streams`). In each step the gradients are averaged over the ranks before the
    finite check and the optimiser step, running statistics are averaged, and ``nimg`` counts the global batch,
    so ``total_kimg`` means what it means in a single process. Subclasses declare their replicas in
    ``_replicated_modules`` and their running statistics in ``_running_statistics``.

    Args:
        device: device to train on.
        max_epochs: passes over ``train_data_loader`` (training also stops at ``total_kimg`` if given).
        train_data_loader: batches of images [B, C, R, R]: dicts (``image_key``), tensors, or tuples whose first
            element is the images.
        img_channels: channels every batch must have.
        resolution: height and width every batch must have.
        total_kimg: stop after this many thousand images (None: run ``max_epochs``).
        max_seconds: a wall-clock budget for this run, checked before each batch: training stops cleanly (the
            checkpoint handlers save as at any end of a run, and running again resumes) once this many seconds have
            passed since the run started (None: no limit). Counted per run, not across resumes; ``stopped_by`` then
            says ``"max_seconds"``. With data parallelism the ranks stop together at the slowest rank's clock.
        image_key: key of the images when batches are dicts.
        amp: bfloat16 autocast (no loss scaling needed) on CUDA, and on CPUs with native bfloat16 kernels
            (:func:`bfloat16_autocast_available`; about 2x faster convolutions there); float32 elsewhere, with a
            warning. Mixed precision changes the results beyond float noise: it is an opt-in speed setting.
        channels_last: run the networks and image batches in the channels-last memory format, which oneDNN's
            (CPU) and cuDNN's convolutions prefer. The values are the same up to float rounding; ``False`` keeps
            the contiguous layout.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: kept for MONAI compatibility (batches are parsed by ``_get_real_images``).
        train_handlers: MONAI/ignite handlers (objects with ``attach(engine)``).
        event_names: extra ignite events to register.
        to_kwargs: extra arguments of ``Tensor.to`` when moving batches.
        distributed: train data-parallel over the ranks of the default ``torch.distributed`` process group.
            None (default): when it is initialised with more than one rank, checked again when ``run`` starts;
            True: require an initialised process group; False: never (each process trains on its own).

    Raises:
        ValueError: for ``distributed=True`` without an initialised process group.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        img_channels: int,
        resolution: int,
        total_kimg: float | None = None,
        max_seconds: float | None = None,
        image_key: str = "image",
        amp: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        to_kwargs: dict | None = None,
        distributed: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        if isinstance(train_data_loader, DataLoader) and hasattr(train_data_loader.dataset, "__len__"):
            n = len(train_data_loader.dataset)  # type: ignore[arg-type]
            if n == 0:
                raise ValueError("the training dataset is empty: give at least one normal image.")
            if len(train_data_loader) == 0:
                raise ValueError(
                    f"the training data loader yields no batch: {n} images with "
                    f"batch_size={train_data_loader.batch_size} and drop_last=True."
                )
        if total_kimg is not None and not (
            isinstance(total_kimg, numbers.Real)
            and not isinstance(total_kimg, bool)
            and math.isfinite(total_kimg)
            and total_kimg > 0
        ):
            raise ValueError(f"total_kimg must be positive (thousands of images), got {total_kimg!r}.")
        if max_seconds is not None and not (
            isinstance(max_seconds, numbers.Real) and not isinstance(max_seconds, bool) and max_seconds >= 0
            and not math.isnan(max_seconds)
        ):  # fmt: skip
            raise ValueError(f"max_seconds must be a number of seconds >= 0, got {max_seconds!r}.")
        # MONAI's own amp path builds a CUDA GradScaler; bfloat16 autocast needs none, so amp is handled here.
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=False,
            event_names=event_names,
            decollate=False,
            to_kwargs=to_kwargs,
        )
        self.img_channels, self.resolution = img_channels, resolution
        self.total_kimg = total_kimg
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.stopped_by: str | None = None
        self._run_started = time.perf_counter()
        self.image_key = image_key
        self.use_amp = bool(amp) and bfloat16_autocast_available(self.state.device)
        if amp and not self.use_amp:
            warnings.warn(
                f"amp=True: bfloat16 autocast has no native kernels on {self.state.device} here (the CPU lacks "
                "AVX512-BF16/AMX), so training runs in float32.",
                stacklevel=2,
            )
        self.channels_last = bool(channels_last)
        self.nimg = 0
        self._distributed_arg = distributed
        self.distributed, self.rank, self.world_size = False, 0, 1
        self._resolve_distributed()
        self._replicas_synced = False
        # checked before each batch is fetched: a run resumed at or past total_kimg does no extra iteration
        self.add_event_handler(Events.GET_BATCH_STARTED, self._stop_at_total_kimg)
        self.add_event_handler(Events.STARTED, self._mark_replicas_unsynced)
        self.add_event_handler(Events.STARTED, self._start_clock)
        self.add_event_handler(Events.EPOCH_STARTED, self._sync_replicas)
        # MONAI's Workflow reshuffles a DistributedSampler given as the loader's sampler; one wrapped in a batch
        # sampler needs the same call, or every epoch would repeat the first epoch's order
        inner = getattr(getattr(train_data_loader, "batch_sampler", None), "sampler", None)
        if isinstance(inner, DistributedSampler) and inner is not getattr(train_data_loader, "sampler", None):
            self.add_event_handler(Events.EPOCH_STARTED, lambda engine: inner.set_epoch(engine.state.epoch))

    # ------------------------------------------------------------------ data parallelism
    def _resolve_distributed(self) -> None:
        """Set ``distributed``, ``rank`` and ``world_size`` from the argument and the default process group."""
        rank, world = distributed_world()
        if self._distributed_arg is True and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group: call "
                "torch.distributed.init_process_group (torchrun sets the environment) before building the trainer."
            )
        use = world > 1 if self._distributed_arg is None else bool(self._distributed_arg)
        self.distributed = use
        self.rank, self.world_size = (rank, world) if use else (0, 1)

    def run(self) -> None:  # type: ignore[override]
        """Train (see MONAI's ``Trainer.run``); with ``distributed=None`` the process group is looked at again."""
        if self._distributed_arg is None:
            self._resolve_distributed()
        super().run()

    def _replicated_modules(self) -> dict[str, nn.Module]:
        """Name -> module whose parameters and buffers must be equal on every rank (taken from rank 0)."""
        return {}

    def _replicated_counters(self) -> dict[str, int]:
        """Name -> integer every rank must agree on when training starts."""
        return {"iteration": int(self.state.iteration), "epoch": int(self.state.epoch), "nimg": int(self.nimg)}

    def _running_statistics(self) -> list[torch.Tensor]:
        """Buffers that each rank updates from its own share of the batch and that are averaged after each step."""
        return []

    def _mark_replicas_unsynced(self, engine: Trainer) -> None:
        self._replicas_synced = False

    def _sync_replicas(self, engine: Trainer) -> None:
        """At the first epoch start of a run (after all ``STARTED`` handlers, checkpoint loading included): check the
        counters agree and take every replica from rank 0. At every epoch start: split the random streams."""
        if not self.distributed:
            return
        if not self._replicas_synced:
            check_same_on_all_ranks(self._replicated_counters(), self.state.device)
            for module in self._replicated_modules().values():
                broadcast_module(module, src=0)
            self._replicas_synced = True
        split_rng_streams(self.state.device)

    def _sync_running_statistics(self) -> None:
        if self.distributed:
            stats = self._running_statistics()
            if stats:
                all_reduce_mean(stats)

    def _global_batch(self, local: int, mean_local: torch.Tensor | None = None) -> int:
        """Images of this step over all ranks: ``local`` in a single process, else the rank mean of the local batch
        sizes (averaged with the gradients) times the world size."""
        if not self.distributed or mean_local is None:
            return local * self.world_size
        return int(round(float(mean_local) * self.world_size))

    def _backward(
        self, name: str, loss: torch.Tensor, optimizer: Optimizer, module: nn.Module, *stats: torch.Tensor
    ) -> torch.Tensor:
        """Back-propagate ``loss`` into ``module`` and check it all before the optimiser step (the caller steps).

        In a single process: raise if the loss is not finite, zero the gradients, back-propagate, raise if the
        gradients are not finite. Distributed: zero, back-propagate, average the gradients together with the loss
        and ``stats`` over the ranks in one collective, then check the averaged loss and gradients, which are the
        same on every rank, so that all ranks raise together or step together.

        Returns:
            float32 ``[loss, *stats]``, detached; averaged over the ranks when distributed.
        """
        values = [loss, *stats]
        if not self.distributed:
            self._check_finite(name, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._check_finite(name, loss, module)
            return torch.stack([v.detach().float().reshape(()) for v in values])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mean = all_reduce_gradients(module, extra=[v.reshape(1) for v in values])
        assert mean is not None
        self._check_finite(name, mean[0], module)
        return mean

    @property
    def kimg(self) -> float:
        """Thousands of training images seen so far."""
        return self.nimg / 1000.0

    def _start_clock(self, engine: Trainer) -> None:
        self._run_started = time.perf_counter()
        self.stopped_by = None

    def _stop_at_total_kimg(self, engine: Trainer) -> None:
        if self.total_kimg is not None and self.nimg >= self.total_kimg * 1000:
            self.stopped_by = "total_kimg"
            self.terminate()
            return
        if self.max_seconds is None:
            return
        over = torch.tensor(float(time.perf_counter() - self._run_started >= self.max_seconds))
        if self.distributed:  # one rank's clock must not leave the others waiting in an all-reduce
            over = over.to(self.state.device)
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
        if bool(over):
            self.stopped_by = "max_seconds"
            self.terminate()

    def _autocast(self) -> Any:
        return torch.autocast(self.state.device.type, dtype=torch.bfloat16) if self.use_amp else nullcontext()

    def _set_memory_format(self, *modules: nn.Module | None) -> None:
        """Put the 4-D parameters and buffers of ``modules`` in the channels-last layout when ``channels_last``
        (in place: optimisers keep their parameters)."""
        if self.channels_last:
            for module in modules:
                if module is not None:
                    module.to(memory_format=torch.channels_last)

    def _get_real_images(self, batchdata: Any) -> torch.Tensor:
        """The batch's images on the device as float32, refused with a clear error if their shape does not match
        the model, they are not floating point (e.g. raw uint8 pixels) or they hold NaN or inf."""
        if isinstance(batchdata, dict):
            if self.image_key not in batchdata:
                raise KeyError(f"batch has no key {self.image_key!r}; keys: {sorted(map(str, batchdata))}.")
            images = batchdata[self.image_key]
        elif isinstance(batchdata, (list, tuple)):
            images = batchdata[0]
        else:
            images = batchdata
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a batch of images as a tensor, got {type(images).__name__}.")
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        check_image_batch(images, self.img_channels, self.resolution, f"{type(self).__name__} (training data)")
        if not images.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} (training data) expects floating-point images in [-1, 1], got {images.dtype}: "
                f"scale them in the data pipeline, e.g. with monai_hqanogan.transforms.gan_image_transforms."
            )
        images = images.to(self.state.device, dtype=torch.float32, non_blocking=self.non_blocking, **self.to_kwargs)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return ensure_finite(images, "training batch", f"at iteration {self.state.iteration}")

    def _check_finite(self, name: str, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        """Raise before any optimiser step if the loss, or the gradients of ``module``, are not finite."""
        loss = loss.detach()
        bad = not bool(torch.isfinite(loss).all())
        what = f"{name} loss = {float(loss)}"
        if not bad and module is not None:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                bad = not bool(torch.isfinite(norm))
                what = f"gradient of the {name} loss (norm {float(norm)})"
        if bad:
            raise NonFiniteLossError(
                f"{what} is not finite at iteration {self.state.iteration} ({self.kimg:.3f} kimg); training stopped "
                "before the optimiser step, so the weights and the last checkpoint are intact. Lower the learning "
                "rate (or strengthen the regularisation)."
            )

    # ------------------------------------------------------------------ checkpointing
    def checkpoint_dict(self) -> dict[str, Any]:
        """Name -> object (with ``state_dict``/``load_state_dict``) that a checkpoint must hold to resume exactly,
        for ``TrainingCheckpointHandler`` or MONAI's ``CheckpointSaver``/``CheckpointLoader``."""
        return {"trainer": self}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Engine state (epoch, iteration) plus ``nimg``, the subclass's extra state and the RNG states: tensors and
        plain data only, loadable with ``weights_only=True``."""
        state = dict(super().state_dict())
        state["training"] = {"nimg": self.nimg, "rng": get_rng_states(), **self._extra_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore :meth:`state_dict`. ``max_epochs`` stays as constructed, so a resumed run can be extended."""
        state = dict(state_dict)
        extra = state.pop("training", None)
        max_epochs = self.state.max_epochs
        super().load_state_dict(state)
        self.state.max_epochs = max_epochs
        if extra is None:
            return
        self.nimg = int(extra["nimg"])
        self._load_extra_state(extra)
        set_rng_states(extra["rng"])
