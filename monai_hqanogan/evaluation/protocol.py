"""Every method scored by one family and one selection rule, under a named protocol (DESIGN.md section 4a).

The bundle's evaluation and ``benchmarks/compare.py`` call these, so HQ-AnoGAN and the reference methods are
compared like for like: each reconstruction method gets the score family of
:func:`~monai_hqanogan.scoring.reconstruction_scores` (``residual``, ``map_max``, and ``feature`` where it has a
critic) with the same smoothing and foreground rule, and :class:`~monai_hqanogan.scoring.ScoreSelection` chooses
among them on the same images: synthetic lesions under ``normal-only``, the labelled validation list under
``labelled-validation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from monai_hqanogan.scoring.selection import (
    FAMILY_NAMES,
    ScoreSelection,
    best_width,
    check_protocol,
    reconstruction_scores,
)

__all__ = [
    "FAMILY_FOREGROUND",
    "family_smoothing",
    "best_width",
    "family_scores",
    "method_components",
    "select_method_scores",
    "selection_summary",
]

#: the foreground rule of the score family (pixels above this value in [-1, 1]), the same for every method
FAMILY_FOREGROUND = -0.9


def family_smoothing(resolution: int) -> float:
    """The Gaussian sigma, in pixels, of the score family's map smoothing at ``resolution``: ``resolution / 32``, at
    least 1 px.

    From 32 px up the width is a fixed fraction of the image (1 px at 32 px, 2 px at 64, 4 px at 128), so ``map_max``
    takes its maximum over a map of the same relative smoothness at every size; a fixed 1 px would leave a 64 or
    128 px map four or sixteen times as many, noisier pixels to peak on. Below 32 px (tests, toys) it stays at 1 px:
    a narrower Gaussian sampled on the pixel grid hardly smooths. The bundle's detector (``common.json``) and every
    reference method use it.
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}.")
    return max(1.0, resolution / 32)


def family_scores(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    feature: torch.Tensor | None = None,
    smoothing: GaussianFilter | float | None = None,
    foreground_threshold: float | None = FAMILY_FOREGROUND,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """The score family of many images and their reconstructions, in chunks, on the CPU: ``residual``,
    ``map_max`` (and ``feature`` when given) [N] and ``anomaly_map`` [N, 1, H, W].

    Args:
        images: [N, C, H, W] in [-1, 1].
        reconstructions: the same shape.
        feature: the method's feature distance per image, if it has a critic.
        smoothing: a 2D ``GaussianFilter`` or its sigma in pixels (0: none); None: :func:`family_smoothing` of the
            image width.
        foreground_threshold: the foreground rule (None: the whole image).
        chunk: images per pass.
    """
    if smoothing is None:
        smoothing = family_smoothing(int(images.shape[-1]))
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), chunk):
        f = None if feature is None else feature[i : i + chunk]
        out = reconstruction_scores(
            images[i : i + chunk], reconstructions[i : i + chunk].to(images.device), smoothing, foreground_threshold, f
        )
        for k in ("residual", "map_max", "feature", "anomaly_map"):
            if k in out:
                parts.setdefault(k, []).append(out[k].cpu())
    if not parts:
        raise ValueError("no images were given.")
    return {k: torch.cat(v) for k, v in parts.items()}


def method_components(
    method: nn.Module,
    images: torch.Tensor,
    own_score: bool = False,
    smoothing: GaussianFilter | float | None = None,
    foreground_threshold: float | None = FAMILY_FOREGROUND,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Score ``images`` with a fitted reference method the way the protocol needs.

    A method that reconstructs (``reconstruct``) gets the score family (:func:`family_scores` with ``smoothing``
    and ``foreground_threshold``; pass the detector's to give both the same rule); its ``feature`` member comes
    from its ``score_components(images)["feature"]`` where it has one (f-AnoGAN's critic). A method that does not
    reconstruct, or with ``own_score`` (e.g. GANomaly as anomalib gives it), keeps its own ``score`` as the only
    candidate.

    Returns:
        ``(components, anomaly maps or None, reconstructions or None, candidate names)``.
    """
    if hasattr(method, "reconstruct") and not own_score:
        rec = method.reconstruct(images)
        feature = method.score_components(images)["feature"] if hasattr(method, "score_components") else None
        comps = family_scores(images, rec, feature, smoothing, foreground_threshold)
        maps = comps.pop("anomaly_map")
        return comps, maps, rec, [n for n in FAMILY_NAMES if n in comps]
    rec = method.reconstruct(images) if hasattr(method, "reconstruct") else None
    return {"score": method.score(images)}, method.anomaly_map(images), rec, ["score"]


def select_method_scores(
    candidates: list[str],
    validation: Mapping[str, torch.Tensor],
    validation_labels: torch.Tensor,
    protocol: str = "normal-only",
    synthetic: Mapping[str, torch.Tensor] | None = None,
    synthetic_labels: torch.Tensor | None = None,
    fpr: float = 0.05,
) -> ScoreSelection:
    """The one selection rule for any method: z-scores on the normal validation images, weights with the best
    AUROC on the ``synthetic`` lesion set (``normal-only``) or on the labelled validation set
    (``labelled-validation``), threshold at ``fpr`` on the normal validation images or at the labelled F1 maximum.

    Args:
        candidates: the score names of the method.
        validation: name -> [N] scores of the validation list.
        validation_labels: its labels (1 abnormal); only label-0 images are used under ``normal-only``.
        protocol: ``"normal-only"`` or ``"labelled-validation"``.
        synthetic: name -> [M] scores of the synthetic-lesion validation set (needed under ``normal-only``).
        synthetic_labels: 1 where a lesion was pasted.
        fpr: the normal-only false-positive rate.
    """
    check_protocol(protocol)
    labels = torch.as_tensor(validation_labels).long().cpu()
    normal = {k: torch.as_tensor(v)[labels == 0] for k, v in validation.items()}
    if protocol == "normal-only":
        if synthetic is None or synthetic_labels is None:
            raise ValueError("protocol 'normal-only' chooses on synthetic lesions: give their scores and labels.")
        selection, selection_labels = synthetic, synthetic_labels
    else:
        selection, selection_labels = validation, labels
    return ScoreSelection(candidates, protocol, fpr=fpr).fit(normal, selection, selection_labels)


def selection_summary(selection: ScoreSelection) -> dict[str, Any]:
    """What a report says about a selection: protocol, the score used, threshold and what set it."""
    r = selection.report
    return {
        "protocol": r["protocol"], "score": selection.describe(), "image_threshold": r["image_threshold"],
        "threshold_from": r["threshold_from"], "selection_auroc": r.get("selection_auroc"),
    }  # fmt: skip
