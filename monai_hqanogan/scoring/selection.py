"""One score family and one selection rule for every reconstruction-based detector, under a named protocol.

A detector that reconstructs its input (HQ-AnoGAN's ``G(E(x))``, f-AnoGAN, AnoGAN, an autoencoder, PCA) gets the same
candidate image scores, computed the same way (:func:`reconstruction_scores`):

- ``residual``: the mean ``|x - x'|`` over the foreground;
- ``map_max``: the maximum of the Gaussian-smoothed foreground residual map (anomalib's image score: a small lesion
  is not diluted by the size of the image);
- ``feature``: a feature distance between ``x`` and ``x'``, where the method has a discriminator or critic.

Which member, or which weighted sum of z-scored members, a detector uses is chosen by one rule for every method
(:func:`select_weights`): the weights on a grid over the simplex with the best image AUROC on a *selection set*.
The protocol (DESIGN.md section 4a) says what that set is and how the image threshold is set:

- ``"normal-only"`` (the default and the headline): no real abnormal image influences anything. The scores are
  normalised on normal validation images, the selection set is normal images with synthetic lesions pasted into
  them (a prepared dataset's ``localisation_validation`` list), and the threshold sits at a stated false-positive
  rate on the normal validation images. Real abnormal images in the validation list are ignored.
- ``"labelled-validation"`` (secondary, opt-in): the selection set is the labelled validation list (normal and real
  abnormal images) and the threshold is at its F1 maximum.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from monai_hqanogan.metrics import (
    bootstrap_auroc_difference,
    bootstrap_image_auroc,
    compute_f1_max_threshold,
    compute_image_auroc,
)

__all__ = [
    "PROTOCOLS",
    "best_width",
    "choice_uncertainty",
    "FAMILY_NAMES",
    "check_protocol",
    "foreground_mask",
    "reconstruction_scores",
    "simplex_grid",
    "select_weights",
    "combine_with",
    "fit_image_threshold",
    "ScoreSelection",
]

#: the evaluation protocols: the headline ``normal-only`` first
PROTOCOLS = ("normal-only", "labelled-validation")
#: the score family every reconstruction method gets
FAMILY_NAMES = ("residual", "map_max", "feature")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`; a ValueError naming the choices otherwise."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    return protocol


def foreground_mask(image: torch.Tensor, threshold: float | None, margin: int = 0) -> torch.Tensor:
    """[B, 1, H, W] float mask of where scores are taken: the body (any channel above ``threshold`` in the [-1, 1]
    range), dilated by 2 pixels with ``margin=0``; with ``margin > 0`` the body's interior instead, every pixel at
    least ``margin`` pixels from the background and from the image edge (the skull, the scalp and image frames are
    left out). All ones for ``threshold=None``."""
    if threshold is None:
        return torch.ones_like(image[:, :1])
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    body = (image.amax(dim=1, keepdim=True) > threshold).float()
    if margin == 0:
        return F.max_pool2d(body, kernel_size=5, stride=1, padding=2)
    outside = F.pad(1 - body, (margin,) * 4, value=1.0)  # beyond the image edge counts as background
    return 1 - F.max_pool2d(outside, kernel_size=2 * margin + 1, stride=1)


def reconstruction_scores(
    image: torch.Tensor,
    reconstruction: torch.Tensor,
    smoothing: GaussianFilter | float | None = 1.0,
    foreground_threshold: float | None = -0.9,
    feature: torch.Tensor | None = None,
    foreground_margin: int = 0,
) -> dict[str, torch.Tensor]:
    """The score family of one batch: ``residual`` and ``map_max`` [B] (and ``feature`` [B] when given), plus the
    ``anomaly_map`` [B, 1, H, W] (smoothed |x - x'|, background zeroed) and the ``foreground`` mask.

    Args:
        image: the input [B, C, H, W] in [-1, 1].
        reconstruction: its reconstruction x', same shape.
        smoothing: a 2D ``GaussianFilter``, or its sigma in pixels (0 or None: no smoothing).
        foreground_threshold: the foreground rule of :func:`foreground_mask` (None: the whole image).
        feature: the method's feature distance per image, if it has a discriminator or critic.
        foreground_margin: score only the body's interior, this many pixels in from its edge (0: the whole body,
            dilated; see :func:`foreground_mask`).
    """
    if image.shape != reconstruction.shape:
        raise ValueError(f"image {tuple(image.shape)} and reconstruction {tuple(reconstruction.shape)} differ.")
    if isinstance(smoothing, (int, float)):
        smoothing = GaussianFilter(spatial_dims=2, sigma=float(smoothing)).to(image.device) if smoothing > 0 else None
    fg = foreground_mask(image, foreground_threshold, foreground_margin)
    error = (image - reconstruction).abs().mean(dim=1, keepdim=True)
    residual = (error * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp_min(1)
    amap = (smoothing(error) if smoothing is not None else error) * fg
    out = {"residual": residual, "map_max": amap.flatten(1).amax(dim=1), "anomaly_map": amap, "foreground": fg}
    if feature is not None:
        out["feature"] = feature.reshape(-1).to(residual)
    return out


def simplex_grid(num: int, step: float) -> list[tuple[float, ...]]:
    """All weight vectors of length ``num`` with entries in multiples of ``step`` summing to 1."""
    parts = round(1 / step)
    if parts < 1 or abs(parts * step - 1) > 1e-9:
        raise ValueError(f"step must divide 1, got {step}.")
    grid = []
    for cuts in itertools.combinations(range(parts + num - 1), num - 1):  # stars and bars
        bounds = (-1, *cuts, parts + num - 1)
        grid.append(tuple((bounds[i + 1] - bounds[i] - 1) / parts for i in range(num)))
    return grid


def _column(components: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    values = torch.as_tensor(components[name]).detach().double().cpu().reshape(-1)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"score {name!r} holds NaN or inf values: the detector's outputs are not usable.")
    return values


def combine_with(
    components: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    mean: Mapping[str, float],
    std: Mapping[str, float],
) -> torch.Tensor:
    """``sum_k w_k (c_k - mean_k) / std_k`` over the names in ``weights`` (float64, [N], on the CPU)."""
    total = None
    for name, w in weights.items():
        z = (_column(components, name) - mean[name]) / std[name]
        total = w * z if total is None else total + w * z
    if total is None:
        raise ValueError("no weights to combine with.")
    return total


def select_weights(
    normal: Mapping[str, torch.Tensor],
    candidates: Sequence[str],
    selection: Mapping[str, torch.Tensor] | None = None,
    selection_labels: torch.Tensor | None = None,
    weight_step: float = 0.25,
    fallback: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The selection rule every method gets: z-score each candidate on ``normal`` images, then take the weights on
    the simplex grid with the best image AUROC on the ``selection`` set (a tie keeps the simpler choice: fewer scores
    with weight, then more weight on earlier candidates); without a selection set, the ``fallback`` weights (written
    down before any data).

    Args:
        normal: name -> [N] scores of normal images (the normalisation statistics come from these only).
        candidates: the scores that may get weight, in order of preference for ties.
        selection: name -> [M] scores of the selection set.
        selection_labels: [M] 1 abnormal / 0 normal of the selection set.
        weight_step: grid step of the search (1 -> one score alone).
        fallback: weights used when ``selection`` is None.

    Returns:
        ``{"weights", "mean", "std", "auroc_per_score", "selection_auroc"}`` (the AUROCs are on the selection set;
        absent without one).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate scores to select from.")
    missing = [c for c in candidates if c not in normal or (selection is not None and c not in selection)]
    if missing:
        raise ValueError(f"the scores lack the candidates {missing}.")
    mean, std = {}, {}
    for name in candidates:
        v = _column(normal, name)
        if len(v) < 2:
            raise ValueError("selecting scores needs at least 2 normal images.")
        mean[name], std[name] = float(v.mean()), max(float(v.std()), 1e-8)
    out: dict[str, Any] = {"mean": mean, "std": std}
    if selection is None:
        if not fallback:
            raise ValueError("give a selection set, or fallback weights to use without one.")
        unknown = [k for k in fallback if k not in candidates]
        if unknown:
            raise ValueError(f"fallback weights name {unknown}, which are not candidates {candidates}.")
        out["weights"] = {k: float(v) for k, v in fallback.items() if float(v) != 0.0}
        return out
    labels = torch.as_tensor(selection_labels).long().cpu().reshape(-1)
    z = torch.stack([(_column(selection, n) - mean[n]) / std[n] for n in candidates], dim=1)
    if len(labels) != len(z):
        raise ValueError(f"{len(labels)} selection labels for {len(z)} selection scores.")
    if not (bool((labels == 0).any()) and bool((labels == 1).any())):
        raise ValueError(
            "the selection set needs images with and without (synthetic) lesions, labelled 1 and 0; it has "
            f"{int((labels == 1).sum())} with and {int((labels == 0).sum())} without."
        )
    out["auroc_per_score"] = {n: compute_image_auroc(z[:, i], labels) for i, n in enumerate(candidates)}
    best, best_w = -1.0, None
    # simplest first: one score alone, in the candidates' order, then pairs, ...; a tie keeps the simpler choice
    grid = sorted(simplex_grid(len(candidates), weight_step), key=lambda w: (sum(v > 0 for v in w), [-v for v in w]))
    for w in grid:
        auc = compute_image_auroc(z @ torch.tensor(w, dtype=z.dtype), labels)
        if auc > best + 1e-12:
            best, best_w = auc, w
    out["weights"] = {n: float(w) for n, w in zip(candidates, best_w) if w != 0.0}
    out["selection_auroc"] = best
    return out


def fit_image_threshold(
    combined: torch.Tensor, labels: torch.Tensor | None, protocol: str, fpr: float = 0.05
) -> tuple[float, str]:
    """The image threshold of a combined score and what set it: the ``1 - fpr`` quantile of the normal images under
    ``normal-only`` (abnormal images ignored), the F1 maximum of the labelled images under ``labelled-validation``."""
    check_protocol(protocol)
    combined = torch.as_tensor(combined).double().cpu().reshape(-1)
    labels_t = torch.zeros(len(combined), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    if protocol == "normal-only":
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
        normals = combined[labels_t.cpu().reshape(-1) == 0]
        if len(normals) < 2:
            raise ValueError("the normal-only threshold needs at least 2 normal images.")
        return float(np.quantile(normals.numpy(), 1 - fpr)), f"FPR {fpr} on {len(normals)} normal validation images"
    _, threshold = compute_f1_max_threshold(combined, labels_t)
    return float(threshold), f"F1 max on {len(combined)} labelled validation images"


class ScoreSelection:
    """A selected and thresholded combination of scores for any detector, fitted under one protocol.

    Example::

        sel = ScoreSelection(candidates=("residual", "map_max"), protocol="normal-only")
        sel.fit(normal=val_normal_scores, selection=synthetic_scores, selection_labels=synthetic_labels)
        image_scores = sel.combine(test_scores)

    Args:
        candidates: the score names that may get weight.
        protocol: one of :data:`PROTOCOLS`.
        fpr: the false-positive rate on normal validation images that sets the ``normal-only`` threshold.
        weight_step: grid step of the weight search.
    """

    def __init__(
        self,
        candidates: Sequence[str] = FAMILY_NAMES,
        protocol: str = "normal-only",
        fpr: float = 0.05,
        weight_step: float = 0.25,
    ) -> None:
        self.candidates = list(candidates)
        self.protocol = check_protocol(protocol)
        self.fpr, self.weight_step = fpr, weight_step
        self.report: dict[str, Any] = {}

    def fit(
        self,
        normal: Mapping[str, torch.Tensor],
        selection: Mapping[str, torch.Tensor],
        selection_labels: torch.Tensor,
    ) -> ScoreSelection:
        """Normalise on ``normal`` (normal validation images), choose the weights on the selection set (synthetic
        lesions under ``normal-only``, the labelled validation images under ``labelled-validation``), and set the
        threshold (FPR on ``normal``, or F1 max on the selection set)."""
        chosen = select_weights(normal, self.candidates, selection, selection_labels, self.weight_step)
        if self.protocol == "normal-only":
            threshold, source = fit_image_threshold(
                combine_with(normal, chosen["weights"], chosen["mean"], chosen["std"]), None, self.protocol, self.fpr
            )
        else:
            combined = combine_with(selection, chosen["weights"], chosen["mean"], chosen["std"])
            threshold, source = fit_image_threshold(combined, selection_labels, self.protocol)
        self.report = {**chosen, "protocol": self.protocol, "image_threshold": threshold, "threshold_from": source}
        return self

    @property
    def weights(self) -> dict[str, float]:
        if not self.report:
            raise RuntimeError("ScoreSelection is not fitted: call fit(...) first.")
        return self.report["weights"]

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The selected combination of ``components`` (name -> [N]), float32 [N] on the CPU."""
        return combine_with(components, self.weights, self.report["mean"], self.report["std"]).float()

    def describe(self) -> str:
        """The chosen member or weighted sum, e.g. ``"map_max"`` or ``"0.75 map_max + 0.25 feature"``."""
        w = self.weights
        if len(w) == 1:
            return next(iter(w))
        return " + ".join(f"{v:.2f} {k}" for k, v in w.items())


def best_width(widths: Sequence[float], auroc_of: Callable[[float], float | None]) -> tuple[float, dict[str, Any]]:
    """The map smoothing width (px) whose selection reaches the highest AUROC, the first of equal ones (a width
    without an AUROC never beats one with), and every width's AUROC keyed ``f"{width:g}"``: the one rule by which the
    detector's calibration chooses its width, and by which the evaluation and ``benchmarks/compare.py`` let a
    reference method choose among the same widths.

    Args:
        widths: the candidate sigmas in pixels, in order of preference on ties.
        auroc_of: width -> the selection AUROC of the method's scores at that width (None: none).
    """
    aurocs: dict[str, Any] = {}
    best, best_auroc = None, None
    for width in widths:
        auroc = auroc_of(float(width))
        aurocs[f"{float(width):g}"] = auroc
        if best is None or (auroc is not None and (best_auroc is None or auroc > best_auroc)):
            best, best_auroc = float(width), auroc
    if best is None:
        raise ValueError("no width was given.")
    return best, aurocs


def choice_uncertainty(
    scores: Any,
    labels: Any,
    groups: Sequence[Any] | None = None,
    width_scores: Mapping[float, Any] | None = None,
    chosen_width: float | None = None,
    num_samples: int = 2000,
) -> dict[str, Any]:
    """How firm a selection is: the selection AUROC's group bootstrap interval, and how far the chosen map width is
    ahead of the runner-up on the same resamples. Reported next to a choice, never used to make it.

    The selection set is small (Br35H's 225 normal validation slices come from 39 groups of near-duplicates),
    so two widths or weight vectors 0.005 apart in AUROC are usually not told apart; this says so in numbers.

    Args:
        scores: [M] the chosen combined score of the selection images.
        labels: [M] 1 where a synthetic lesion was pasted.
        groups: [M] their near-duplicate groups (a slice and its lesioned copy share one); None: one per image.
        width_scores: width (px) -> [M] the combined score the selection chose at that width, if it chose a width.
        chosen_width: the width it chose (a key of ``width_scores``).
        num_samples: bootstrap resamples.

    Returns:
        ``{"selection_auroc_ci": {"low", "high", "num_groups"}}`` plus, with two widths or more,
        ``"smoothing_runner_up": {"sigma", "difference", "low", "high"}`` (the chosen width's selection AUROC minus the
        best other width's, paired).
    """
    ci = bootstrap_image_auroc(scores, labels, groups, num_samples=num_samples)
    out: dict[str, Any] = {"selection_auroc_ci": {k: ci[k] for k in ("low", "high", "num_groups")}}
    if width_scores and len(width_scores) > 1:
        if chosen_width not in width_scores:
            raise ValueError(f"chosen_width {chosen_width!r} is not one of the widths {sorted(width_scores)}.")
        others = {w: compute_image_auroc(s, labels) for w, s in width_scores.items() if w != chosen_width}
        runner_up = max(others, key=others.get)
        diff = bootstrap_auroc_difference(
            width_scores[chosen_width], width_scores[runner_up], labels, groups, num_samples=num_samples
        )
        out["smoothing_runner_up"] = {"sigma": float(runner_up), **{k: diff[k] for k in ("difference", "low", "high")}}
    return out
