"""Losses for training the pSp encoder against a frozen StyleGAN2.

Richardson et al., "Encoding in Style" (pSp), CVPR 2021, https://arxiv.org/abs/2008.00951: pixel L2, a perceptual
term (LPIPS in the paper) and a regulariser that keeps the codes near the average w. Pretrained perception networks
cannot be downloaded on offline machines, so the default perceptual term compares features of our own trained
discriminator (as f-AnoGAN's izi_f loss does, Schlegl et al., MedIA 2019,
https://doi.org/10.1016/j.media.2019.01.010); MONAI's ``PerceptualLoss`` or LPIPS can be passed instead where their
weights are at hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiscriminatorFeatureLoss", "discriminator_feature_distance", "w_norm_loss", "image_losses"]


def discriminator_feature_distance(
    discriminator: nn.Module, input: torch.Tensor, target: torch.Tensor, layers: Sequence[int] | None = None
) -> torch.Tensor:
    """Per-image ``[B]`` mean squared difference of ``discriminator.extract_features`` of ``input`` and ``target``,
    averaged over the chosen feature layers (None: all). No gradient flows into the target's features."""
    with torch.no_grad():
        target_feats = discriminator.extract_features(target)
    input_feats = discriminator.extract_features(input)
    if layers is not None:
        input_feats, target_feats = [input_feats[i] for i in layers], [target_feats[i] for i in layers]
    terms = [(a.float() - b.float()).square().flatten(1).mean(dim=1) for a, b in zip(input_feats, target_feats)]
    return torch.stack(terms, dim=0).mean(dim=0)


class DiscriminatorFeatureLoss(nn.Module):
    """Mean squared difference of a frozen discriminator's per-image features, averaged over the chosen layers.

    Args:
        discriminator: a network with ``extract_features(x) -> list[Tensor]`` whose features do not depend on the
            rest of the batch (``StyleGAN2Discriminator`` stops before its minibatch-stddev layer). It is frozen.
        layers: indices into the feature list (None: all).
    """

    def __init__(self, discriminator: nn.Module, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        if not hasattr(discriminator, "extract_features"):
            raise TypeError("discriminator must provide extract_features(x) (StyleGAN2Discriminator does).")
        self.discriminator = discriminator.eval().requires_grad_(False)
        self.layers = None if layers is None else list(layers)

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each image, ``[B]``."""
        return discriminator_feature_distance(self.discriminator, input, target, self.layers)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_image(input, target).mean()


def w_norm_loss(ws: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
    """pSp's w-norm regulariser: the mean (over images and style vectors) squared distance to ``w_avg``."""
    return (ws.float() - w_avg.float()).square().sum(dim=-1).mean()


def image_losses(reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel L2 and L1 between a reconstruction and its target."""
    return {"l2": F.mse_loss(reconstruction, target), "l1": F.l1_loss(reconstruction, target)}
