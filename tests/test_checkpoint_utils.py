from __future__ import annotations

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

from monai_hqanogan.utils import (
    CheckpointError,
    get_rng_states,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint_atomic,
    set_rng_states,
    write_text_atomic,
)


def test_atomic_save_round_trip(tmp_path):
    path = save_checkpoint_atomic({"w": torch.arange(3.0), "n": 7}, tmp_path / "sub" / "a.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["n"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temporary file left


def test_crash_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint_atomic({"version": 1}, tmp_path / "c.pt")
    original = torch.save

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:  # some bytes reach the temporary file, then the process "dies"
            out.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({"version": 2}, path)
    monkeypatch.setattr(torch, "save", original)
    assert load_checkpoint(path)["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_or_empty_files_give_a_clear_error(tmp_path, cut):
    path = save_checkpoint_atomic({"w": torch.randn(100)}, tmp_path / "t.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(path)


def test_missing_file_and_non_dict_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


class _WritesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"generator": _WritesAFile(str(target))}, f)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(evil)
    assert not target.exists()


def test_list_checkpoints_sorts_numerically_and_ignores_others(tmp_path):
    for n in (10, 2, 33):
        (tmp_path / f"checkpoint_iteration={n}.pt").write_bytes(b"x")
    (tmp_path / "checkpoint_iteration=7.pt.tmp").write_bytes(b"x")
    (tmp_path / "other_iteration=1.pt").write_bytes(b"x")
    assert [n for n, _ in list_checkpoints(tmp_path)] == [2, 10, 33]
    assert list_checkpoints(tmp_path / "missing") == []


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    path = save_checkpoint_atomic({"rng": get_rng_states()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_states(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.randn(3), torch.rand(3))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
    assert os.path.getsize(path) > 0


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """Temporary files start private (0600); the finished file must be readable like any other (0666 - umask)."""
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.md", "# report\n")
        checkpoint = save_checkpoint_atomic({"a": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert path.read_text() == "# report\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "report.md"]
