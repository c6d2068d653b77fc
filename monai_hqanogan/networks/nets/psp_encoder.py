"""pixel2style2pixel (pSp) encoder: image -> W+ codes of a StyleGAN2 generator.

Richardson et al., "Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation", CVPR 2021,
https://arxiv.org/abs/2008.00951. Written from the paper.

A residual backbone (trained from scratch: no downloaded weights; or a MONAI ResNet, optionally initialised from
a local weights file) gives feature maps at three scales; a feature
pyramid merges them top-down; one small "map2style" head per style vector reduces its map to a w. As in pSp,
coarse styles (the generator's 4-8 px layers) come from the smallest map, middle styles (16-32 px) from the middle
map and fine styles (64 px and up) from the largest. The output is ``w_avg + offsets``: the heads' last layers
start at zero, so an untrained encoder returns the generator's average w for every layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from monai_hqanogan.networks.layers import EqualizedLinear
from monai_hqanogan.utils.checkpoint import CheckpointError, load_checkpoint
from monai_hqanogan.utils.validation import check_image_batch, check_resolution

__all__ = ["PSPEncoder", "style_groups"]

#: style index boundaries in StyleGAN2's W+: [0, 3) drive 4-8 px, [3, 7) 16-32 px, [7, ...) 64 px and up
COARSE_END, MIDDLE_END = 3, 7


def style_groups(num_ws: int) -> tuple[range, range, range]:
    """The (coarse, middle, fine) style indices of a W+ with ``num_ws`` vectors."""
    c, m = min(COARSE_END, num_ws), min(MIDDLE_END, num_ws)
    return range(0, c), range(c, m), range(m, num_ws)


class _ResidualBlock(nn.Module):
    """conv3x3(stride) - BN - LeakyReLU - conv3x3 - BN, plus a (strided 1x1) shortcut, then LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), 0.2)


class _Map2Style(nn.Module):
    """Stride-2 3x3 convolutions from a ``spatial`` x ``spatial`` map down to 1x1, then a linear layer to w."""

    def __init__(self, channels: int, w_dim: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = spatial
        while size > 1:
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            size = (size + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.linear = EqualizedLinear(channels, w_dim)
        nn.init.zeros_(self.linear.weight)  # start exactly at w_avg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class _ResidualBackbone(nn.Module):
    """Our backbone, trained from scratch: a stem at full resolution, then stride-2 residual stages down to the
    coarsest pyramid scale. Returns the maps at the three pyramid sizes (fine, middle, coarse)."""

    def __init__(
        self, resolution: int, img_channels: int, sizes: tuple[int, int, int], base: int, cmax: int, blocks: int
    ) -> None:
        super().__init__()
        ch = lambda size: min(base * (resolution // size), cmax)  # noqa: E731
        self.sizes = sizes
        self.out_channels = tuple(ch(s) for s in sizes)
        self.stem = nn.Sequential(
            nn.Conv2d(img_channels, ch(resolution), 3, padding=1, bias=False),
            nn.BatchNorm2d(ch(resolution)),
            nn.LeakyReLU(0.2),
        )
        self.stages = nn.ModuleList()
        self.stage_sizes: list[int] = []
        size = resolution
        while size > sizes[2]:
            stage = [_ResidualBlock(ch(size), ch(size // 2), stride=2)]
            stage += [_ResidualBlock(ch(size // 2), ch(size // 2), stride=1) for _ in range(blocks - 1)]
            self.stages.append(nn.Sequential(*stage))
            size //= 2
            self.stage_sizes.append(size)
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)
        maps = {self.resolution: h}
        for stage, size in zip(self.stages, self.stage_sizes):
            h = stage(h)
            maps[size] = h
        return [maps[s] for s in self.sizes]


class _MonaiResNetBackbone(nn.Module):
    """A MONAI ResNet (2D) as the backbone: layer1, layer2 and layer3 give the R/4, R/8 and R/16 maps, as the
    IR-SE-50 stages do in pSp. Optionally initialised from a local state-dict file."""

    def __init__(self, name: str, img_channels: int, weights: str | os.PathLike | None) -> None:
        super().__init__()
        from monai.networks import nets as monai_nets

        net = getattr(monai_nets, name)(spatial_dims=2, n_input_channels=img_channels, conv1_t_stride=2, num_classes=1)
        if weights is not None:
            state = load_checkpoint(weights)
            state = state.get("state_dict", state)
            result = net.load_state_dict(state, strict=False)
            if result.missing_keys:
                raise CheckpointError(f"backbone weights {str(weights)!r} lack {result.missing_keys[:5]} ...")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, img_channels, 64, 64))
        self.out_channels = tuple(int(t.shape[1]) for t in probe)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        return [c1, c2, self.layer3(c2)]


class PSPEncoder(nn.Module):
    """pSp encoder mapping [B, C, R, R] images to W+ codes [B, num_ws, w_dim] = ``w_avg`` + offsets.

    Args:
        resolution: input resolution, a power of two in [8, 1024] (the generator's).
        img_channels: input channels (1 for grey-scale medical images).
        w_dim: width of w (the generator's).
        num_ws: number of style vectors (the generator's ``num_ws``); default ``2 * log2(resolution) - 2``.
        base_channels: backbone channels at the input resolution; doubled per down-sampling stage.
        max_channels: maximum backbone and pyramid channels.
        blocks_per_stage: residual blocks per backbone stage (the first one down-samples).
        w_avg: the generator's average w (``generator.w_avg``); can be set later with :meth:`set_w_avg`.
        backbone: ``"residual"`` (ours, trained from scratch; ``base_channels``, ``max_channels`` and
            ``blocks_per_stage`` apply) or a MONAI ResNet: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (needs
            ``resolution >= 32``).
        backbone_weights: a local state-dict file for the MONAI ResNet (e.g. converted from a pretrained 2D
            model); loaded with ``weights_only=True``. Nothing is downloaded.

    Example::

        g = StyleGAN2Generator(resolution=32, z_dim=64, w_dim=64, channel_base=1024, channel_max=64)
        e = PSPEncoder(resolution=32, w_dim=64, num_ws=g.num_ws, w_avg=g.w_avg)
        ws = e(torch.randn(2, 1, 32, 32))   # [2, g.num_ws, 64]
        x_rec = g.synthesis(ws)
    """

    def __init__(
        self,
        resolution: int = 256,
        img_channels: int = 1,
        w_dim: int = 512,
        num_ws: int | None = None,
        base_channels: int = 32,
        max_channels: int = 512,
        blocks_per_stage: int = 2,
        w_avg: torch.Tensor | None = None,
        backbone: str = "residual",
        backbone_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        if img_channels < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"need img_channels >= 1 and blocks_per_stage >= 1, got {img_channels}, {blocks_per_stage}."
            )
        self.resolution, self.img_channels, self.w_dim = resolution, img_channels, w_dim
        self.num_ws = 2 * log2 - 2 if num_ws is None else int(num_ws)
        if self.num_ws < 1:
            raise ValueError(f"num_ws must be >= 1, got {self.num_ws}.")
        # the three pyramid scales: pSp's R/4, R/8, R/16, but never below 8, 4, 2 px
        self.sizes = (max(resolution // 4, 8), max(resolution // 8, 4), max(resolution // 16, 2))
        if backbone == "residual":
            self.backbone: nn.Module = _ResidualBackbone(
                resolution, img_channels, self.sizes, base_channels, max_channels, blocks_per_stage
            )
        elif backbone in ("resnet18", "resnet34", "resnet50"):
            if resolution < 32:
                raise ValueError(f"a MONAI ResNet backbone needs resolution >= 32, got {resolution}.")
            self.backbone = _MonaiResNetBackbone(backbone, img_channels, backbone_weights)
        else:
            raise ValueError(f"backbone must be 'residual', 'resnet18', 'resnet34' or 'resnet50', got {backbone!r}.")
        if backbone_weights is not None and backbone == "residual":
            raise ValueError("backbone_weights only applies to the MONAI ResNet backbones.")
        fine_ch, middle_ch, top = self.backbone.out_channels
        coarse, middle, fine = style_groups(self.num_ws)
        # pyramid levels without styles to drive are not built (no unused parameters, e.g. for DDP)
        self.lateral_middle = nn.Conv2d(middle_ch, top, 1) if len(middle) + len(fine) else None
        self.lateral_fine = nn.Conv2d(fine_ch, top, 1) if len(fine) else None
        spatial = [self.sizes[2]] * len(coarse) + [self.sizes[1]] * len(middle) + [self.sizes[0]] * len(fine)
        self.heads = nn.ModuleList([_Map2Style(top, w_dim, s) for s in spatial])
        self.register_buffer("w_avg", torch.zeros(w_dim))
        if w_avg is not None:
            self.set_w_avg(w_avg)

    def set_w_avg(self, w_avg: torch.Tensor) -> None:
        """Copy the generator's average w (the code an untrained encoder returns)."""
        if w_avg.shape != (self.w_dim,):
            raise ValueError(f"w_avg must have shape ({self.w_dim},), got {tuple(w_avg.shape)}.")
        with torch.no_grad():
            self.w_avg.copy_(w_avg.detach())

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """The (fine, middle, coarse) pyramid maps after the top-down merge (None for levels without styles)."""
        check_image_batch(x, self.img_channels, self.resolution, "PSPEncoder")
        c_fine, c_middle, coarse = self.backbone(x)
        middle = fine = None
        if self.lateral_middle is not None:
            middle = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
            middle = middle + self.lateral_middle(c_middle)
        if self.lateral_fine is not None and middle is not None:
            fine = F.interpolate(middle, scale_factor=2, mode="bilinear", align_corners=False)
            fine = fine + self.lateral_fine(c_fine)
        return fine, middle, coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine, middle, coarse = self.pyramid(x)
        groups = style_groups(self.num_ws)
        sources = [coarse] * len(groups[0]) + [middle] * len(groups[1]) + [fine] * len(groups[2])
        offsets = torch.stack([head(src) for head, src in zip(self.heads, sources)], dim=1)
        return self.w_avg.to(offsets.dtype) + offsets
