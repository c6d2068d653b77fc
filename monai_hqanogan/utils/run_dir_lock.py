"""One trainer per run folder: a lock file ``<run_dir>/.lock`` naming the process that trains there.

Two trainers on one run folder would resume from and overwrite each other's checkpoints, and the startup of one
(the checkpoint handler deletes the temporary files an interrupted save left) would delete the file the other is
writing. The training configs therefore take the run folder's lock before they build anything
(:func:`acquire_run_lock`) and release it at the end (:func:`release_run_lock`); a second trainer is refused with an
error naming the holder's PID, host and step.

- The lock is created with ``os.open(..., O_CREAT | O_EXCL)``: of two processes only one can create it.
- It holds JSON: the PID, the host, the process's start time (Linux: boot id and start tick, so a reused PID is not
  mistaken for the holder), the step, the time and a random token.
- A lock whose process has ended (not running on this host, or a zombie, or another process now under that PID) is
  stale: it is taken over safely. Checking and taking over happen under a short ``flock`` of the run folder itself
  (the kernel drops it when a process dies, so it never goes stale; no extra file), the stale file is renamed aside
  (atomic), checked to be the very file judged stale (same content) and only then dropped, and the lock is created
  anew with ``O_EXCL``: of several processes taking over the same stale lock exactly one gets it. A lock written by
  another host is never taken over (this host cannot tell whether that process still runs); the error says to
  delete it once that run has ended.
- Released at the end of the step, at interpreter exit (``atexit``, so also when the step raised and the process
  ends) and when the same process takes it again (a step that raised inside a notebook or a test left it; a
  process is one trainer at a time). A process killed with SIGKILL leaves a stale lock that the next run takes over.
- Under ``torch.distributed`` only rank 0 takes the lock (every rank trains the same run).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "RunLockedError",
    "acquire_run_lock",
    "release_run_lock",
    "check_run_lock",
    "run_lock",
    "read_run_lock",
    "process_start_token",
    "process_alive",
    "folder_flock",
]

#: the lock file's name inside the run folder
LOCK_NAME = ".lock"
#: a lock file without readable content younger than this (seconds) is being written right now; older: stale
_WRITE_GRACE_S = 5.0

#: locks this process took: resolved path -> (pid, content written)
_HELD: dict[str, tuple[int, bytes]] = {}


class RunLockedError(RuntimeError):
    """The run folder is in use by another trainer (its lock names the PID and host)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start tick)`` of ``pid`` from ``/proc`` (Linux); None where there is no such entry."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]  # fields 3 and 22 of proc(5)
    except (OSError, IndexError):
        return None


def process_start_token(pid: int) -> str | None:
    """What tells this run of process ``pid`` from a later process under the same PID: ``"<boot id>:<start tick>"``
    from ``/proc`` (Linux); None elsewhere or when there is no such process.

    Written next to a PID into lock and owner files, and compared by :func:`process_alive`.
    """
    stat = _proc_stat(pid)
    return None if stat is None else f"{_boot_id()}:{stat[1]}"


def process_alive(pid: int, token: str | None) -> bool:
    """Whether process ``pid`` of this host runs, and is the one that wrote ``token`` (when both are known).

    Args:
        pid: the process id written in a lock or owner file (anything but a positive int: not alive).
        token: its :func:`process_start_token` as written then, or None (then the PID alone is checked).

    Returns:
        False for no such process, a zombie, or another process now under that PID (its start differs); True
        otherwise, also for a process of another user and on Windows (never judged ended there).
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if os.name == "nt":  # no safe probe without extra packages: never judge a Windows lock stale
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):  # ended, not yet reaped
        return False
    current = process_start_token(pid)
    return not (token and current and token != current)


def _content(stage: str) -> bytes:
    pid = os.getpid()
    info = {
        "pid": pid,
        "host": socket.gethostname(),
        "stage": stage,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "process_start": process_start_token(pid),
        "token": secrets.token_hex(8),
    }
    return (json.dumps(info) + "\n").encode()


def _parse(content: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _read(lock: Path) -> tuple[bytes, float] | None:
    """The lock's content and age in seconds; None when there is no lock."""
    try:
        with open(lock, "rb") as f:
            content = f.read()
            age = time.time() - os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return content, age


def read_run_lock(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``<run_dir>/.lock`` (pid, host, stage, since, ...), or None when there is none or it cannot be
    read."""
    found = _read(Path(run_dir).expanduser() / LOCK_NAME)
    return None if found is None else _parse(found[0])


def _describe(info: dict[str, Any]) -> str:
    return (
        f"{info.get('stage') or 'a trainer'} (PID {info.get('pid')} on host {info.get('host')!r}, since "
        f"{info.get('since', '?')})"
    )


def _holder_state(info: dict[str, Any] | None, age: float) -> str:
    """``"mine"``, ``"live"``, ``"foreign"`` (another host), ``"writing"`` or ``"stale"``."""
    if info is None:
        return "writing" if age < _WRITE_GRACE_S else "stale"
    if info.get("host") != socket.gethostname():
        return "foreign"
    pid, token = info.get("pid"), info.get("process_start")
    if pid == os.getpid() and (token is None or token == process_start_token(pid)):
        return "mine"
    return "live" if process_alive(pid, token) else "stale"


def _refusal(lock: Path, info: dict[str, Any], state: str) -> RunLockedError:
    run_dir = lock.parent
    if state == "foreign":
        return RunLockedError(
            f"run folder {str(run_dir)!r} is locked by {_describe(info)}: another host, so this one cannot tell "
            f"whether it still runs. Two trainers on one run folder would overwrite each other's checkpoints. If that "
            f"run has ended, delete {str(lock)!r}; else wait for it or use another --run_dir. Nothing was changed."
        )
    return RunLockedError(
        f"run folder {str(run_dir)!r} is in use by {_describe(info)}: two trainers on one run folder would overwrite "
        f"each other's checkpoints. Wait for it to finish (or stop process {info.get('pid')}) or use another "
        f"--run_dir. Nothing was changed."
    )


def _create(lock: Path, content: bytes) -> None:
    """Create ``lock`` holding ``content``; FileExistsError when it exists (atomic: ``O_EXCL``)."""
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    os.close(fd)


def _drop_if_unchanged(lock: Path, judged: bytes) -> None:
    """Remove ``lock`` if it still holds ``judged`` (the content judged stale): rename it aside (atomic), compare,
    and put it back if another process replaced it in between (then the caller looks at the new one)."""
    aside = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else removed it first
    try:
        if aside.read_bytes() == judged:
            return
        try:  # not the stale file: a new holder's lock; give it back without overwriting a newer one
            os.link(aside, lock)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not lock.exists():
                os.rename(aside, lock)
    finally:
        aside.unlink(missing_ok=True)


@contextmanager
def folder_flock(folder: str | os.PathLike, timeout: float = 30.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``folder`` itself for the block (no extra file; the kernel drops it when the
    process dies, so it never goes stale): the processes that check and take over a run folder's lock, or clear the
    staging folders in ``folder`` (:mod:`monai_hqanogan.utils.staging`), do so one at a time. Where there is no
    ``flock`` (Windows, some network file systems) or the folder cannot be opened, the block runs unguarded, and the
    rename check of :func:`_drop_if_unchanged` is what protects a take-over.

    Raises:
        RunLockedError: another process held the ``flock`` for ``timeout`` seconds.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunLockedError(
                        f"folder {os.fspath(folder)!r}: another process has held its flock for {timeout:.0f} s; "
                        "try again."
                    ) from None
                time.sleep(0.005)
            except OSError:
                break  # no flock on this file system
        yield
    finally:
        os.close(fd)  # drops the flock


def acquire_run_lock(run_dir: str | os.PathLike, stage: str = "training", attempts: int = 400) -> Path | None:
    """Take the lock of ``run_dir`` for ``stage`` (created if needed); returns the lock file (None on a
    ``torch.distributed`` rank other than 0, which takes none).

    Raises:
        RunLockedError: another live process (or another host) holds it; the message names its PID, host and step.
        PermissionError: the run folder cannot be created or written.
    """
    if _nonzero_rank():
        return None
    run_dir = Path(run_dir).expanduser()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"run folder {str(run_dir)!r} cannot be created: {err}") from err
    lock = run_dir / LOCK_NAME
    content = _content(stage)
    for _ in range(attempts):
        with folder_flock(run_dir):
            state = _try_take(lock, content)
        if state == "taken":
            _HELD[str(lock.resolve())] = (os.getpid(), content)
            return lock
        if state == "writing":
            time.sleep(0.05)
    raise RunLockedError(f"could not take the lock {str(lock)!r}: other processes keep taking it; try again.")


def _try_take(lock: Path, content: bytes) -> str:
    """One attempt: ``"taken"``, ``"writing"`` (another process is writing the lock: try again) or ``"retry"`` (a
    stale lock was dropped or the lock vanished: try again); raises when a live process holds it."""
    try:
        _create(lock, content)
        return "taken"
    except FileExistsError:
        pass
    except OSError as err:
        raise PermissionError(f"run folder {str(lock.parent)!r} cannot be written ({lock.name}): {err}") from err
    found = _read(lock)
    if found is None:
        return "retry"  # released in between
    info = _parse(found[0])
    state = _holder_state(info, found[1])
    if state in ("live", "foreign"):
        raise _refusal(lock, info, state)
    if state == "writing":
        return state
    # stale (its process has ended) or left by this very process (a step that raised): take it over
    _drop_if_unchanged(lock, found[0])
    return "retry"


def release_run_lock(run_dir: str | os.PathLike) -> bool:
    """Remove ``<run_dir>/.lock`` if this process took it (and holds it still); returns whether it did. A lock of
    another process is never removed; releasing twice is harmless."""
    lock = Path(run_dir).expanduser() / LOCK_NAME
    try:
        key = str(lock.resolve())
    except OSError:
        return False
    held = _HELD.get(key)
    if held is None or held[0] != os.getpid():
        return False  # not ours (a forked child inherits the parent's table: never release the parent's lock)
    del _HELD[key]
    with folder_flock(lock.parent):
        found = _read(lock)
        if found is None or found[0] != held[1]:
            return False
        _drop_if_unchanged(lock, held[1])
    return True


def check_run_lock(run_dir: str | os.PathLike) -> None:
    """Raise :class:`RunLockedError` if another live process (or another host) holds ``run_dir``'s lock; changes
    nothing (a stale lock is left for the trainer to take over)."""
    lock = Path(run_dir).expanduser() / LOCK_NAME
    found = _read(lock)
    if found is None:
        return
    info = _parse(found[0])
    state = _holder_state(info, found[1])
    if state in ("live", "foreign"):
        raise _refusal(lock, info, state)


@contextmanager
def run_lock(run_dir: str | os.PathLike, stage: str = "training") -> Iterator[Path | None]:
    """``with run_lock(run_dir, "my step"):`` holds the run folder's lock for the block, released also when the
    block raises."""
    path = acquire_run_lock(run_dir, stage)
    try:
        yield path
    finally:
        if path is not None:
            release_run_lock(run_dir)


def _nonzero_rank() -> bool:
    dist = sys.modules.get("torch.distributed")  # without torch loaded there is no process group
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


@atexit.register
def _release_all() -> None:
    for key, (pid, _) in list(_HELD.items()):
        if pid == os.getpid():
            try:
                release_run_lock(Path(key).parent)
            except OSError:
                pass
