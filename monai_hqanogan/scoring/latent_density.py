"""Gaussian density of W+ codes: per-layer Mahalanobis distance with a Ledoit-Wolf shrinkage covariance.

Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J Multivariate Anal 2004,
https://doi.org/10.1016/S0047-259X(03)00096-4. With a few hundred normal codes of 512 dimensions the sample
covariance is singular; shrinking it towards a scaled identity makes it invertible and better conditioned.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ledoit_wolf_covariance", "WPlusGaussian"]


def ledoit_wolf_covariance(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` [n, p] (float64) and the shrinkage in [0, 1].

    The estimate is ``(1 - s) S + s mu I`` with ``S`` the (biased, 1/n) sample covariance and ``mu = trace(S) / p``.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples as rows of a 2-D tensor, got shape {tuple(x.shape)}.")
    x = x.double()
    n, p = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    s = xc.t() @ xc / n
    mu = torch.trace(s) / p
    # distance of S to the target, and the estimated variance of S's entries (both scaled by 1 / p)
    delta = ((s - mu * torch.eye(p, dtype=x.dtype, device=x.device)).square().sum() / p).item()
    x2 = xc.square()
    beta = ((x2.t() @ x2).sum() / n - (s.square().sum())).item() / (p * n)
    beta = min(beta, delta)
    shrinkage = 0.0 if delta == 0.0 else beta / delta
    cov = (1 - shrinkage) * s + shrinkage * mu * torch.eye(p, dtype=x.dtype, device=x.device)
    return cov, float(shrinkage)


class WPlusGaussian(nn.Module):
    """One Gaussian per W+ layer; :meth:`forward` gives the mean (over layers) squared Mahalanobis distance.

    Args:
        num_ws: number of style vectors.
        w_dim: width of w.
    """

    def __init__(self, num_ws: int, w_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_ws, w_dim))
        self.register_buffer("precision", torch.eye(w_dim).repeat(num_ws, 1, 1))
        self.register_buffer("shrinkage", torch.zeros(num_ws))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, codes: torch.Tensor) -> WPlusGaussian:
        """Fit to normal codes [n, num_ws, w_dim]; returns self."""
        if codes.ndim != 3 or tuple(codes.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"codes must have shape [n, {self.mean.shape[0]}, {self.mean.shape[1]}], got {tuple(codes.shape)}."
            )
        if not torch.isfinite(codes).all():
            raise ValueError("codes hold NaN or inf values.")
        for layer in range(codes.shape[1]):
            cov, shrink = ledoit_wolf_covariance(codes[:, layer])
            try:
                if float(torch.trace(cov)) <= 0:
                    raise torch.linalg.LinAlgError("zero variance")
                self.precision[layer] = torch.linalg.inv(cov).to(self.precision)
            except torch.linalg.LinAlgError as err:
                raise ValueError(
                    f"the W+ codes of the {codes.shape[0]} normal images do not vary in layer {layer} (their "
                    "covariance is singular): the encoder maps every image to the same code, so it is untrained or "
                    "collapsed. Train the encoder (EncoderTrainer, the bundle's train_encoder.json) before calibrating."
                ) from err
            self.mean[layer] = codes[:, layer].mean(dim=0).to(self.mean)
            self.shrinkage[layer] = shrink
        self.fitted.fill_(True)
        return self

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the squared Mahalanobis distance, ``[B]``."""
        d = codes.float() - self.mean
        return torch.einsum("blp,lpq,blq->bl", d, self.precision, d).mean(dim=1)
