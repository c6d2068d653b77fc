"""Data parallelism inside the trainers, without ``DistributedDataParallel`` wrappers.

The StyleGAN2 step calls ``G.mapping`` and ``G.synthesis`` separately and differentiates twice (R1, path length),
which ``DistributedDataParallel`` handles badly. Instead, as in StyleGAN3's training loop, every rank keeps a
plain replica: the replicas start equal (:func:`broadcast_module` from rank 0), each rank computes the gradient of
its own share of the global batch, and the gradients are averaged in one flat bucket per module
(:func:`all_reduce_gradients`) before the optimiser step, so that every replica takes the same step.

All helpers are collectives: every rank of the process group must call them in the same order. Without an
initialised process group, or with one rank, they do nothing (and cost nothing).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "distributed_world",
    "is_main_process",
    "broadcast_module",
    "all_reduce_gradients",
    "all_reduce_mean",
    "any_rank",
    "check_same_on_all_ranks",
    "split_rng_streams",
]


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when ``torch.distributed`` is not
    initialised (or not available)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0, and in a process without an initialised process group."""
    return distributed_world()[0] == 0


def _active() -> bool:
    return distributed_world()[1] > 1


def _scalar_device(device: torch.device | str | None = None) -> torch.device:
    """Where small tensors (flags, counters, RNG states) travel: the CPU for gloo and MPI, otherwise ``device``
    when it is a CUDA device, else the current CUDA device (NCCL only handles CUDA tensors)."""
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if device is not None and torch.device(device).type != "cpu":
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device())


def _tensors_of(module_or_params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(module_or_params, nn.Module):
        return list(module_or_params.parameters())
    return list(module_or_params)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite the parameters and buffers of ``module`` with those of rank ``src``, in place.

    Tensors are grouped by device and dtype and each group travels as one flat tensor. A no-op without a process
    group of more than one rank.

    Args:
        module: the replica; it must have the same parameters and buffers (names, shapes, dtypes) on every rank.
        src: the rank whose values win.
    """
    if not _active():
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.numel() > 0:
            groups.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        for tensors in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.broadcast(flat, src=src)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def all_reduce_gradients(
    module_or_params: nn.Module | Iterable[torch.Tensor],
    extra: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Average the gradients over the ranks, in place, in one flat all-reduce.

    Every rank must pass the same parameters in the same order. A gradient that is ``None`` on a rank counts as
    zeros there, so every rank takes part in the same collective; it stays ``None`` only when it is ``None`` on
    all ranks (an optimiser then skips the parameter on all ranks alike). With each rank's loss a mean over an
    equal share of the global batch, the result is the gradient of the mean loss over the global batch.

    Args:
        module_or_params: a module (its ``parameters()``) or the parameters themselves.
        extra: scalars or small tensors to average in the same collective, e.g. the losses for logging.

    Returns:
        the flattened rank average of ``extra`` (float32), or None when ``extra`` is None. Without a process group
        of more than one rank, the gradients are left untouched and ``extra`` comes back flattened as it is.
    """
    params = [p for p in _tensors_of(module_or_params) if p.requires_grad]
    extras = [] if extra is None else [extra] if isinstance(extra, torch.Tensor) else list(extra)
    extra_flat = (
        torch.cat([e.detach().float().reshape(-1) for e in extras]) if extras else torch.zeros(0, dtype=torch.float32)
    )
    if not _active():
        return extra_flat if extra is not None else None
    world = distributed_world()[1]
    if params:
        device = params[0].device
        dtype = params[0].dtype
        for p in params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
    else:
        device = _scalar_device()
        dtype = torch.float32
    dtype = torch.promote_types(dtype, torch.float32)
    grads = [
        torch.zeros(p.numel(), dtype=dtype, device=device) if p.grad is None else p.grad.reshape(-1).to(device, dtype)
        for p in params
    ]
    present = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
    sizes = [sum(g.numel() for g in grads), extra_flat.numel(), present.numel()]
    flat = torch.cat(grads + [extra_flat.to(device, dtype), present])
    dist.all_reduce(flat)
    mean_grads, mean_extra, count = torch.split(flat, sizes)
    mean_grads = mean_grads / world
    offset = 0
    with torch.no_grad():
        for p, n in zip(params, count.tolist()):
            g = mean_grads[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if n == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = g.to(p.dtype).clone()
            else:
                p.grad.copy_(g)
    if extra is None:
        return None
    return (mean_extra / world).to(device=extra_flat.device, dtype=torch.float32)


def all_reduce_mean(tensors: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Replace each tensor by its mean over the ranks, in place, in one all-reduce per device and dtype.

    Used for running statistics that each rank updates from its own share of the batch (``w_avg``, the
    path-length mean, batch-norm running statistics): for an exponential moving average of per-batch means with
    equal shares, the rank mean equals the average taken over the global batch. Floating-point tensors only.

    Returns:
        ``tensors``, as given.
    """
    items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    if not _active():
        return tensors if isinstance(tensors, torch.Tensor) else items
    world = distributed_world()[1]
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in items:
        if not t.is_floating_point():
            raise TypeError(f"all_reduce_mean averages floating-point tensors, got {t.dtype}.")
        groups.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
    return tensors if isinstance(tensors, torch.Tensor) else items


def any_rank(flag: bool, device: torch.device | str | None = None) -> bool:
    """True on every rank when ``flag`` is True on at least one: lets all ranks raise together instead of some
    raising and the others waiting forever in the next collective. Returns ``flag`` without a process group."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_scalar_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_same_on_all_ranks(values: dict[str, int], device: torch.device | str | None = None) -> None:
    """Raise the same ``RuntimeError`` on every rank when an integer of ``values`` differs between ranks.

    Args:
        values: name -> integer (iteration, images seen, a fingerprint, ...) that all replicas must share.
        device: device for the collective (used by NCCL).
    """
    if not _active() or not values:
        return
    names = list(values)
    local = torch.tensor([int(values[k]) for k in names], dtype=torch.int64, device=_scalar_device(device))
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = [f"{k} (from {lo} to {hi})" for k, lo, hi in zip(names, low.tolist(), high.tolist()) if lo != hi]
    if differ:
        raise RuntimeError(
            f"the ranks disagree on {', '.join(differ)}: every rank must start from the same state (construct the "
            "same models, and resume from the same checkpoint directory on a file system all ranks share)."
        )


def split_rng_streams(device: torch.device | str | None = None) -> None:
    """Give every rank its own random stream, derived from rank 0's.

    Rank 0's PyTorch CPU generator state is broadcast; rank 0 keeps all its states, and every other rank seeds
    PyTorch (CPU and CUDA), NumPy and Python with a hash of that state and its rank. The streams therefore differ
    between ranks (different latents, noise and augmentations) yet depend only on rank 0's state, which is what
    a checkpoint holds: resuming from it gives every rank the same stream as the uninterrupted run. A no-op
    without a process group of more than one rank.
    """
    if not _active():
        return
    rank = distributed_world()[0]
    state = torch.get_rng_state().to(_scalar_device(device))
    dist.broadcast(state, src=0)
    if rank == 0:
        return
    digest = hashlib.sha256(state.cpu().numpy().tobytes() + rank.to_bytes(8, "little")).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
