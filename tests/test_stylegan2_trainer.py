from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import NonFiniteLossError, StyleGAN2Trainer, auto_r1_gamma, stylegan2_adam
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.networks.nets import StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.utils import CheckpointError, list_checkpoints, load_checkpoint

RES = 16
SMALL = {"channel_base": 256, "channel_max": 32}


def make_trainer(seed: int = 0, data: torch.Tensor | None = None, max_epochs: int = 2, **kwargs) -> StyleGAN2Trainer:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, **SMALL)
    d = StyleGAN2Discriminator(resolution=RES, **SMALL)
    data = make_ellipse_images(32, RES, seed=1) if data is None else data
    loader = DataLoader(TensorDataset(data), batch_size=8, shuffle=True)
    options = {"r1_interval": 3, "pl_interval": 3, "ada_interval": 2, "ada_kimg": 0.5}
    options.update(kwargs)
    return StyleGAN2Trainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        generator=g,
        discriminator=d,
        g_optimizer=stylegan2_adam(g.parameters(), reg_interval=options["pl_interval"]),
        d_optimizer=stylegan2_adam(d.parameters(), reg_interval=options["r1_interval"]),
        **options,
    )


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in list(module.parameters()) + list(module.buffers())])


def test_twenty_steps_keep_every_loss_finite():
    trainer = make_trainer(max_epochs=5)  # 32 images / batch 8 = 4 iterations per epoch
    w_avg_before = trainer.generator.w_avg.clone()
    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 20 and trainer.nimg == 160 and trainer.kimg == pytest.approx(0.16)
    for key in ("loss/G", "loss/D", "reg/r1", "reg/pl", "ada/p", "ada/r_t", "progress/kimg"):
        assert math.isfinite(out[key]), key
    assert trainer.d_steps == trainer.g_steps == 20
    assert trainer.r1_gamma == pytest.approx(auto_r1_gamma(RES, 8))
    assert not torch.equal(trainer.generator.w_avg, w_avg_before)  # w_avg is tracked
    assert float(trainer.pl_penalty.pl_mean) > 0
    # the EMA follows G but is not G; buffers such as w_avg are copied
    assert not torch.equal(flat_params(trainer.generator_ema), flat_params(trainer.generator))
    assert torch.equal(trainer.generator_ema.w_avg, trainer.generator.w_avg)
    assert not trainer.generator_ema.training


def test_exact_resume(tmp_path):
    """N steps straight == N/2 steps + save + resume (fresh objects) + N/2 steps."""
    straight = make_trainer(seed=0, max_epochs=4)
    straight.run()

    first = make_trainer(seed=0, max_epochs=2)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(first)
    first.run()
    assert [n for n, _ in list_checkpoints(tmp_path)] == [4, 8]

    resumed = make_trainer(seed=123, max_epochs=4)  # other initial weights: everything must come from the file
    handler = TrainingCheckpointHandler(save_dir=tmp_path)
    handler.attach(resumed)
    resumed.run()
    assert handler.resumed_from is not None and handler.resumed_from.name == "checkpoint_iteration=8.pt"

    assert resumed.state.iteration == straight.state.iteration == 16
    assert resumed.nimg == straight.nimg and resumed.d_steps == straight.d_steps
    for name in ("generator", "generator_ema", "discriminator"):
        a, b = flat_params(getattr(straight, name)), flat_params(getattr(resumed, name))
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert resumed.ada.p == pytest.approx(straight.ada.p) and straight.ada.p > 0
    assert float(resumed.pl_penalty.pl_mean) == pytest.approx(float(straight.pl_penalty.pl_mean), rel=1e-5)
    sa, sb = straight.g_optimizer.state_dict()["state"], resumed.g_optimizer.state_dict()["state"]
    assert all(torch.allclose(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], atol=1e-8, rtol=1e-4) for k in sa)


def test_checkpoint_holds_everything_and_monai_loader_reads_it(tmp_path):
    trainer = make_trainer(max_epochs=1)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    trainer.run()
    path = list_checkpoints(tmp_path)[-1][1]
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"generator", "generator_ema", "discriminator", "g_optimizer", "d_optimizer", "trainer"}
    extra = ckpt["trainer"]["training"]
    assert extra["nimg"] == 32 and "rng" in extra and "ada" in extra and "pl_mean" in extra
    assert "mapping.w_avg" in ckpt["generator"] and "p" in extra["ada"]

    other = make_trainer(seed=5, max_epochs=1)
    CheckpointLoader(load_path=str(path), load_dict=other.checkpoint_dict(), map_location="cpu")(other)
    assert torch.equal(flat_params(other.generator), flat_params(trainer.generator))
    assert other.nimg == 32


def test_truncated_checkpoint_gives_clear_error_and_previous_stays_usable(tmp_path):
    trainer = make_trainer(max_epochs=2)
    TrainingCheckpointHandler(save_dir=tmp_path, n_saved=2).attach(trainer)
    trainer.run()
    (_, older), (_, newest) = list_checkpoints(tmp_path)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match=r"checkpoint_iteration=8\.pt.*truncated.*checkpoint_iteration=4\.pt"):
        again = make_trainer(max_epochs=3)
        TrainingCheckpointHandler(save_dir=tmp_path).attach(again)
        again.run()
    assert load_checkpoint(older)["trainer"]["training"]["nimg"] == 32  # previous one untouched and loadable
    assert newest.exists()  # nothing deleted

    newest.rename(tmp_path / "broken.bak")  # as the message says: move it away, then resuming works
    resumed = make_trainer(max_epochs=3)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(resumed)
    resumed.run()
    assert resumed.state.iteration == 12


def test_non_empty_checkpoint_dir_without_resume_is_refused(tmp_path):
    trainer = make_trainer(max_epochs=1)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    trainer.run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fresh = make_trainer(max_epochs=1)
    TrainingCheckpointHandler(save_dir=tmp_path, resume=False).attach(fresh)
    with pytest.raises(FileExistsError, match="earlier run"):
        fresh.run()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_nan_loss_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer(max_epochs=3)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    snapshot = {}

    @trainer.on(trainer_events().ITERATION_STARTED)
    def poison(engine):
        if engine.state.iteration == 6:  # after the epoch-1 checkpoint (iteration 4)
            snapshot["g"] = flat_params(engine.generator).clone()
            with torch.no_grad():
                engine.discriminator.epilogue_out.bias.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="discriminator loss = nan.*intact"):
        trainer.run()
    assert torch.equal(flat_params(trainer.generator), snapshot["g"])  # G untouched by the failed iteration
    names = [n for n, _ in list_checkpoints(tmp_path)]
    assert names == [4]
    ckpt = load_checkpoint(tmp_path / "checkpoint_iteration=4.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["discriminator"].values())


def trainer_events():
    from ignite.engine import Events

    return Events


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(8, 3, RES, RES), r"shape \[batch, 1, 16, 16\]"),
        (torch.zeros(8, 1, 2 * RES, 2 * RES), r"got \(8, 1, 32, 32\)"),
        (torch.zeros(8, RES, RES), "shape"),
    ],
)
def test_mismatched_data_is_refused_before_training(images, message):
    trainer = make_trainer(data=images, max_epochs=1)
    before = flat_params(trainer.generator).clone()
    with pytest.raises(ValueError, match=message):
        trainer.run()
    assert torch.equal(flat_params(trainer.generator), before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_is_refused(bad):
    data = make_ellipse_images(8, RES)
    data[3, 0, 2, 2] = bad
    trainer = make_trainer(data=data, max_epochs=1)
    before = flat_params(trainer.discriminator).clone()
    with pytest.raises(ValueError, match="NaN or inf"):
        trainer.run()
    assert torch.equal(flat_params(trainer.discriminator), before)


def test_empty_dataset_and_mismatched_models_are_refused():
    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, **SMALL)
    d = StyleGAN2Discriminator(resolution=RES, **SMALL)
    opts = (stylegan2_adam(g.parameters()), stylegan2_adam(d.parameters()))
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, RES, RES)), batch_size=4)
    with pytest.raises(ValueError, match="dataset is empty"):
        StyleGAN2Trainer("cpu", 1, empty, g, d, *opts)
    no_batch = DataLoader(TensorDataset(torch.zeros(3, 1, RES, RES)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="yields no batch: 3 images with batch_size=4"):
        StyleGAN2Trainer("cpu", 1, no_batch, g, d, *opts)
    loader = DataLoader(TensorDataset(make_ellipse_images(8, RES)), batch_size=4)
    d_big = StyleGAN2Discriminator(resolution=2 * RES, **SMALL)
    with pytest.raises(ValueError, match="resolution=16 does not match discriminator resolution=32"):
        StyleGAN2Trainer("cpu", 1, loader, g, d_big, *opts)


def test_total_kimg_stops_training_and_a_finished_run_does_nothing_more(tmp_path):
    trainer = make_trainer(max_epochs=100, total_kimg=0.04)  # 40 images = 5 iterations of 8
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 5 and trainer.nimg == 40
    again = make_trainer(max_epochs=100, total_kimg=0.04)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(again)
    again.run()
    assert again.state.iteration == 5 and [n for n, _ in list_checkpoints(tmp_path)] == [4, 5]  # no new file


def test_max_seconds_stops_cleanly_and_the_run_resumes(tmp_path, monkeypatch):
    import monai_hqanogan.engines.base as base

    clock = [0.0]
    monkeypatch.setattr(base.time, "perf_counter", lambda: clock[0])

    def tick(engine):  # every iteration takes 10 "seconds"
        clock[0] += 10.0

    trainer = make_trainer(max_epochs=100, total_kimg=0.08, max_seconds=25.0)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, tick)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    trainer.run()
    # checked before each batch: 0, 10, 20 s start an iteration, 30 s does not
    assert trainer.state.iteration == 3 and trainer.stopped_by == "max_seconds"
    assert [n for n, _ in list_checkpoints(tmp_path)][-1] == 3  # saved at the stop, as at any end of a run
    again = make_trainer(max_epochs=100, total_kimg=0.08, max_seconds=1000.0)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(again)
    again.run()
    assert again.state.iteration == 10 and again.nimg == 80 and again.stopped_by == "total_kimg"
    for bad in (-1.0, float("nan"), "60", True):
        with pytest.raises(ValueError, match="max_seconds"):
            make_trainer(max_seconds=bad)


@pytest.mark.parametrize("mode", ["off", "fixed"])
def test_ada_modes_keep_p(mode):
    trainer = make_trainer(max_epochs=2, ada_mode=mode)
    if mode == "fixed":
        trainer.augment_pipe.p.fill_(0.3)
    trainer.run()
    assert trainer.ada.p == pytest.approx(0.0 if mode == "off" else 0.3)


def test_stylegan2_adam_lazy_regularisation():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = stylegan2_adam(params, lr=0.002, betas=(0, 0.99), reg_interval=4)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.002 * 0.8)
    assert group["betas"] == (0.0, pytest.approx(0.99**0.8))
    assert isinstance(group["betas"][0], float)
    assert stylegan2_adam(params, lr=0.002).param_groups[0]["lr"] == 0.002


def test_amp_on_a_cpu_without_bfloat16_kernels_warns_and_trains_in_float32(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="float32"):
        trainer = make_trainer(amp=True)
    assert trainer.use_amp is False
    assert not isinstance(trainer._autocast(), torch.autocast)


def test_amp_on_a_cpu_with_bfloat16_kernels_trains_in_bfloat16(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    trainer = make_trainer(amp=True, max_epochs=1)
    assert trainer.use_amp is True
    with trainer._autocast():
        assert trainer.discriminator(torch.zeros(2, 1, RES, RES)).dtype == torch.bfloat16
    trainer.run()
    assert math.isfinite(trainer.state.output["loss/G"]) and math.isfinite(trainer.state.output["loss/D"])
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())  # autocast, not a cast


def test_channels_last_changes_the_layout_not_the_values():
    """Same seed, same data: the channels-last run ends where the contiguous one does, up to float rounding, and
    its networks (and so its checkpoints and fingerprints) hold the same values in the other layout."""
    runs = {}
    for channels_last in (False, True):
        trainer = make_trainer(max_epochs=1, channels_last=channels_last)
        conv = trainer.generator.synthesis.blocks[-1].convs[-1].conv.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) is channels_last
        trainer.run()
        runs[channels_last] = (flat_params(trainer.generator), flat_params(trainer.discriminator), trainer.state.output)
    for a, b in zip(runs[False][:2], runs[True][:2]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    assert runs[True][2]["loss/D"] == pytest.approx(runs[False][2]["loss/D"], rel=1e-3, abs=1e-4)


def test_an_iterable_dataset_without_length_trains():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(make_ellipse_images(16, RES, seed=4))

    g = StyleGAN2Generator(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, **SMALL)
    d = StyleGAN2Discriminator(resolution=RES, **SMALL)
    loader = DataLoader(Stream(), batch_size=8)
    trainer = StyleGAN2Trainer("cpu", 1, loader, g, d, stylegan2_adam(g.parameters()), stylegan2_adam(d.parameters()))
    trainer.run()
    assert trainer.nimg == 16


def test_r1_is_taken_at_the_augmented_reals():
    """R1 penalises D's gradient at the images D sees, ``A(x)`` (torch's CUDA grid_sample has no second derivative, so
    not through the augmentation as StyleGAN2-ADA does). With a contrast augmentation ``A(x) = c x`` and a linear
    critic ``D(y) = <w, y>`` the penalty is ``|w|^2`` for every image, whatever ``c`` (through the augmentation it
    would be ``c^2 |w|^2``), and the augmented images are what D is asked about."""
    from monai_hqanogan.transforms import AdaptiveAugmentPipe
    from monai_hqanogan.transforms.ada import GEOMETRIC_OPS, INTENSITY_OPS

    only_contrast = {name: 0.0 for name in GEOMETRIC_OPS + INTENSITY_OPS} | {"contrast": 1.0}
    trainer = make_trainer(augment_pipe=AdaptiveAugmentPipe(p=1.0, contrast_std=1.0, **only_contrast))
    w = torch.randn(1, 1, RES, RES)
    seen = []

    def linear_critic(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.detach())
        return (images * w).flatten(1).sum(dim=1)

    trainer.discriminator = linear_critic
    reals = make_ellipse_images(64, RES, seed=3)
    torch.manual_seed(0)
    penalty = trainer.r1_of_reals(reals)
    torch.testing.assert_close(penalty, w.square().sum().expand(64), rtol=1e-5, atol=1e-4)
    torch.manual_seed(0)
    torch.testing.assert_close(seen[0], trainer.augment_pipe(reals))  # D was asked about A(x), the same draws
    assert not torch.allclose(seen[0], reals)
