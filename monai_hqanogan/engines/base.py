"""What the GAN and encoder trainers share: a MONAI ``Trainer`` that counts images (kimg), validates every batch,
stops on non-finite losses before any optimiser step, and checkpoints its progress together with the RNG states."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.utils.data import DataLoader

from monai_hqanogan.networks.nets.stylegan2 import check_image_batch
from monai_hqanogan.transforms.array import ensure_finite
from monai_hqanogan.utils.checkpoint import get_rng_states, set_rng_states

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["KimgTrainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN or inf. Raised before the optimiser step, so no weight was changed."""


class KimgTrainer(Trainer):
    """Base trainer: progress in images (``nimg``, ``kimg``), optional stop at ``total_kimg``, bfloat16 autocast on
    CUDA, checked image batches and resumable state. Subclasses implement ``_iteration`` and may add state through
    ``_extra_state`` / ``_load_extra_state`` and the objects of ``checkpoint_dict``.

    Args:
        device: device to train on; ``amp`` applies only on CUDA.
        max_epochs: passes over ``train_data_loader`` (training also stops at ``total_kimg`` if given).
        train_data_loader: batches of images [B, C, R, R]: dicts (``image_key``), tensors, or tuples whose first
            element is the images.
        img_channels: channels every batch must have.
        resolution: height and width every batch must have.
        total_kimg: stop after this many thousand images (None: run ``max_epochs``).
        image_key: key of the images when batches are dicts.
        amp: bfloat16 autocast on CUDA (no loss scaling needed); float32 elsewhere.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: kept for MONAI compatibility (batches are parsed by ``_get_real_images``).
        train_handlers: MONAI/ignite handlers (objects with ``attach(engine)``).
        event_names: extra ignite events to register.
        to_kwargs: extra arguments of ``Tensor.to`` when moving batches.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        img_channels: int,
        resolution: int,
        total_kimg: float | None = None,
        image_key: str = "image",
        amp: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        to_kwargs: dict | None = None,
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
        if total_kimg is not None and total_kimg <= 0:
            raise ValueError(f"total_kimg must be positive, got {total_kimg}.")
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
        self.image_key = image_key
        self.use_amp = bool(amp) and self.state.device.type == "cuda"
        self.nimg = 0
        # checked before each batch is fetched: a run resumed at or past total_kimg does no extra iteration
        self.add_event_handler(Events.GET_BATCH_STARTED, self._stop_at_total_kimg)

    @property
    def kimg(self) -> float:
        """Thousands of training images seen so far."""
        return self.nimg / 1000.0

    def _stop_at_total_kimg(self, engine: Trainer) -> None:
        if self.total_kimg is not None and self.nimg >= self.total_kimg * 1000:
            self.terminate()

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()

    def _get_real_images(self, batchdata: Any) -> torch.Tensor:
        """The batch's images on the device as float32, refused with a clear error if their shape does not match
        the model or they hold NaN or inf."""
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
        images = images.to(self.state.device, dtype=torch.float32, non_blocking=self.non_blocking, **self.to_kwargs)
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
