"""Determinism on the CPU: two 50-step training runs with the same seed give bit-identical weights (G, G_ema, D, the
optimiser states, ADA's p and the path-length mean; E for the encoder trainer), which training did change."""

from __future__ import annotations

import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import EncoderTrainer, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator

RES, STEPS = 8, 50
NETS = {"channel_base": 32, "channel_max": 8}


def _loader() -> DataLoader:
    # 8 images, batch 4, shuffled by torch's generator: 2 steps per epoch
    return DataLoader(TensorDataset(make_ellipse_images(8, RES, seed=1)), batch_size=4, shuffle=True)


def _networks() -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    g = StyleGAN2Generator(resolution=RES, z_dim=8, w_dim=8, mapping_layers=1, **NETS)
    return g, StyleGAN2Discriminator(resolution=RES, **NETS)


def generator_run(seed: int, initial: dict | None = None) -> dict[str, torch.Tensor]:
    set_determinism(seed=seed)
    g, d = _networks()
    if initial is not None:
        initial.update({f"generator.{n}": t.clone() for n, t in g.state_dict().items()})
    trainer = StyleGAN2Trainer(
        "cpu", STEPS // 2, _loader(), g, d,
        stylegan2_adam(g.parameters(), reg_interval=2), stylegan2_adam(d.parameters(), reg_interval=4),
        r1_interval=4, pl_interval=2, ada_interval=2, ada_kimg=0.1,
    )  # fmt: skip
    trainer.run()
    set_determinism(seed=None)
    assert trainer.state.iteration == STEPS and trainer.ada.p > 0  # every part (R1, path length, ADA) ran
    state = {f"{k}.{n}": t for k in ("generator", "generator_ema", "discriminator")
             for n, t in getattr(trainer, k).state_dict().items()}  # fmt: skip
    for k in ("g_optimizer", "d_optimizer"):
        for i, s in getattr(trainer, k).state_dict()["state"].items():
            state.update({f"{k}.{i}.{n}": t for n, t in s.items() if isinstance(t, torch.Tensor)})
    state["ada.p"] = torch.tensor(trainer.ada.p)
    state["pl_mean"] = trainer.pl_penalty.pl_mean.clone()
    return state


def encoder_run(seed: int, initial: dict | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(100)  # the same frozen G and D for every run
    g, d = _networks()
    set_determinism(seed=seed)
    e = PSPEncoder(resolution=RES, w_dim=8, num_ws=g.num_ws, base_channels=8, max_channels=8)
    if initial is not None:
        initial.update({f"encoder.{n}": t.clone() for n, t in e.state_dict().items()})
    trainer = EncoderTrainer(
        "cpu", STEPS // 2, _loader(), e, g, torch.optim.Adam(e.parameters(), lr=1e-3), discriminator=d,
        synthetic_batch=2,
    )  # fmt: skip
    trainer.run()
    set_determinism(seed=None)
    assert trainer.state.iteration == STEPS
    return {f"encoder.{n}": t.clone() for n, t in e.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], different[:5]


def _changed(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> float:
    """The fraction of the initial tensors that training changed."""
    return sum(not torch.equal(t, final[k]) for k, t in initial.items()) / len(initial)


def test_two_generator_runs_with_one_seed_give_identical_weights():
    initial: dict[str, torch.Tensor] = {}
    first, second = generator_run(0, initial), generator_run(0)
    _assert_identical(first, second)
    assert _changed(initial, first) > 0.5  # the weights did move, so equality is not trivial
    assert all(torch.isfinite(t).all() for t in first.values())


def test_two_encoder_runs_with_one_seed_give_identical_weights():
    initial: dict[str, torch.Tensor] = {}
    first, second = encoder_run(0, initial), encoder_run(0)
    _assert_identical(first, second)
    assert _changed(initial, first) > 0.5
