"""Data-parallel training on the CPU with gloo, run by ``tests/test_distributed.py`` through ``torchrun``:

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT_DIR

Every rank writes what it ends with to ``OUT_DIR/rank{r}.pt``; the checkpoints go to shared directories under
``OUT_DIR``. Not collected by pytest (the test module imports the model builders from here).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import torch
from ignite.engine import Events
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import EncoderTrainer, NonFiniteLossError, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.engines.distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    broadcast_module,
    distributed_world,
)
from monai_hqanogan.handlers import GeneratorSampleHandler, KimgProgressBar, TrainingCheckpointHandler
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator

RES = 8
NUM_IMAGES = 32
LOCAL_BATCH = 4  # 2 ranks x 4 = the global batch of 8: 4 iterations per epoch over 32 images
TINY = {"channel_base": 128, "channel_max": 16}
GAN_OPTIONS = {
    "r1_interval": 2,
    "pl_interval": 2,
    "ada_interval": 1,
    "ada_kimg": 1.0,
    # r_t >= -1 always exceeds this target, so p rises by (images since the last adjustment) / 1000 per D step:
    # after n steps of a global batch of 8 it is exactly n * 0.008, which checks that the count is global
    "ada_target": -2.0,
}


def images() -> torch.Tensor:
    return make_ellipse_images(NUM_IMAGES, RES, seed=3)


def make_gan(seed: int) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution=RES, z_dim=8, w_dim=8, mapping_layers=1, **TINY)
    d = StyleGAN2Discriminator(resolution=RES, **TINY)
    return g, d


def make_gan_trainer(seed: int, loader: DataLoader, max_epochs: int, **kwargs) -> StyleGAN2Trainer:
    g, d = make_gan(seed)
    return StyleGAN2Trainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        generator=g,
        discriminator=d,
        g_optimizer=stylegan2_adam(g.parameters(), reg_interval=GAN_OPTIONS["pl_interval"]),
        d_optimizer=stylegan2_adam(d.parameters(), reg_interval=GAN_OPTIONS["r1_interval"]),
        **GAN_OPTIONS,
        **kwargs,
    )


def make_encoder_trainer(seed: int, loader: DataLoader, max_epochs: int, **kwargs) -> EncoderTrainer:
    g, d = make_gan(0)  # the frozen networks: the same on every rank
    torch.manual_seed(seed)
    e = PSPEncoder(resolution=RES, w_dim=8, num_ws=g.num_ws, base_channels=4, max_channels=8)
    opt = torch.optim.Adam(e.parameters(), lr=1e-3)
    return EncoderTrainer("cpu", max_epochs, loader, e, g.eval(), opt, discriminator=d, synthetic_batch=2, **kwargs)


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def helper_checks(rank: int) -> dict:
    """all_reduce_gradients on a tiny model against the gradient of the whole batch, and the other helpers."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    torch.manual_seed(10 + rank)  # different initial weights on each rank: broadcast_module makes them rank 0's
    model = nn.ModuleDict({"used": nn.Linear(3, 2), "rank0_only": nn.Linear(3, 2), "unused": nn.Linear(3, 2)})
    broadcast_module(model)
    initial = state_of(model)
    share = slice(4 * rank, 4 * rank + 4)
    out = model["used"](x[share])
    if rank == 0:
        out = out + 0.1 * model["rank0_only"](x[share])
    loss = (out - y[share]).square().mean()
    loss.backward()
    mean_loss = all_reduce_gradients(model, extra=loss)
    stat = torch.tensor([float(rank), 10.0 * rank])
    all_reduce_mean(stat)
    return {
        "initial": initial,
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "mean_loss": mean_loss,
        "mean_stat": stat,
        "x": x,
        "y": y,
    }


def main(out_dir: Path) -> None:
    torch.distributed.init_process_group(backend="gloo")
    torch.set_num_threads(1)
    rank, world = distributed_world()
    assert world == 2, world
    result: dict = {"helpers": helper_checks(rank)}

    dataset = TensorDataset(images(), torch.arange(NUM_IMAGES))
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=LOCAL_BATCH, sampler=sampler)

    # --- StyleGAN2: 2 epochs with checkpoints, a resume to 4 epochs, and 4 epochs straight
    first = make_gan_trainer(100 + rank, loader, max_epochs=2)  # different initial weights on each rank
    ckpt = TrainingCheckpointHandler(out_dir / "gan_ckpt")
    saved: list = []
    save = ckpt.save
    ckpt.save = lambda engine: saved.append(save(engine))  # type: ignore[method-assign]
    ckpt.attach(first)
    samples = GeneratorSampleHandler(out_dir / f"samples_rank{rank}", log_dir=out_dir / f"tb_rank{rank}", num_samples=2)
    samples.attach(first)
    bar = KimgProgressBar(disable=True)
    bar.attach(first)
    seen: dict[int, list[int]] = {}
    bars: list[bool] = []
    rng: list[str] = []

    @first.on(Events.ITERATION_COMPLETED)
    def record(engine):
        seen.setdefault(engine.state.epoch, []).extend(engine.state.batch[1].tolist())
        bars.append(bar.bar is not None)
        rng.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())

    first.run()
    result["first"] = summary(first)
    result["first"].update(saved=[None if p is None else p.name for p in saved], seen=seen, bars=bars, rng=rng)
    result["sampler_epoch"] = sampler.epoch

    resumed = make_gan_trainer(200 + rank, loader, max_epochs=4)  # everything must come from the checkpoint
    handler = TrainingCheckpointHandler(out_dir / "gan_ckpt")
    handler.attach(resumed)
    resumed.run()
    result["resumed"] = summary(resumed)
    result["resumed_from"] = None if handler.resumed_from is None else handler.resumed_from.name

    straight = make_gan_trainer(100 + rank, loader, max_epochs=4)
    TrainingCheckpointHandler(out_dir / "gan_ckpt_straight").attach(straight)
    straight.run()
    result["straight"] = summary(straight)

    # --- the pSp encoder: 2 epochs with checkpoints
    encoder = make_encoder_trainer(300 + rank, loader, max_epochs=2)
    TrainingCheckpointHandler(out_dir / "enc_ckpt").attach(encoder)
    encoder.run()
    result["encoder"] = {
        "encoder": state_of(encoder.encoder),
        "nimg": encoder.nimg,
        "loss": encoder.state.output["loss/E"],
        "distributed": encoder.distributed,
    }
    result["failures"] = failures(out_dir, rank, loader)
    torch.save(result, out_dir / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def failures(out_dir: Path, rank: int, loader: DataLoader) -> dict[str, str]:
    """Errors on one rank must reach every rank (raised together, none left waiting in a collective)."""
    errors = {}
    poisoned = make_gan_trainer(100, loader, max_epochs=1)

    @poisoned.on(Events.ITERATION_STARTED)
    def poison(engine):
        if engine.state.iteration == 2 and rank == 1:
            with torch.no_grad():
                engine.discriminator.epilogue_out.bias.fill_(float("nan"))

    try:
        poisoned.run()
    except NonFiniteLossError as e:
        errors["nan"] = str(e)
    # a checkpoint directory that only rank 0 sees (no shared file system)
    own_dir = out_dir / f"ckpt_rank{rank}"
    if rank == 0:
        own_dir.mkdir()
        shutil.copy(out_dir / "gan_ckpt" / "checkpoint_iteration=16.pt", own_dir)
    lost = make_gan_trainer(100, loader, max_epochs=5)
    TrainingCheckpointHandler(own_dir).attach(lost)
    try:
        lost.run()
    except RuntimeError as e:
        errors["unshared"] = str(e)
    return errors


def summary(trainer: StyleGAN2Trainer) -> dict:
    return {
        "generator": state_of(trainer.generator),
        "generator_ema": state_of(trainer.generator_ema),
        "discriminator": state_of(trainer.discriminator),
        "nimg": trainer.nimg,
        "iteration": trainer.state.iteration,
        "ada_p": trainer.ada.p,
        "ada_rt": trainer.ada.rt,
        "pl_mean": float(trainer.pl_penalty.pl_mean),
        "output": dict(trainer.state.output),
        "world_size": trainer.world_size,
        "distributed": trainer.distributed,
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]))
