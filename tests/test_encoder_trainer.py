from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.engines import EncoderTrainer
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.losses import DiscriminatorFeatureLoss, w_norm_loss
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.utils import CheckpointError, list_checkpoints, load_checkpoint, model_fingerprint

RES = 16


def make_models(seed: int = 0):
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32)
    d = StyleGAN2Discriminator(resolution=RES, channel_base=256, channel_max=32)
    return g.eval(), d


def generator_samples(g: StyleGAN2Generator, n: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
        return g.synthesis(g.mapping(z), noise_mode="const")


def make_trainer(g, d, data, max_epochs=1, seed=0, **kwargs) -> EncoderTrainer:
    torch.manual_seed(seed)
    e = PSPEncoder(resolution=RES, w_dim=16, num_ws=g.num_ws, base_channels=8, max_channels=32)
    loader = DataLoader(TensorDataset(data), batch_size=8, shuffle=True)
    opt = torch.optim.Adam(e.parameters(), lr=kwargs.pop("lr", 1e-3))
    return EncoderTrainer("cpu", max_epochs, loader, e, g, opt, discriminator=d, **kwargs)


def reconstruction_error(trainer: EncoderTrainer, images: torch.Tensor) -> float:
    trainer.encoder.eval()
    with torch.no_grad():
        return float((trainer.reconstruct(images)[1] - images).square().mean())


def test_training_on_generator_samples_reconstructs_far_better_than_untrained():
    g, d = make_models()
    train, held_out = generator_samples(g, 64, seed=1), generator_samples(g, 32, seed=2)
    trainer = make_trainer(g, d, train, max_epochs=25, synthetic_batch=8, lr=2e-3)  # 200 iterations
    before = reconstruction_error(trainer, held_out)
    trainer.run()
    after = reconstruction_error(trainer, held_out)
    assert trainer.state.iteration == 200
    assert after < 0.5 * before, (before, after)
    out = trainer.state.output
    for key in ("loss/E", "loss/l2", "loss/feature", "loss/w_norm", "loss/latent"):
        assert math.isfinite(out[key]), key


def test_generator_and_discriminator_stay_frozen():
    g, d = make_models()
    g_before = [p.clone() for p in g.parameters()]
    d_before = [p.clone() for p in d.parameters()]
    trainer = make_trainer(g, d, generator_samples(g, 16, 1), latent_cycle_weight=0.1)
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(g_before, g.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(d_before, d.parameters()))
    assert all(p.grad is None for p in g.parameters())
    assert torch.equal(trainer.encoder.w_avg, g.w_avg)
    assert "loss/latent_cycle" in trainer.state.output


def test_exact_resume_and_refusal_of_another_generator(tmp_path):
    g, d = make_models()
    data = generator_samples(g, 16, 1)
    straight = make_trainer(g, d, data, max_epochs=4)
    straight.run()
    first = make_trainer(g, d, data, max_epochs=2)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(first)
    first.run()
    assert set(load_checkpoint(list_checkpoints(tmp_path)[-1][1])) == {"trainer", "encoder", "optimizer"}
    resumed = make_trainer(g, d, data, max_epochs=4, seed=9)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(resumed)
    resumed.run()
    for a, b in zip(straight.encoder.state_dict().values(), resumed.encoder.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)

    g2, d2 = make_models(seed=5)
    other = make_trainer(g2, d2, data, max_epochs=6)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(other)
    with pytest.raises(CheckpointError, match="other generator/discriminator weights"):
        other.run()


def test_mismatched_models_and_options_are_refused():
    g, d = make_models()
    loader = DataLoader(TensorDataset(torch.zeros(8, 1, RES, RES)), batch_size=4)
    e = PSPEncoder(resolution=RES, w_dim=8, base_channels=4, max_channels=8)
    with pytest.raises(ValueError, match="encoder w_dim=8 does not match"):
        EncoderTrainer("cpu", 1, loader, e, g, torch.optim.Adam(e.parameters()), discriminator=d)
    e = PSPEncoder(resolution=RES, w_dim=16, num_ws=g.num_ws, base_channels=4, max_channels=8)
    with pytest.raises(ValueError, match="needs the trained discriminator"):
        EncoderTrainer("cpu", 1, loader, e, g, torch.optim.Adam(e.parameters()))
    with pytest.raises(ValueError, match="noise_mode"):
        EncoderTrainer("cpu", 1, loader, e, g, torch.optim.Adam(e.parameters()), discriminator=d, noise_mode="random")


def test_feature_loss_is_per_image_and_w_norm():
    _, d = make_models()
    loss = DiscriminatorFeatureLoss(d)
    x, y = torch.randn(4, 1, RES, RES), torch.randn(4, 1, RES, RES)
    per = loss.per_image(x, y)
    assert per.shape == (4,) and float(loss(x, x)) == 0.0
    assert torch.allclose(loss.per_image(x[:1], y[:1]), per[:1], atol=1e-6)  # independent of the batch
    assert float(w_norm_loss(torch.ones(2, 3, 4), torch.zeros(4))) == pytest.approx(4.0)
    with pytest.raises(TypeError, match="extract_features"):
        DiscriminatorFeatureLoss(torch.nn.Linear(2, 2))


def test_reconstruction_sheets_are_written(tmp_path):
    from PIL import Image

    from monai_hqanogan.handlers import ReconstructionSampleHandler

    g, d = make_models()
    data = generator_samples(g, 16, 1)
    trainer = make_trainer(g, d, data, max_epochs=2)
    handler = ReconstructionSampleHandler(data[:4], output_dir=tmp_path, log_dir=tmp_path / "tb", scale=2)
    handler.attach(trainer)
    trainer.run()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "reconstructions_iteration=2.png",
        "reconstructions_iteration=4.png",
    ]
    with Image.open(handler.last_path) as img:
        assert img.size == ((4 * 17 + 1) * 2, (2 * 17 + 1) * 2)  # inputs over reconstructions
    trainer.encoder.train()
    sheet = handler.render(trainer)
    assert trainer.encoder.training  # the mode is restored after the eval-mode sheet
    assert torch.equal(sheet[:4], data[:4]) and sheet.shape == (8, 1, RES, RES)
    with pytest.raises(ValueError, match="must go somewhere"):
        ReconstructionSampleHandler(data[:4])


def test_an_optional_perceptual_loss_is_used_with_its_weight():
    g, d = make_models()
    calls = []

    def perceptual(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(rec.shape)
        return (rec - target).abs().mean()

    trainer = make_trainer(g, d, generator_samples(g, 16, 1), perceptual_loss=perceptual, perceptual_weight=0.5)
    trainer.run()
    out = trainer.state.output
    assert len(calls) == 2 and calls[0] == (8, 1, RES, RES)
    expected = out["loss/l2"] + 0.8 * out["loss/feature"] + 0.005 * out["loss/w_norm"] + 0.5 * out["loss/perceptual"]
    assert out["loss/E"] == pytest.approx(expected, rel=1e-5)


def test_bfloat16_autocast_on_a_capable_cpu_and_channels_last_train_the_encoder(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    g, d = make_models()
    fingerprint = model_fingerprint(g, d)
    trainer = make_trainer(g, d, generator_samples(g, 16, 1), amp=True, synthetic_batch=4)
    assert trainer.use_amp
    assert next(p for p in trainer.encoder.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    trainer.run()
    assert all(math.isfinite(v) for k, v in trainer.state.output.items() if k.startswith("loss/"))
    assert model_fingerprint(g, d) == fingerprint  # the frozen networks changed layout, not values
