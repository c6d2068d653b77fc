from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monai_hqanogan.utils.run_dir_lock import process_start_token
from monai_hqanogan.utils.staging import (
    STAGING_OWNER,
    clear_stale_staging,
    create_staging_dir,
    remove_stale_staging_dirs,
    staging_owner,
)


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def staging(path: Path, pid: int | None, host: str | None = None, token: str | None = "boot:0") -> Path:
    """A staging folder holding one file, with an owner file naming ``pid`` (none when ``pid`` is None)."""
    path.mkdir(parents=True)
    (path / "partial.png").write_bytes(b"half written")
    if pid is not None:
        owner = {"pid": pid, "host": host or socket.gethostname(), "process_start": token, "purpose": "a test"}
        (path / STAGING_OWNER).write_text(json.dumps(owner))
    return path


def test_create_writes_the_owner_and_clears_a_stale_leftover(tmp_path):
    left = staging(tmp_path / ".staging", dead_pid())  # what a run killed with SIGKILL leaves
    with pytest.warns(UserWarning, match="removed .*ended before it finished"):
        path = create_staging_dir(left, "a test run")
    assert not (path / "partial.png").exists()
    owner = staging_owner(path)
    assert owner["pid"] == os.getpid() and owner["purpose"] == "a test run" and owner["host"] == socket.gethostname()
    assert owner["process_start"] == process_start_token(os.getpid())
    # a leftover of this very process (a call that raised) is cleared too, without a warning
    assert create_staging_dir(path, "again") == path and staging_owner(path)["purpose"] == "again"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("unmarked", "has no .* owner file, so this tool did not create it and will not delete it"),
        ("live", "is being written by a test \\(PID \\d+ .*still runs"),
        ("foreign", "another host"),
        ("link", "is a symbolic link"),
        ("file", "is a file"),
    ],
)
def test_what_the_tool_cannot_prove_stale_is_never_deleted(kind, message, tmp_path):
    target = tmp_path / "user data"
    staging(target, None)
    path = tmp_path / ".staging"
    if kind == "unmarked":
        staging(path, None)
    elif kind == "live":
        staging(path, os.getppid(), token=process_start_token(os.getppid()))
    elif kind == "foreign":
        staging(path, dead_pid(), host="another-host.invalid")
    elif kind == "link":
        path.symlink_to(target, target_is_directory=True)
    else:
        path.write_text("a file")
    before = sorted((p.relative_to(tmp_path).as_posix(), p.is_symlink()) for p in tmp_path.rglob("*"))
    with pytest.raises(FileExistsError, match=f"{path}.*{message}.*Nothing was changed"):
        create_staging_dir(path, "a test")
    with pytest.raises(FileExistsError, match=message):
        clear_stale_staging(path)
    assert sorted((p.relative_to(tmp_path).as_posix(), p.is_symlink()) for p in tmp_path.rglob("*")) == before
    assert (target / "partial.png").read_bytes() == b"half written"


def test_an_empty_unmarked_folder_is_taken(tmp_path):
    """Left between mkdir and the owner file: empty, so nothing can be lost."""
    (tmp_path / ".staging").mkdir()
    assert staging_owner(create_staging_dir(tmp_path / ".staging", "a test"))["pid"] == os.getpid()


def test_remove_stale_staging_dirs_removes_only_marked_stale_folders(tmp_path):
    stale = staging(tmp_path / ".out.incomplete-1", dead_pid())
    unmarked = staging(tmp_path / ".out.incomplete-2", None)  # a look-alike without the owner file
    live = staging(tmp_path / ".out.incomplete-3", os.getppid(), token=process_start_token(os.getppid()))
    other = staging(tmp_path / ".other.incomplete-4", dead_pid())  # another pattern
    with pytest.warns(UserWarning, match="removed"):
        assert remove_stale_staging_dirs(tmp_path, ".out.incomplete-*") == [stale]
    assert not stale.exists()
    assert all((p / "partial.png").is_file() for p in (unmarked, live, other))
