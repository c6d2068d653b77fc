"""Crash-safe checkpoint files: atomic writes, safe loads, and finding the newest checkpoint of a run."""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "atomic_output",
    "save_checkpoint_atomic",
    "write_text_atomic",
    "load_checkpoint",
    "list_checkpoints",
    "get_rng_states",
    "set_rng_states",
    "model_fingerprint",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, or holds something other than tensors and plain data."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path beside ``path``; on success the file is flushed to disk, given the
    usual permissions (0666 minus the umask) and renamed onto ``path``; on error it is removed.

    The rename is atomic on POSIX and Windows, so ``path`` is always either the previous complete file or the new
    complete file, never a partial one, whenever the process dies. The temporary name keeps ``path``'s suffix, so
    writers that choose a format by extension (matplotlib) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint_atomic(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` atomically (temporary file, fsync, rename): ``path`` never holds a partial
    file, whenever the process dies."""
    with atomic_output(path) as tmp:
        torch.save(dict(obj), tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`save_checkpoint_atomic`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``, turning any failure into a clear error.

    ``weights_only=True`` refuses pickles that would run code: only tensors and plain containers load.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): it was not written completely.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, ... for bad files
        detail = str(e)
        hint = ""
        if path.suffix.lower() == ".pkl" or any(name in detail for name in ("dnnlib", "torch_utils")):
            hint = (
                " It looks like an NVlabs StyleGAN2-ADA pickle: monai_hqanogan offers no importer for those, because "
                "unpickling them runs code; convert the weights to a state dict in a trusted environment."
            )
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be loaded: it is truncated, corrupt, or holds objects other than "
            f"tensors and plain data, which are refused for safety (nothing in the file was run).{hint} "
            f"Underlying error: {type(e).__name__}: {_first_reason(detail)}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict of state dicts.")
    return obj


def _first_reason(message: str) -> str:
    """The informative part of torch's load error (for refused pickles: what it refused), without the advice to
    load with ``weights_only=False``."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1].split(" Please use", 1)[0]
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def list_checkpoints(directory: str | os.PathLike, prefix: str = "checkpoint") -> list[tuple[int, Path]]:
    """Checkpoints named ``{prefix}_iteration={n}.pt`` in ``directory``, sorted by ``n`` (oldest first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_iteration=(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name)) and p.is_file()]
    return sorted(found)


def get_rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and PyTorch's (CPU and CUDA) global generators, as tensors and plain data."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore generator states saved by :func:`get_rng_states`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def model_fingerprint(*modules: torch.nn.Module) -> str:
    """A short SHA-256 hex digest of the modules' state dicts (names, shapes, dtypes and values).

    Used to tie files (encoder checkpoints, calibrations) to the exact networks they were made for.
    """
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
