"""One trainer per run folder (``monai_hqanogan.utils.run_dir_lock``): the lock names its holder, a second trainer (the
bundle's training configs, the main job) is refused naming the holder's PID and changes nothing, a stale lock (its
process killed, a zombie, a reused PID, an unreadable file) is taken over, and of several processes taking over the
same stale lock exactly one wins. The other processes run the lock module alone (no torch import: they start fast)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

import monai_hqanogan.utils as utils
from monai_hqanogan.utils import (
    LOCK_NAME,
    RunLockedError,
    acquire_run_lock,
    check_run_lock,
    read_run_lock,
    release_run_lock,
    run_lock,
)
from monai_hqanogan.utils import run_dir_lock as run_lock_module
from monai_hqanogan.workflows import save_stage
from monai_hqanogan.workflows.main_job import main
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, config_files, make_tiny_dataset, tiny_overrides
from tests.bundle_utils import error_messages as chain
from tests.bundle_utils import file_hashes as hashes

pytestmark = pytest.mark.usefixtures("single_thread")

#: a process that takes a lock with the module alone: argv = module file, run folder, mode
HOLDER = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
run_dir, mode = sys.argv[2], sys.argv[3]
if mode == "race":
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.001)
    try:
        lock.acquire_run_lock(run_dir, "racer")
        print("won", flush=True)
    except lock.RunLockedError:
        print("refused", flush=True)
    time.sleep(1.5)
    sys.exit(0)
lock.acquire_run_lock(run_dir, "train_generator")
print("held", flush=True)
if mode == "raise":
    raise RuntimeError("the step failed")
sys.stdin.read()  # hold until the test closes stdin; the lock is released at exit
"""


def start_holder(run_dir: Path, mode: str = "hold", *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_lock_module.__file__, str(run_dir), mode, *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if mode != "race":
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=30)


def write_lock(run_dir: Path, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": 1, "host": socket.gethostname(), "stage": "train_generator", "since": "earlier", **fields}
    (run_dir / LOCK_NAME).write_text(json.dumps(info))
    return run_dir / LOCK_NAME


def dead_pid() -> int:
    """The PID of a process that has ended and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock_data")
    make_tiny_dataset(root)
    return root


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """A run folder that another trainer is working in: checkpoints and its in-flight temporary checkpoint file."""
    runs = tmp_path / "runs"
    checkpoints = runs / "generator" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"trainer": {"iteration": 4}}, checkpoints / "checkpoint_iteration=4.pt")
    (checkpoints / ".checkpoint_iteration=6.pt.k2j4.tmp.pt").write_bytes(b"being written by the other trainer")
    (runs / "main_job.json").write_text('{"setting": "demo", "seconds": {}}')
    parser = ConfigParser()  # generator.pt of the tiny networks, which train_encoder.json loads
    parser.read_config(config_files("train_encoder.json"))
    parser.update({"bundle_root": str(BUNDLE), "settings": dict(TINY_SETTINGS)})
    networks = {k: parser.get_parsed_content(f"{k}_def") for k in ("generator", "discriminator")}
    save_stage(runs / "generator.pt", **networks)
    return runs


def bundle_train(config: str, data: Path, runs: Path) -> None:
    logging.disable(logging.WARNING)
    try:
        w = ConfigWorkflow(
            config_file=config_files(config), workflow_type="train", bundle_root=str(BUNDLE),
            **tiny_overrides(data, runs),
        )  # fmt: skip
        w.initialize()
        w.run()
        w.finalize()
    finally:
        logging.disable(logging.NOTSET)


# ---------------------------------------------------------------------------------------------------- refusal
def test_a_second_trainer_is_refused_naming_the_holders_pid(tmp_path):
    holder = start_holder(tmp_path)
    try:
        info = read_run_lock(tmp_path)
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        assert info["stage"] == "train_generator" and info["process_start"]
        before = hashes(tmp_path)
        with pytest.raises(RunLockedError, match=rf"is in use by train_generator \(PID {holder.pid} on host"):
            acquire_run_lock(tmp_path, "train_encoder")
        with pytest.raises(RunLockedError, match=f"PID {holder.pid}"):
            check_run_lock(tmp_path)
        assert not release_run_lock(tmp_path)  # never removes another process's lock
        assert hashes(tmp_path) == before
    finally:
        stop(holder)
    assert not (tmp_path / LOCK_NAME).exists()  # the holder released it at exit
    assert acquire_run_lock(tmp_path, "train_encoder") == tmp_path / LOCK_NAME
    assert release_run_lock(tmp_path) and not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("config", ["train_generator.json", "train_encoder.json"])
def test_bundle_training_is_refused_and_leaves_the_other_trainers_files(config, data, earlier_run):
    """The second trainer's startup cleanup would delete the first one's in-flight checkpoint file: it never starts."""
    holder = start_holder(earlier_run)
    try:
        before = hashes(earlier_run)
        with pytest.raises(Exception) as info:
            bundle_train(config, data, earlier_run)
        assert f"RunLockedError: run folder {str(earlier_run)!r} is in use by train_generator (PID {holder.pid}" in (
            chain(info.value)
        )
        assert hashes(earlier_run) == before  # the temporary file, the checkpoint and the lock are untouched
    finally:
        stop(holder)


def test_the_main_job_is_refused_before_any_work(data, earlier_run, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(
        subprocess, "run", lambda c, check=False: started.append(c) or subprocess.CompletedProcess(c, 0)
    )
    holder = start_holder(earlier_run)
    try:
        before = hashes(earlier_run)
        args = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--run_dir", str(earlier_run)]
        assert main(args) == 1
        assert f"is in use by train_generator (PID {holder.pid} on host" in capsys.readouterr().err
        assert started == [] and hashes(earlier_run) == before
        assert main([*args, "--stages", "evaluate"]) == 0  # a step that does not train does not need the lock
        assert len(started) == 1
    finally:
        stop(holder)


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    lock = write_lock(tmp_path, pid=4242, host="gpu-node-7")
    before = lock.read_bytes()
    with pytest.raises(RunLockedError, match=r"PID 4242 on host 'gpu-node-7'.*another host.*delete"):
        acquire_run_lock(tmp_path)
    assert lock.read_bytes() == before


# ---------------------------------------------------------------------------------------------------- stale locks
def test_a_lock_left_by_a_killed_trainer_is_taken_over(tmp_path):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert read_run_lock(tmp_path)["pid"] == holder.pid  # kill -9 leaves it behind
    check_run_lock(tmp_path)  # stale: not an error
    assert acquire_run_lock(tmp_path, "train_generator") == tmp_path / LOCK_NAME
    assert read_run_lock(tmp_path)["pid"] == os.getpid()
    assert release_run_lock(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left aside


def test_a_killed_holder_not_yet_reaped_is_not_alive(tmp_path):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{holder.pid}").exists() and time.monotonic() < deadline:
        if Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    try:
        with run_lock(tmp_path, "train_encoder"):
            assert read_run_lock(tmp_path)["stage"] == "train_encoder"
    finally:
        holder.wait(timeout=30)
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("kind", ["dead_pid", "reused_pid", "unreadable"])
def test_stale_locks_are_taken_over(kind, tmp_path):
    if kind == "dead_pid":
        write_lock(tmp_path, pid=dead_pid())
    elif kind == "reused_pid":  # a live process under the PID the lock names, but not the one that wrote it
        write_lock(tmp_path, pid=os.getppid(), process_start="another-boot:12345")
    else:  # a process killed between creating the file and writing it, long ago
        (tmp_path / LOCK_NAME).write_bytes(b"")
        os.utime(tmp_path / LOCK_NAME, (time.time() - 60, time.time() - 60))
    with run_lock(tmp_path, "train_generator") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_process_under_the_locks_pid_with_its_start_time_holds_it(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        token = run_lock_module.process_start_token(sleeper.pid)
        write_lock(tmp_path, pid=sleeper.pid, process_start=token)
        with pytest.raises(RunLockedError, match=f"PID {sleeper.pid}"):
            acquire_run_lock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_of_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    go = tmp_path.parent / f"{tmp_path.name}.go"
    racers = [start_holder(tmp_path, "race", str(go)) for _ in range(4)]
    time.sleep(0.5)  # let them all start and wait for the signal
    go.write_text("go")
    results = [r.communicate(timeout=60)[0].strip() for r in racers]
    assert sorted(results) == ["refused"] * 3 + ["won"], results
    assert not (tmp_path / LOCK_NAME).exists()  # the winner released it at exit
    assert [p.name for p in tmp_path.iterdir()] == []


# ---------------------------------------------------------------------------------------------------- release
def test_released_when_the_block_or_the_process_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with run_lock(tmp_path / "a"):
            assert (tmp_path / "a" / LOCK_NAME).is_file()
            raise ZeroDivisionError
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    holder = start_holder(tmp_path / "b", "raise")  # an uncaught exception ends the process: released at exit
    assert holder.wait(timeout=30) == 1 and "the step failed" in holder.stderr.read()
    assert not (tmp_path / "b" / LOCK_NAME).exists()


def test_this_process_takes_again_a_lock_it_left(tmp_path):
    """A step that raised inside a notebook or a test leaves the lock of its (still running) process."""
    acquire_run_lock(tmp_path, "train_generator")
    assert acquire_run_lock(tmp_path, "train_encoder") == tmp_path / LOCK_NAME
    assert read_run_lock(tmp_path)["stage"] == "train_encoder"
    assert release_run_lock(tmp_path) and not release_run_lock(tmp_path)


def test_bundle_training_holds_the_lock_while_it_trains_and_takes_over_a_stale_one(data, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_lock(runs, pid=dead_pid())  # a trainer killed with kill -9
    seen = []
    real_release = utils.release_run_lock

    def release(run_dir):
        seen.append(read_run_lock(run_dir))
        return real_release(run_dir)

    monkeypatch.setattr(utils, "release_run_lock", release)
    bundle_train("train_generator.json", data, runs)
    assert seen[0]["pid"] == os.getpid() and seen[0]["stage"] == "train_generator"  # at the end of run
    assert seen[1] is None  # finalize: already released
    assert not (runs / LOCK_NAME).exists() and (runs / "generator.pt").is_file()
