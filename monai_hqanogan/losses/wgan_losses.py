"""The Wasserstein GAN losses of the f-AnoGAN baseline.

Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, "Improved training of Wasserstein GANs", NeurIPS 2017,
https://arxiv.org/abs/1704.00028.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["wgan_gradient_penalty"]


def wgan_gradient_penalty(
    critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """The WGAN-GP gradient penalty ``mean((||grad_x D(x_hat)||_2 - 1)^2)`` on random interpolates.

    Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028, Algorithm 1: ``x_hat = eps * real + (1 - eps) * fake``
    with one ``eps ~ U[0, 1]`` per image. The result keeps its graph (``create_graph=True``), so it can be
    back-propagated into the critic's parameters.

    Args:
        critic: maps ``[B, ...]`` to ``[B]`` (or ``[B, 1]``) scores, each depending on its own image only.
        real: real images ``[B, ...]``.
        fake: generated images of the same shape (detached here).
        generator: CPU generator for ``eps`` (None: the global RNG); ``eps`` is drawn on the CPU and then moved, so
            it does not depend on the device.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}.")
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator).to(real.device, real.dtype)
    real, fake = real.detach(), fake.detach()
    interpolates = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
    norm = (grad.flatten(1).square().sum(dim=1) + 1e-12).sqrt()  # the epsilon keeps the norm differentiable at 0
    return (norm - 1).square().mean()
