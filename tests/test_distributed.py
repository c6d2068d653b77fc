"""Data-parallel training: two gloo ranks on the CPU through ``torchrun`` (``tests/distributed_worker.py``), and a
single process, with and without a process group of one rank, where nothing may change."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Events
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from monai_hqanogan.engines.distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    any_rank,
    broadcast_module,
    check_same_on_all_ranks,
    distributed_world,
    is_main_process,
    split_rng_streams,
)
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.utils import list_checkpoints, load_checkpoint
from tests.distributed_worker import NUM_IMAGES, images, make_encoder_trainer, make_gan_trainer

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: more threads only oversubscribe the CPU

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
MODELS = ("generator", "generator_ema", "discriminator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Run the two-rank worker once; give the directory it wrote to and each rank's results."""
    out = tmp_path_factory.mktemp("ddp")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "distributed_worker.py"),
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun timed out after {e.timeout} s.\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(
            f"torchrun failed with exit code {proc.returncode}.\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, ranks


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


def single_process_loader() -> DataLoader:
    return DataLoader(TensorDataset(images()), batch_size=GLOBAL_BATCH, shuffle=True)


# ---------------------------------------------------------------------------------------------- two ranks
def test_all_reduce_gradients_equals_the_gradient_of_the_whole_batch(ddp):
    _, ranks = ddp
    h0, h1 = ranks[0]["helpers"], ranks[1]["helpers"]
    # broadcast_module: rank 1 started from other weights and now holds rank 0's
    torch.manual_seed(10)
    model = nn.ModuleDict({"used": nn.Linear(3, 2), "rank0_only": nn.Linear(3, 2), "unused": nn.Linear(3, 2)})
    assert_same_state(h0["initial"], model.state_dict(), "rank 0")
    assert_same_state(h1["initial"], model.state_dict(), "rank 1")
    # the reference: the mean loss over the concatenated batch, the second module only on rank 0's half
    x, y = h0["x"], h0["y"]
    out = model["used"](x)
    out = torch.cat([out[:4] + 0.1 * model["rank0_only"](x[:4]), out[4:]])
    loss = (out - y).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        for h in (h0, h1):
            if name.startswith("unused"):
                assert h["grads"][name] is None  # None on every rank stays None
            else:
                torch.testing.assert_close(h["grads"][name], p.grad, atol=1e-6, rtol=1e-5)
        if h0["grads"][name] is not None:
            assert torch.equal(h0["grads"][name], h1["grads"][name])
    for h in (h0, h1):
        torch.testing.assert_close(h["mean_loss"], loss.detach().reshape(1), atol=1e-6, rtol=1e-5)
        assert torch.equal(h["mean_stat"], torch.tensor([0.5, 5.0]))


@pytest.mark.parametrize("run", ["first", "resumed", "straight"])
def test_gan_replicas_end_bit_identical(ddp, run):
    _, (r0, r1) = ddp
    for name in MODELS:
        assert_same_state(r0[run][name], r1[run][name], f"{run} {name}")
    for key in ("nimg", "iteration", "ada_p", "ada_rt", "pl_mean", "output"):
        assert r0[run][key] == r1[run][key], key
    assert r0[run]["distributed"] and r0[run]["world_size"] == 2
    assert r0[run]["pl_mean"] > 0 and r0[run]["ada_rt"] is not None


def test_progress_counts_the_global_batch(ddp):
    _, ranks = ddp
    for r in ranks:
        # 4 iterations per epoch of 2 ranks x 4 images; ADA's count is global too (p rises 8 / 1000 per D step)
        assert r["first"]["iteration"] == 8 and r["first"]["nimg"] == 2 * NUM_IMAGES
        assert r["first"]["ada_p"] == pytest.approx(8 * 0.008)
        assert r["first"]["output"]["progress/kimg"] == pytest.approx(0.064)
        assert r["resumed"]["iteration"] == 16 and r["resumed"]["nimg"] == 4 * NUM_IMAGES
        assert r["resumed"]["ada_p"] == pytest.approx(16 * 0.008)
        assert r["encoder"]["nimg"] == 2 * NUM_IMAGES


def test_each_rank_trains_on_its_own_shard_with_its_own_random_stream(ddp):
    _, (r0, r1) = ddp
    seen0, seen1 = r0["first"]["seen"], r1["first"]["seen"]
    for epoch in (1, 2):
        assert not set(seen0[epoch]) & set(seen1[epoch])
        assert sorted(seen0[epoch] + seen1[epoch]) == list(range(NUM_IMAGES))
    assert seen0[1] != seen0[2]  # MONAI's Workflow calls DistributedSampler.set_epoch at each epoch start
    assert r0["sampler_epoch"] == 2
    assert all(a != b for a, b in zip(r0["first"]["rng"], r1["first"]["rng"]))


def test_only_rank_0_writes_files_and_resume_under_ddp_is_exact(ddp):
    out, (r0, r1) = ddp
    assert r0["first"]["saved"] == ["checkpoint_iteration=4.pt", "checkpoint_iteration=8.pt", None]
    assert r1["first"]["saved"] == [None, None, None]
    assert [n for n, _ in list_checkpoints(out / "gan_ckpt")] == [12, 16]
    assert not list((out / "gan_ckpt").glob(".*.tmp"))
    assert r0["resumed_from"] == r1["resumed_from"] == "checkpoint_iteration=8.pt"
    assert sorted(p.name for p in (out / "samples_rank0").iterdir()) == [
        "samples_iteration=4.png",
        "samples_iteration=8.png",
    ]
    assert not (out / "samples_rank1").exists() and not (out / "tb_rank1").exists()
    assert list((out / "tb_rank0").glob("events.out.tfevents.*"))
    assert all(r0["first"]["bars"]) and not any(r1["first"]["bars"])
    # 2 epochs + checkpoint + resume (other initial weights) + 2 epochs == 4 epochs straight, on every rank
    for r in (r0, r1):
        for name in MODELS:
            assert_same_state(r["resumed"][name], r["straight"][name], name)


def test_ddp_checkpoint_loads_and_resumes_in_a_single_process(ddp, tmp_path):
    out, (r0, _) = ddp
    path = out / "gan_ckpt" / "checkpoint_iteration=16.pt"
    ckpt = load_checkpoint(path)
    single = make_gan_trainer(5, single_process_loader(), max_epochs=5)
    assert not single.distributed and single.world_size == 1
    assert set(ckpt) == set(single.checkpoint_dict())  # the same entries as a single-process checkpoint
    for name in MODELS:  # the same keys (no "module." prefixes) and shapes
        state = getattr(single, name).state_dict()
        assert {k: v.shape for k, v in ckpt[name].items()} == {k: v.shape for k, v in state.items()}, name
    TrainingCheckpointHandler(tmp_path).load_into(ckpt, single, source=path)
    for name in MODELS:
        assert_same_state(getattr(single, name).state_dict(), r0["resumed"][name], name)

    shutil.copytree(out / "gan_ckpt", tmp_path / "resume")
    resumed = make_gan_trainer(6, single_process_loader(), max_epochs=5)
    handler = TrainingCheckpointHandler(tmp_path / "resume")
    handler.attach(resumed)
    resumed.run()
    assert handler.resumed_from.name == "checkpoint_iteration=16.pt"
    assert resumed.state.iteration == 20 and resumed.nimg == 5 * NUM_IMAGES
    assert resumed.ada.p == pytest.approx(20 * 0.008)
    assert all(torch.isfinite(torch.tensor(v)) for v in resumed.state.output.values())


def test_encoder_replicas_end_bit_identical_and_resume_in_a_single_process(ddp, tmp_path):
    out, (r0, r1) = ddp
    assert r0["encoder"]["distributed"]
    assert_same_state(r0["encoder"]["encoder"], r1["encoder"]["encoder"], "encoder")  # batch-norm statistics too
    assert r0["encoder"]["loss"] == r1["encoder"]["loss"]
    ckpt = load_checkpoint(list_checkpoints(out / "enc_ckpt")[-1][1])
    assert set(ckpt) == {"trainer", "encoder", "optimizer"}
    assert_same_state(ckpt["encoder"], r0["encoder"]["encoder"], "checkpoint")

    shutil.copytree(out / "enc_ckpt", tmp_path / "resume")
    single = make_encoder_trainer(7, single_process_loader(), max_epochs=3)
    TrainingCheckpointHandler(tmp_path / "resume").attach(single)
    single.run()
    assert single.state.iteration == 12 and single.nimg == 3 * NUM_IMAGES


def test_an_error_on_one_rank_is_raised_on_every_rank(ddp):
    _, ranks = ddp
    for r in ranks:
        # rank 1's D turned NaN: the averaged gradients are NaN everywhere, all ranks stop before the step
        assert "nan" in r["failures"]["nan"] and "intact" in r["failures"]["nan"]
        assert "the ranks disagree on the newest checkpoint" in r["failures"]["unshared"]


# ---------------------------------------------------------------------------------------------- one process
def test_helpers_do_nothing_without_a_process_group():
    assert not dist.is_initialized()
    assert distributed_world() == (0, 1) and is_main_process()
    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    broadcast_module(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(all_reduce_gradients(model, extra=[torch.tensor(2.0), torch.ones(2)]), torch.tensor([2.0, 1, 1]))
    assert all_reduce_gradients(model) is None
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    t = torch.tensor([1.5, 2.5])
    assert all_reduce_mean(t) is t and torch.equal(t, torch.tensor([1.5, 2.5]))
    assert any_rank(True) and not any_rank(False)
    check_same_on_all_ranks({"iteration": 3})
    state = torch.get_rng_state()
    split_rng_streams()
    assert torch.equal(torch.get_rng_state(), state)

    trainer = make_gan_trainer(0, single_process_loader(), max_epochs=1)
    assert not trainer.distributed and (trainer.rank, trainer.world_size) == (0, 1)
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        make_gan_trainer(0, single_process_loader(), max_epochs=1, distributed=True)


def test_a_distributed_sampler_in_a_batch_sampler_is_reshuffled_every_epoch():
    dataset = TensorDataset(images())
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size=4, drop_last=False))
    trainer = make_gan_trainer(0, loader, max_epochs=2)
    order: dict[int, list] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: order.setdefault(e.state.epoch, []).append(float(e.state.batch[0].sum()))
    )
    trainer.run()
    assert sampler.epoch == 2 and order[1] != order[2]


def _train(make, tmp_path: Path, name: str, **kwargs):
    trainer = make(0, single_process_loader(), max_epochs=2, **kwargs)
    TrainingCheckpointHandler(tmp_path / name).attach(trainer)
    trainer.run()
    return trainer


def test_a_process_group_of_one_rank_changes_nothing(tmp_path):
    plain_gan = _train(make_gan_trainer, tmp_path, "plain_gan")
    plain_enc = _train(make_encoder_trainer, tmp_path, "plain_enc")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        auto = make_gan_trainer(0, single_process_loader(), max_epochs=1)
        assert not auto.distributed and not auto.ada.distributed  # auto: one rank is not data-parallel
        # forced on: the distributed code paths with collectives over one rank give the same bits
        gan = _train(make_gan_trainer, tmp_path, "gan", distributed=True)
        enc = _train(make_encoder_trainer, tmp_path, "enc", distributed=True)
    finally:
        dist.destroy_process_group()
    assert gan.distributed and gan.world_size == 1
    for name in MODELS:
        assert_same_state(getattr(gan, name).state_dict(), getattr(plain_gan, name).state_dict(), name)
    assert gan.nimg == plain_gan.nimg == 2 * NUM_IMAGES
    assert gan.state.output == plain_gan.state.output
    assert_same_state(enc.encoder.state_dict(), plain_enc.encoder.state_dict(), "encoder")
    assert enc.state.output == plain_enc.state.output
    for name in ("gan", "enc"):
        assert [n for n, _ in list_checkpoints(tmp_path / name)] == [4, 8]
