"""Code paths that first broke on a GPU, checked here on the CPU with stand-ins for what differs on CUDA.

- torch has no second derivative of ``grid_sample`` on CUDA (the CPU kernel has one): R1 must not back-propagate
  twice through ADA's geometric augmentation. A once-differentiable augmentation reproduces that on the CPU.
- a detector moved to CUDA keeps its calibration buffers there while the calibration gathers scores on the CPU:
  the calibration's arithmetic must follow its buffers' device. A calibration on the "meta" device stands in.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.engines import StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.networks.nets import StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.scoring import SCORE_NAMES, AnomalyCalibration
from monai_hqanogan.transforms import AdaptiveAugmentPipe

from .test_detector import calibrated


class _OnceDifferentiable(torch.autograd.Function):
    """Identity whose backward cannot itself be differentiated, like CUDA's ``grid_sampler_2d_backward``."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad


class _CudaLikeAugment(AdaptiveAugmentPipe):
    def forward(self, images: torch.Tensor, p: float | None = None) -> torch.Tensor:
        return _OnceDifferentiable.apply(super().forward(images, p))


def test_once_differentiable_stand_in_rejects_double_backward():
    x = torch.randn(2, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(_OnceDifferentiable.apply(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_r1_does_not_differentiate_twice_through_the_augmentation(single_thread):
    torch.manual_seed(0)
    g = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=16)
    d = StyleGAN2Discriminator(resolution=16, channel_base=64, channel_max=16)
    pipe = _CudaLikeAugment()
    pipe.p.fill_(1.0)
    loader = DataLoader(TensorDataset(torch.rand(16, 1, 16, 16) * 2 - 1), batch_size=8, drop_last=True)
    trainer = StyleGAN2Trainer(
        "cpu", 2, loader, g, d, stylegan2_adam(g.parameters(), lr=0.002, reg_interval=4),
        stylegan2_adam(d.parameters(), lr=0.002, reg_interval=1), augment_pipe=pipe, ada_mode="fixed", r1_interval=1,
    )  # fmt: skip
    trainer.run()
    assert trainer.state.iteration == 4
    r1 = trainer._last["reg/r1"]
    assert r1 == r1 and r1 > 0  # the penalty was computed (finite, positive) at every D step


def test_calibration_arithmetic_follows_its_buffers_device():
    cal = AnomalyCalibration(num_ws=2, w_dim=4).to("meta")
    comps = {name: torch.rand(5) for name in SCORE_NAMES}  # gathered on the CPU
    z = cal.normalise(comps)
    assert z.device.type == "meta" and z.shape == (5, len(SCORE_NAMES))
    assert cal.combine(comps).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_calibrate_and_detect_on_cuda():
    det, normal = calibrated()
    cpu = det.detect_all(normal)["pred_score"]
    det, normal = calibrated()
    det = det.cuda()
    lesioned = normal.clone()
    det.calibrate(normal, torch.cat([normal[:12], lesioned[12:]]), torch.cat([torch.zeros(12), torch.ones(12)]))
    record = det.detect_all(normal)
    assert record["pred_score"].device.type == "cpu" and torch.isfinite(record["pred_score"]).all()
    assert cpu.shape == record["pred_score"].shape
