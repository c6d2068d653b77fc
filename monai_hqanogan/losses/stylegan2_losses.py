"""Adversarial losses and regularisers of StyleGAN2.

- Non-saturating logistic loss: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014,
  https://arxiv.org/abs/1406.2661.
- R1 gradient penalty on reals: Mescheder et al., "Which Training Methods for GANs do actually Converge?",
  ICML 2018, https://arxiv.org/abs/1801.04406.
- Path-length regularisation and lazy regularisation: Karras et al., StyleGAN2, CVPR 2020,
  https://arxiv.org/abs/1912.04958, sections 3.1-3.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["generator_logistic_loss", "discriminator_logistic_loss", "r1_penalty", "PathLengthPenalty"]


def generator_logistic_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean(softplus(-D(G(z))))``."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``mean(softplus(D(G(z)))) + mean(softplus(-D(x)))``."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Per-image squared norm of the gradient of D's logits with respect to the real images, ``[B]``.

    ``real_images`` must have ``requires_grad=True`` and ``real_logits`` must be computed from them. The graph is
    kept (``create_graph=True``) so that the penalty can be back-propagated into D. The full R1 loss is
    ``gamma / 2 * r1_penalty(...).mean()``.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad=True and logits computed from them.")
    (grad,) = torch.autograd.grad(outputs=real_logits.float().sum(), inputs=real_images, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1)


class PathLengthPenalty(nn.Module):
    """Path-length regulariser: ``(|J_w^T y| - a)^2`` with y ~ N(0, I) / sqrt(H W) and a the running mean length.

    Keeps a unit change of w producing a change of fixed magnitude in the image. The running mean ``pl_mean``
    is a buffer, so it is saved and restored with the module's state dict.

    Args:
        decay: update rate of the running mean (0.01).
    """

    def __init__(self, decay: float = 0.01) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("pl_mean", torch.zeros([]))

    def forward(self, images: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """Per-sample penalty ``[B]``; ``images`` must be synthesised from ``ws`` with gradients enabled."""
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad(outputs=(images * noise).sum(), inputs=ws, create_graph=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean(), self.decay))
        return (lengths - self.pl_mean).square()
