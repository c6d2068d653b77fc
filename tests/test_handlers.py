from __future__ import annotations

import pytest
import torch
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monai_hqanogan.handlers import GeneratorSampleHandler, KimgProgressBar, TrainingCheckpointHandler
from monai_hqanogan.utils import list_checkpoints
from tests.test_stylegan2_trainer import make_trainer


def test_monai_stats_and_tensorboard_handlers_log_the_output_dict(tmp_path, capsys):
    trainer = make_trainer(max_epochs=1)
    TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=lambda x: x).attach(trainer)
    StatsHandler(name="stylegan2_test", output_transform=lambda x: x, iteration_log=True).attach(trainer)
    trainer.run()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("loss/G", "loss/D", "ada/p", "progress/kimg"):
        assert tag in tags
    kimg = [e.value for e in acc.Scalars("progress/kimg")]
    assert kimg == pytest.approx([0.008, 0.016, 0.024, 0.032])
    assert "loss/G: " in capsys.readouterr().out


def test_sample_handler_writes_png_and_tensorboard_without_touching_the_global_rng(tmp_path):
    trainer = make_trainer(max_epochs=2)
    handler = GeneratorSampleHandler(output_dir=tmp_path / "s", log_dir=tmp_path / "tb", num_samples=6, scale=2)
    handler.attach(trainer)
    trainer.run()
    pngs = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert pngs == ["samples_iteration=4.png", "samples_iteration=8.png"]
    with Image.open(handler.last_path) as img:
        # 6 samples -> 3 columns x 2 rows of 16 px with 1 px borders, enlarged twice
        assert img.size == ((3 * 17 + 1) * 2, (2 * 17 + 1) * 2)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "samples" in acc.Tags()["images"]

    state = torch.get_rng_state()
    first = handler.render(trainer.generator_ema)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, handler.render(trainer.generator_ema))  # fixed latents, constant noise
    assert first.shape == (6, 1, 16, 16) and first.abs().max() <= 1


def test_sample_handler_needs_a_destination():
    with pytest.raises(ValueError, match="must go somewhere"):
        GeneratorSampleHandler()


def test_attaching_the_sample_handler_does_not_change_training(tmp_path):
    plain = make_trainer(max_epochs=2)
    plain.run()
    with_samples = make_trainer(max_epochs=2)
    GeneratorSampleHandler(output_dir=tmp_path).attach(with_samples)
    with_samples.run()
    for a, b in zip(plain.generator.parameters(), with_samples.generator.parameters()):
        assert torch.equal(a, b)


def test_progress_bar_counts_kimg(capsys):
    trainer = make_trainer(max_epochs=2)
    bar = KimgProgressBar(disable=False)
    bar.attach(trainer)
    seen = []
    trainer.add_event_handler(
        __import__("ignite.engine", fromlist=["Events"]).Events.ITERATION_COMPLETED,
        lambda e: seen.append((bar.bar.n, bar.bar.total)),
    )
    trainer.run()
    assert seen[-1] == (pytest.approx(0.064), pytest.approx(0.064))  # 2 epochs x 4 iterations x 8 images
    assert bar.bar is None  # closed at the end
    assert "kimg" in capsys.readouterr().err


def test_checkpoint_handler_rotation_interval_and_arguments(tmp_path):
    trainer = make_trainer(max_epochs=5)
    TrainingCheckpointHandler(save_dir=tmp_path, save_interval=2, n_saved=2).attach(trainer)
    trainer.run()
    # epochs 2 and 4 (iterations 8, 16) and the end (20); only the newest two are kept
    assert [n for n, _ in list_checkpoints(tmp_path)] == [16, 20]
    with pytest.raises(ValueError, match="n_saved"):
        TrainingCheckpointHandler(save_dir=tmp_path, n_saved=0)
    with pytest.raises(ValueError, match="save_interval"):
        TrainingCheckpointHandler(save_dir=tmp_path, save_interval=-1)


def test_checkpoint_of_another_model_gives_a_clear_error(tmp_path):
    trainer = make_trainer(max_epochs=1)
    TrainingCheckpointHandler(save_dir=tmp_path).attach(trainer)
    trainer.run()
    other = make_trainer(max_epochs=2)
    other.generator.synthesis.blocks[0].const.data = torch.zeros(7, 4, 4)  # shape no longer fits
    TrainingCheckpointHandler(save_dir=tmp_path).attach(other)
    with pytest.raises(RuntimeError, match="'generator' does not fit"):
        other.run()


@pytest.mark.parametrize(
    "make_handler",
    [lambda d: KimgProgressBar(disable=True), lambda d: TrainingCheckpointHandler(d, save_on_exception=True)],
)
def test_handlers_with_exception_hooks_do_not_swallow_errors(tmp_path, make_handler):
    from monai_hqanogan.engines import NonFiniteLossError

    trainer = make_trainer(max_epochs=2)
    make_handler(tmp_path).attach(trainer)

    @trainer.on(__import__("ignite.engine", fromlist=["Events"]).Events.ITERATION_STARTED)
    def poison(engine):
        if engine.state.iteration == 2:
            with torch.no_grad():
                engine.discriminator.epilogue_out.bias.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError):
        trainer.run()
