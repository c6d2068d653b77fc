"""Staging folders that say whose they are, so that a later run can clear what a killed one left, and nothing else.

A writer that stages its outputs in a folder and renames them into place when it is done (the data preparation's
``<output>/.staging``) leaves that folder behind when it is killed with SIGKILL. :func:`create_staging_dir` creates
it with an owner file (:data:`STAGING_OWNER`: PID, host, process start, purpose) and clears such a leftover first,
under a short ``flock`` of the parent folder so that two runs never judge and clear one folder at the same time:

- a folder whose owner file names a process of this host that has ended (or this very process: a call that raised
  in a notebook) is stale and is removed;
- a folder whose owner still runs is refused, naming its PID (two runs would write into one folder);
- a folder written on another host is refused (this host cannot tell whether that process still runs);
- a folder without a readable owner file is never deleted (an empty one, left between its creation and the owner
  file, excepted): the error names it, so the user can look at it and move it away;
- a symbolic link or a file in the folder's place is refused: nothing is deleted or written through a link.

:func:`remove_stale_staging_dirs` clears the stale folders among the siblings matching a pattern (writers that give
each run a staging folder of its own, e.g. ``.<output>.incomplete-<run id>``) and leaves every other one alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from monai_hqanogan.utils.run_dir_lock import folder_flock, process_alive, process_start_token

__all__ = ["STAGING_OWNER", "create_staging_dir", "staging_owner", "clear_stale_staging", "remove_stale_staging_dirs"]

#: the owner file inside a staging folder
STAGING_OWNER = ".monai_hqanogan_staging_owner.json"


def staging_owner(path: str | os.PathLike) -> dict[str, Any] | None:
    """The owner file of the staging folder ``path`` (pid, host, process_start, purpose, since), or None when there
    is none or it cannot be read (never through a symbolic link)."""
    owner = Path(path) / STAGING_OWNER
    if owner.is_symlink() or not owner.is_file():
        return None
    try:
        info = json.loads(owner.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _state(path: Path) -> tuple[str, dict[str, Any] | None]:
    """``("absent" | "stale" | "empty" | "live" | "foreign" | "unmarked" | "link" | "file", owner)``."""
    if path.is_symlink():
        return "link", None
    if not path.exists():
        return "absent", None
    if not path.is_dir():
        return "file", None
    info = staging_owner(path)
    if info is None:
        return ("empty" if next(path.iterdir(), None) is None else "unmarked"), None
    if info.get("host") != socket.gethostname():
        return "foreign", info
    pid, token = info["pid"], info.get("process_start")
    if pid == os.getpid() and (token is None or token == process_start_token(pid)):
        return "stale", info  # left by this process (a call that raised): nothing of it is in flight
    return ("live" if process_alive(pid, token) else "stale"), info


def _refusal(path: Path, state: str, info: dict[str, Any] | None) -> FileExistsError:
    who = "" if info is None else f"{info.get('purpose') or 'a run'} (PID {info.get('pid')} on {info.get('host')!r})"
    reasons = {
        "link": "is a symbolic link, which this tool never creates: nothing is deleted or written through it",
        "file": "is a file, not a staging folder this tool created",
        "unmarked": f"has no {STAGING_OWNER} owner file, so this tool did not create it and will not delete it",
        "live": f"is being written by {who}, which still runs: wait for it to end, or stop it",
        "foreign": f"was written by {who}, another host, which this one cannot check: delete it once that run ended",
    }
    return FileExistsError(f"{path} {reasons[state]}. Nothing was changed; move it away to go on.")


def clear_stale_staging(path: str | os.PathLike) -> bool:
    """Remove the staging folder ``path`` if a killed (ended) run of this tool left it; returns whether it removed
    one. Takes no ``flock``: :func:`create_staging_dir` calls it under one.

    Raises:
        FileExistsError: ``path`` is a symbolic link or a file, has no owner file (and is not empty), belongs to a
            process that still runs or to another host. The message names the path and says why.
    """
    path = Path(path)
    state, info = _state(path)
    if state == "absent":
        return False
    if state == "empty":
        path.rmdir()  # only an empty folder: nothing can be lost
        return True
    if state != "stale":
        raise _refusal(path, state, info)
    assert info is not None
    shutil.rmtree(path)  # never follows symbolic links inside
    if info["pid"] != os.getpid():
        warnings.warn(
            f"removed {path}, left by {info.get('purpose') or 'a run'} (PID {info['pid']}) that ended before it "
            "finished",
            stacklevel=3,
        )
    return True


def create_staging_dir(path: str | os.PathLike, purpose: str) -> Path:
    """Create the staging folder ``path`` with its owner file, after clearing a stale one (see the module).

    Args:
        path: the staging folder; its parent must exist.
        purpose: what writes there (named in the owner file and in errors), e.g. ``"a data preparation"``.

    Raises:
        FileExistsError: ``path`` exists and is not a stale staging folder of this tool (see
            :func:`clear_stale_staging`).
    """
    path = Path(path)
    pid = os.getpid()
    owner = {
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": process_start_token(pid),
        "purpose": purpose,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with folder_flock(path.parent):
        clear_stale_staging(path)
        path.mkdir()  # a new folder: FileExistsError if another run created it in between
        (path / STAGING_OWNER).write_text(json.dumps(owner) + "\n", encoding="utf-8")
    return path


def remove_stale_staging_dirs(parent: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove the stale staging folders of this tool among ``parent.glob(pattern)`` (their owner has ended) and
    return them; folders of live runs, of other hosts, without an owner file, files and links are left alone.

    Args:
        parent: the folder to look in.
        pattern: a glob pattern of the staging folders' names, e.g. ``".out.incomplete-*"``.
    """
    parent = Path(parent)
    removed = []
    with folder_flock(parent):
        for path in sorted(parent.glob(pattern)):
            if _state(path)[0] in ("stale", "empty"):
                clear_stale_staging(path)
                removed.append(path)
    return removed
