"""Matplotlib figures of detections: per-image panels, panel grids, ROC curves and score histograms.

Each panel shows the input, its pseudo-normal reconstruction, the residual heat map, and an overlay with the
predicted contour (and the ground-truth contour when given), with the score and threshold in the title, as
anomaly-detection papers and anomalib show them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from monai_hqanogan.utils.checkpoint import atomic_output  # noqa: E402

__all__ = ["plot_detection_panels", "plot_roc_curves", "plot_score_histogram", "save_figure", "figure_to_image"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _grey(img: np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W] -> [H, W] (channel mean)."""
    return img.mean(axis=0) if img.ndim == 3 else img


def plot_detection_panels(
    images: torch.Tensor | np.ndarray,
    reconstructions: torch.Tensor | np.ndarray,
    anomaly_maps: torch.Tensor | np.ndarray,
    pred_masks: torch.Tensor | np.ndarray | None = None,
    gt_masks: torch.Tensor | np.ndarray | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    threshold: float | None = None,
    titles: Sequence[str] | None = None,
    map_vmax: float | None = None,
) -> Figure:
    """One row per image: input | pseudo-normal reconstruction | heat map | overlay with contours.

    Args:
        images: [N, C, H, W] inputs in [-1, 1].
        reconstructions: [N, C, H, W] reconstructions G(E(x)).
        anomaly_maps: [N, 1, H, W] residual maps.
        pred_masks: [N, 1, H, W] predicted masks, drawn as a red contour.
        gt_masks: [N, 1, H, W] ground-truth masks, drawn as a green contour.
        scores: image scores shown in the titles.
        threshold: image threshold shown in the titles ("anomalous" when score >= threshold).
        titles: optional row labels.
        map_vmax: upper end of the heat-map colour scale (default: the largest map value, shared by all rows).
    """
    imgs, recs, maps = _np(images), _np(reconstructions), _np(anomaly_maps)
    n = imgs.shape[0]
    if not (recs.shape[0] == maps.shape[0] == n) or n == 0:
        raise ValueError(
            "need the same non-zero number of images, reconstructions and maps, got "
            f"{n}, {recs.shape[0]}, {maps.shape[0]}."
        )
    vmax = float(map_vmax) if map_vmax is not None else max(float(maps.max()), 1e-6)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    for i in range(n):
        x, r, m = _grey(imgs[i]), _grey(recs[i]), _grey(maps[i])
        axes[i, 0].imshow(x, cmap="gray", vmin=-1, vmax=1)
        axes[i, 1].imshow(r, cmap="gray", vmin=-1, vmax=1)
        heat = axes[i, 2].imshow(m, cmap="inferno", vmin=0, vmax=vmax)
        fig.colorbar(heat, ax=axes[i, 2], fraction=0.046, pad=0.04)
        axes[i, 3].imshow(x, cmap="gray", vmin=-1, vmax=1)
        axes[i, 3].imshow(np.ma.masked_less(m, 0.25 * vmax), cmap="inferno", vmin=0, vmax=vmax, alpha=0.5)
        if pred_masks is not None and _grey(_np(pred_masks)[i]).any():
            axes[i, 3].contour(_grey(_np(pred_masks)[i]), levels=[0.5], colors="red", linewidths=1.2)
        if gt_masks is not None and _grey(_np(gt_masks)[i]).any():
            axes[i, 3].contour(_grey(_np(gt_masks)[i]), levels=[0.5], colors="lime", linewidths=1.2, linestyles="--")
        head = titles[i] if titles is not None else f"image {i}"
        if scores is not None:
            s = float(scores[i])
            head += f": score {s:.2f}"
            if threshold is not None:
                head += f" ({'anomalous' if s >= threshold else 'normal'}, threshold {threshold:.2f})"
        axes[i, 0].set_title(head, loc="left", fontsize=9)
        overlay = "overlay (red: predicted" + (", green: truth)" if gt_masks is not None else ")")
        for j, name in enumerate(["input", "pseudo-normal", "|x - G(E(x))|", overlay]):
            axes[i, j].set_xlabel(name, fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.tight_layout()
    return fig


def plot_roc_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[int]]], title: str = "ROC") -> Figure:
    """ROC curves of several scorers on the same labels: name -> (scores, labels); AUROC in the legend."""
    from monai_hqanogan.metrics import compute_image_auroc

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (scores, labels) in curves.items():
        s, y = _np(torch.as_tensor(scores)).ravel(), _np(torch.as_tensor(labels)).ravel().astype(bool)
        order = np.argsort(-s, kind="stable")
        tps = np.concatenate([[0], np.cumsum(y[order])])
        fps = np.concatenate([[0], np.cumsum(~y[order])])
        ax.plot(fps / max(fps[-1], 1), tps / max(tps[-1], 1), label=f"{name} (AUROC {compute_image_auroc(s, y):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_histogram(
    scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor, threshold: float | None = None
) -> Figure:
    """Histograms of normal and abnormal image scores, with the threshold as a vertical line."""
    s, y = _np(torch.as_tensor(scores)).ravel(), _np(torch.as_tensor(labels)).ravel().astype(bool)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(float(s.min()), float(s.max()) + 1e-9, 30)
    ax.hist(s[~y], bins=bins, alpha=0.6, label=f"normal ({int((~y).sum())})", color="tab:blue")
    if y.any():
        ax.hist(s[y], bins=bins, alpha=0.6, label=f"abnormal ({int(y.sum())})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="anomaly score", ylabel="images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` (PNG, PDF, SVG by extension) and close it. Written atomically (temporary file, then rename): a
    killed process never leaves a truncated picture."""
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def figure_to_image(fig: Figure) -> np.ndarray:
    """The rendered figure as an [3, H, W] uint8 array (for TensorBoard's ``add_image``); closes it."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].transpose(2, 0, 1).copy()
