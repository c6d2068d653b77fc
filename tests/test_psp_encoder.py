from __future__ import annotations

import pytest
import torch

from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Generator, style_groups


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_match_the_generator(resolution, channels):
    g = StyleGAN2Generator(
        resolution=resolution, img_channels=channels, z_dim=16, w_dim=16, **{"channel_base": 256, "channel_max": 16}
    )
    e = PSPEncoder(
        resolution=resolution, img_channels=channels, w_dim=16, num_ws=g.num_ws, base_channels=4, max_channels=16
    )
    ws = e(torch.randn(3, channels, resolution, resolution))
    assert ws.shape == (3, g.num_ws, 16) and ws.dtype == torch.float32
    assert g.synthesis(ws).shape == (3, channels, resolution, resolution)
    assert e.num_ws == PSPEncoder(resolution=resolution).num_ws == 2 * resolution.bit_length() - 4


def test_untrained_encoder_returns_w_avg_and_gradients_reach_every_parameter():
    w_avg = torch.randn(16)
    e = PSPEncoder(resolution=16, w_dim=16, base_channels=4, max_channels=16, w_avg=w_avg)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(e(x), w_avg.expand(2, e.num_ws, 16))
    # after one optimiser step the zero-initialised heads move, and then every parameter receives a gradient
    opt = torch.optim.SGD(e.parameters(), lr=0.1)
    e(x).square().sum().backward()
    opt.step()
    opt.zero_grad()
    e(x).square().sum().backward()
    for name, p in e.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_style_groups_follow_the_generator_resolutions():
    assert [list(r) for r in style_groups(14)] == [[0, 1, 2], [3, 4, 5, 6], list(range(7, 14))]
    assert [list(r) for r in style_groups(4)] == [[0, 1, 2], [3], []]


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 16, 16), r"\[batch, 1, 16, 16\]"), ((2, 1, 32, 32), "got \\(2, 1, 32, 32\\)"), ((1, 16, 16), "shape")],
)
def test_wrong_input_is_refused(shape, message):
    e = PSPEncoder(resolution=16, w_dim=8, base_channels=4, max_channels=8)
    with pytest.raises(ValueError, match=message):
        e(torch.zeros(shape))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        PSPEncoder(resolution=24)
    with pytest.raises(ValueError, match="w_avg must have shape"):
        PSPEncoder(resolution=8, w_dim=8, w_avg=torch.zeros(4))


def test_trace_round_trip():
    e = PSPEncoder(resolution=16, w_dim=8, base_channels=4, max_channels=8, w_avg=torch.randn(8)).eval()
    x = torch.randn(2, 1, 16, 16)
    traced = torch.jit.trace(e, x)
    assert torch.allclose(traced(x), e(x), atol=1e-6)


def test_monai_resnet_backbone_and_local_weights(tmp_path):
    from monai.networks.nets import resnet18

    from monai_hqanogan.utils import CheckpointError

    reference = resnet18(spatial_dims=2, n_input_channels=1, conv1_t_stride=2, num_classes=1)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    e = PSPEncoder(resolution=32, w_dim=8, backbone="resnet18", backbone_weights=tmp_path / "resnet18.pt")
    assert torch.equal(e.backbone.stem[0].weight, reference.conv1.weight)
    assert e(torch.randn(2, 1, 32, 32)).shape == (2, e.num_ws, 8)
    assert e.backbone.out_channels == (64, 128, 256)
    torch.save({"conv1.weight": reference.conv1.weight}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lack"):
        PSPEncoder(resolution=32, w_dim=8, backbone="resnet18", backbone_weights=tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="resolution >= 32"):
        PSPEncoder(resolution=16, backbone="resnet18")
    with pytest.raises(ValueError, match="backbone must be"):
        PSPEncoder(resolution=32, backbone="vgg")
    with pytest.raises(ValueError, match="only applies"):
        PSPEncoder(resolution=32, backbone_weights=tmp_path / "resnet18.pt")
