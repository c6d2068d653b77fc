"""Kill -9 during generator and encoder training at random moments, then run the same command again.

The command is the bundle's ``python -m monai.bundle run --config_file "['configs/common.json',
'configs/train_generator.json']" ...`` (then ``train_encoder.json``) at 8 px. Every run executes that command line
(``runpy`` of ``monai.bundle`` with the same ``sys.argv``) in a process forked from a warm interpreter
(``tests/crash_worker.py``), which saves the seconds that importing torch and MONAI takes in each run. Each run is
killed with SIGKILL at a random moment, either a random time after it starts or right when a checkpoint's temporary file
appears (in the middle of a save), until the last run completes. After every kill, every checkpoint file on disk must
load completely; every run that follows must resume from exactly the newest of them and remove the temporary files a
killed save left; the last run must reach the planned kimg with finite metrics, and its weights must equal (bit for bit)
those of a run that was never killed.

The kill moments come from ``random.Random(HQ_CRASH_SEED)`` (default 8), reported with any failure.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monai_hqanogan.utils import list_checkpoints, load_checkpoint
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, config_files, make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE / "configs"
SEED = int(os.environ.get("HQ_CRASH_SEED", "8"))
BATCH = 4
# 16 training images, batch 4: 4 iterations per epoch, a checkpoint at every epoch end
SETTINGS = {
    **TINY_SETTINGS,
    "resolution": 8,
    "channel_base": 64,
    "channel_max": 8,
    "encoder_base_channels": 8,
    "encoder_max_channels": 8,
    "generator_kimg": 0.192,  # 48 iterations
    "encoder_kimg": 0.128,  # 32 iterations
    "sample_epochs": 4,
}
FAULTS = {"generator": 4, "encoder": 2}  # kills per stage
# a killed run trains a few epochs at most (killed at its first or second save, or within 0.6 s of its start); should
# one finish first on a fast machine, its stage ends with one fault fewer
RESUMED = re.compile(r"resumed from \S*checkpoint_iteration=(\d+)\.pt")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs fork and /proc (Linux)")


def bundle_argv(config: str, data: Path, run_dir: Path) -> list[str]:
    """``python -m <this>``: one step of the bundle on the tiny dataset."""
    return [
        "monai.bundle", "run",
        "--config_file", str(config_files(config)),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(data),
        "--run_dir", str(run_dir),
        "--settings", json.dumps(SETTINGS),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


class WarmRunner:
    """Client of ``python -m tests.crash_worker``: runs a command in a process forked from a warm interpreter."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"the fork server did not start: {line!r}"

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["pid"])

    def exitcode(self, pid: int) -> int:
        """Wait for the child ``pid`` to end; its exit code (-9: killed)."""
        self.proc.stdin.write(json.dumps({"wait": pid}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["exitcode"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (an ended child that nobody waited for yet is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def temporaries(folder: Path) -> set[str]:
    """Names of the temporary files of interrupted or ongoing checkpoint saves."""
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp.pt")} if folder.is_dir() else set()


def kill_at(pid: int, moment: tuple[str, float], folder: Path, alive=None) -> bool:
    """SIGKILL ``pid`` at ``moment``: ``("time", seconds)`` after now, or ``("save", n)`` as soon as the n-th new
    temporary checkpoint file appears in ``folder``. False when the process ended first."""
    alive = alive or (lambda: _alive(pid))
    kind, value = moment
    start, before, seen = time.monotonic(), temporaries(folder), set()
    while alive():
        if kind == "time" and time.monotonic() - start >= value:
            break
        if kind == "save":
            seen |= temporaries(folder) - before
            if len(seen) >= value:
                break
        time.sleep(0.0005 if kind == "save" else 0.005)
    else:
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def complete_checkpoints(folder: Path) -> int | None:
    """Load every checkpoint in ``folder`` (each must be complete and consistent); the newest iteration or None."""
    found = list_checkpoints(folder)
    for n, path in found:
        state = load_checkpoint(path)  # raises on a half-written file
        assert state["trainer"]["iteration"] == n and state["trainer"]["training"]["nimg"] == n * BATCH, path
    return found[-1][0] if found else None


class FaultLog:
    """Faults injected into one stage and their verification by the runs that follow."""

    def __init__(self, stage: str, folder: Path) -> None:
        self.stage, self.folder = stage, folder
        self.injected = self.survived = self.mid_save = 0
        self.pending: list[int | None] = []  # the resume point each unverified fault must lead to
        self.stale: set[str] = set()

    def after_kill(self) -> None:
        self.injected += 1
        now = temporaries(self.folder)
        self.mid_save += bool(now - self.stale)  # a new temporary file: the kill hit a save
        self.stale = now
        self.pending.append(complete_checkpoints(self.folder))

    def after_run(self, log: str) -> None:
        """Check what a run that followed faults logged: it resumed from exactly the newest complete checkpoint (or
        started afresh when there was none) and removed the temporaries of killed saves."""
        if not self.pending:
            return
        found = RESUMED.findall(log)
        expected = self.pending[-1]
        if found:
            assert expected is not None and int(found[0]) == expected, (self.stage, found, self.pending, SEED)
        elif "Epoch[1] Complete" in log:
            assert expected is None, (self.stage, "started afresh instead of resuming", self.pending, SEED)
        else:
            return  # killed before it reached the resume point: the faults stay pending
        assert not (self.stale & temporaries(self.folder)), (self.stage, "stale temporary files kept", SEED)
        self.survived += len(self.pending)
        self.pending = []


def scalars(log_dir: Path, tag: str) -> list[float]:
    """Every value of ``tag`` in the TensorBoard logs of ``log_dir`` (all runs)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    values = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    values.append(float(value.tensor.float_val[0]) if value.tensor.float_val else value.simple_value)
    return values


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].keys() == sb[name].keys()
        for key in sa[name]:
            assert torch.equal(sa[name][key], sb[name][key]), (a, name, key, SEED)


def crash_stage(runner: WarmRunner, faults: FaultLog, argv: list[str], logs: list[Path], rng: random.Random) -> None:
    """Run ``argv`` again and again, killing each run at a random moment, until ``FAULTS[stage]`` faults are in
    ``faults``; then run it to the end."""
    stage, run_dir = faults.stage, faults.folder.parents[1]
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while faults.injected < FAULTS[stage]:
        attempt += 1
        moment = ("save", rng.randint(1, 2)) if attempt % 2 else ("time", rng.uniform(0.05, 0.6))
        log = run_dir / f"{stage}_run{attempt}.log"
        pid = runner.start(argv, log)
        killed = kill_at(pid, moment, faults.folder)
        code = runner.exitcode(pid)
        text = log.read_text()
        logs.append(log)
        faults.after_run(text)  # what this run did before it was killed (or finished)
        if killed and code == -signal.SIGKILL:
            faults.after_kill()
        else:
            assert code == 0, text[-3000:]
            break  # it finished before its kill (a slow machine): no work is left for more faults
    log = run_dir / f"{stage}_final.log"
    code = runner.exitcode(runner.start(argv, log))
    text = log.read_text()
    assert code == 0, text[-3000:]
    faults.after_run(text)
    logs.append(log)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash_data")
    make_tiny_dataset(root)
    return root


def test_kill_9_during_training_then_the_same_command_resumes(data, tmp_path, record_property):
    rng = random.Random(SEED)
    crashed, straight = tmp_path / "crashed", tmp_path / "straight"
    runner = WarmRunner()
    try:
        runner.wait_ready()
        # the reference runs that are never killed, next to the runs that are
        straight_g = runner.start(
            bundle_argv("train_generator.json", data, straight), tmp_path / "generator_straight.log"
        )
        g_faults, g_logs = FaultLog("generator", crashed / "generator" / "checkpoints"), []
        crash_stage(runner, g_faults, bundle_argv("train_generator.json", data, crashed), g_logs, rng)
        assert runner.exitcode(straight_g) == 0, (tmp_path / "generator_straight.log").read_text()[-3000:]

        straight_e = runner.start(bundle_argv("train_encoder.json", data, straight), tmp_path / "encoder_straight.log")
        e_faults, e_logs = FaultLog("encoder", crashed / "encoder" / "checkpoints"), []
        crash_stage(runner, e_faults, bundle_argv("train_encoder.json", data, crashed), e_logs, rng)
        assert runner.exitcode(straight_e) == 0, (tmp_path / "encoder_straight.log").read_text()[-3000:]
    finally:
        runner.close()

    for stage, faults, kimg, stage_file in (
        ("generator", g_faults, SETTINGS["generator_kimg"], "generator.pt"),
        ("encoder", e_faults, SETTINGS["encoder_kimg"], "encoder.pt"),
    ):
        folder = crashed / stage / "checkpoints"
        assert faults.injected >= FAULTS[stage] - 1 and not faults.pending, (stage, faults.injected, SEED)
        # the planned kimg was reached, and nothing of a killed save is left
        newest = complete_checkpoints(folder)
        assert newest * BATCH == round(kimg * 1000) and not temporaries(folder), stage
        # the same weights as the run that was never killed: resuming lost and repeated nothing
        assert_same_weights(crashed / stage_file, straight / stage_file)
        losses = ["loss/G", "loss/D"] if stage == "generator" else ["loss/E"]
        for tag in losses + ["progress/kimg"]:
            values = scalars(crashed / stage / "tensorboard", tag)
            assert values and all(math.isfinite(v) for v in values), (stage, tag)
        assert max(scalars(crashed / stage / "tensorboard", "progress/kimg")) == pytest.approx(kimg)
        assert faults.survived == faults.injected
    record_property("faults_injected", g_faults.injected + e_faults.injected)
    record_property("faults_survived", g_faults.survived + e_faults.survived)
    record_property("faults_mid_save", g_faults.mid_save + e_faults.mid_save)
    print(
        f"\nkill -9 faults (seed {SEED}): generator {g_faults.injected} injected / {g_faults.survived} survived "
        f"({g_faults.mid_save} during a save), encoder {e_faults.injected} / {e_faults.survived} "
        f"({e_faults.mid_save} during a save); runs: {len(g_logs)} + {len(e_logs)}"
    )
