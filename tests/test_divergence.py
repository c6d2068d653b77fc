"""Divergence: a run resumed with an absurd learning rate hits the NaN guard and stops with ``NonFiniteLossError``
before the optimiser step, as documented; the last good checkpoints stay byte-identical and loadable; the same
command with the learning rate corrected resumes from them and trains on with finite losses."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import EncoderTrainer, NonFiniteLossError, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.utils import list_checkpoints, load_checkpoint

RES, GOOD_LR, ABSURD_LR = 8, 2e-3, 1e6
NETS = {"channel_base": 32, "channel_max": 8}


def _networks() -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    torch.manual_seed(0)
    g = StyleGAN2Generator(resolution=RES, z_dim=8, w_dim=8, mapping_layers=1, **NETS)
    return g, StyleGAN2Discriminator(resolution=RES, **NETS)


def _loader() -> DataLoader:  # 16 images, batch 4: 4 iterations per epoch
    return DataLoader(TensorDataset(make_ellipse_images(16, RES, seed=1)), batch_size=4, shuffle=True)


def generator_trainer(lr: float, epochs: int) -> StyleGAN2Trainer:
    """The same "command" every time: only the learning rate and the planned epochs change."""
    g, d = _networks()
    return StyleGAN2Trainer(
        "cpu", epochs, _loader(), g, d, stylegan2_adam(g.parameters(), lr=lr), stylegan2_adam(d.parameters(), lr=lr),
        r1_interval=2, pl_interval=2,
    )  # fmt: skip


def encoder_trainer(lr: float, epochs: int) -> EncoderTrainer:
    g, d = _networks()
    e = PSPEncoder(resolution=RES, w_dim=8, num_ws=g.num_ws, base_channels=8, max_channels=8)
    return EncoderTrainer("cpu", epochs, _loader(), e, g, torch.optim.Adam(e.parameters(), lr=lr), discriminator=d)


def _run(make, lr: float, epochs: int, folder, losses: list[float]):
    trainer = make(lr, epochs)
    TrainingCheckpointHandler(save_dir=folder, n_saved=2).attach(trainer)

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        losses.extend(v for k, v in engine.state.output.items() if k.startswith("loss/"))

    trainer.run()
    return trainer


@pytest.mark.parametrize("make", [generator_trainer, encoder_trainer], ids=["generator", "encoder"])
def test_an_absurd_learning_rate_stops_at_the_nan_guard_and_keeps_the_last_good_checkpoint(tmp_path, make):
    folder = tmp_path / "checkpoints"
    good_losses: list[float] = []
    _run(make, GOOD_LR, 2, folder, good_losses)
    assert [n for n, _ in list_checkpoints(folder)] == [4, 8]
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}

    # the same command resumed with an absurd learning rate: it takes effect, and training stops at the guard
    with pytest.raises(NonFiniteLossError, match=r"not finite at iteration \d+.*before the optimiser step.*intact"):
        _run(make, ABSURD_LR, 4, folder, [])
    # the last good checkpoints are byte-identical, loadable and finite; nothing was written after them
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == saved
    newest = load_checkpoint(folder / "checkpoint_iteration=8.pt")
    assert newest["trainer"]["training"]["nimg"] == 32
    for name, state in newest.items():
        if name != "trainer" and "optimizer" not in name:
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), name

    # with the learning rate corrected, the same command resumes from the last good checkpoint and trains on
    losses: list[float] = []
    trainer = _run(make, GOOD_LR, 3, folder, losses)
    assert trainer.state.iteration == 12 and [n for n, _ in list_checkpoints(folder)] == [8, 12]
    lrs = trainer.g_optimizer.param_groups if hasattr(trainer, "g_optimizer") else trainer.optimizer.param_groups
    assert all(group["lr"] == pytest.approx(GOOD_LR) for group in lrs)  # the configured rate, not the saved one
    assert len(losses) >= 4 and all(math.isfinite(v) for v in good_losses + losses)
