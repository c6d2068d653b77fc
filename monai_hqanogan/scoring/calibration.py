"""Calibrated HQ-AnoGAN scoring: normalise each score on normal data, combine, threshold, and save it all.

The paper (Sato et al., Int J CARS 2023, https://doi.org/10.1007/s11548-023-03031-9) computes the anomaly score
from the intermediate latent variables with "an optimal anomaly score calculation method" whose formula is not
public. So the toolkit computes the plausible candidates (see :data:`SCORE_NAMES`), normalises each by its mean and
standard deviation on normal validation images, and combines them with weights chosen under a named protocol
(:mod:`monai_hqanogan.scoring.selection`, DESIGN.md section 4a):

- ``normal-only`` (the default): no real abnormal image is used. The weights on a grid over the simplex that give the
  best image AUROC on normal images with synthetic lesions pasted in (or :data:`DEFAULT_WEIGHTS` without such a
  set), and the threshold at a stated false-positive rate on the normal validation images;
- ``labelled-validation`` (opt-in): the weights with the best AUROC on labelled validation images (normal and real
  abnormal), and the threshold at their F1 maximum.

Everything lands in an :class:`AnomalyCalibration` module (buffers only) with the fingerprint of the networks it
was made for; :func:`save_calibration` / :func:`load_calibration` write and check it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_hqanogan.metrics import compute_f1_max_threshold
from monai_hqanogan.scoring.latent_density import WPlusGaussian
from monai_hqanogan.scoring.selection import check_protocol, fit_image_threshold, select_weights, simplex_grid
from monai_hqanogan.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_atomic

__all__ = [
    "SCORE_NAMES",
    "DEFAULT_WEIGHTS",
    "AnomalyCalibration",
    "simplex_grid",
    "fit_scores",
    "save_calibration",
    "load_calibration",
]

#: the candidate image scores, each larger for more anomalous images:
#: ``residual`` mean |x - G(E(x))| (over the foreground when masking); ``map_max`` the maximum of the smoothed
#: anomaly map (anomalib's image score: a small lesion is not diluted by the image size); ``feature`` the
#: discriminator-feature residual; ``latent_cycle`` mean over layers of |E(G(E(x))) - E(x)|^2; ``mahalanobis``
#: mean per-layer squared Mahalanobis distance of E(x) under the normal codes' Gaussian; ``w_avg_distance`` mean
#: |E(x) - w_avg|; ``cycle_fine`` the cycle distance |E(G(E(x)))_l - E(x)_l|^2 of each fine layer l (the last third
#: of W+), standardised per layer on normal training images, averaged (the latent score that earned its place in
#: ``benchmarks/results/2026-12-02-latent-study``).
SCORE_NAMES = ("residual", "map_max", "feature", "latent_cycle", "mahalanobis", "w_avg_distance", "cycle_fine")
#: weights used when no abnormal validation data are given: residual + feature as in f-AnoGAN (kappa = 1), plus the
#: latent density, the part that is specific to HQ-AnoGAN's latent-space scoring
DEFAULT_WEIGHTS = {"residual": 1 / 3, "feature": 1 / 3, "mahalanobis": 1 / 3}


class AnomalyCalibration(nn.Module):
    """The calibrated scorer: per-score normal statistics, weights, image and pixel thresholds, the W+ Gaussian,
    the per-layer statistics of the cycle distance and the fingerprint of the networks it belongs to.

    Args:
        num_ws: number of W+ style vectors of the generator.
        w_dim: width of w.
    """

    def __init__(self, num_ws: int, w_dim: int) -> None:
        super().__init__()
        k = len(SCORE_NAMES)
        self.register_buffer("score_mean", torch.zeros(k))
        self.register_buffer("score_std", torch.ones(k))
        self.register_buffer("weights", torch.tensor([DEFAULT_WEIGHTS.get(n, 0.0) for n in SCORE_NAMES]))
        self.register_buffer("image_threshold", torch.tensor(float("inf")))
        self.register_buffer("pixel_threshold", torch.tensor(float("inf")))
        self.register_buffer("calibrated", torch.tensor(False))
        self.density = WPlusGaussian(num_ws, w_dim)
        self.register_buffer("cycle_mean", torch.zeros(num_ws))
        self.register_buffer("cycle_std", torch.ones(num_ws))
        self.fingerprint = ""
        self.info: dict[str, Any] = {}

    def get_extra_state(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "score_names": list(SCORE_NAMES), "info": self.info}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        if list(state.get("score_names", [])) != list(SCORE_NAMES):
            raise CheckpointError(f"calibration scores {state.get('score_names')} differ from {list(SCORE_NAMES)}.")
        self.fingerprint = str(state.get("fingerprint", ""))
        self.info = dict(state.get("info", {}))

    @torch.no_grad()
    def fit_cycle(self, cycle_layers: torch.Tensor) -> None:
        """Fit the per-layer mean and standard deviation of the cycle distance on normal images' ``[N, num_ws]``."""
        if cycle_layers.ndim != 2 or cycle_layers.shape[1] != self.cycle_mean.numel() or len(cycle_layers) < 2:
            raise ValueError(
                f"cycle distances must be [N >= 2, {self.cycle_mean.numel()}], got {tuple(cycle_layers.shape)}."
            )
        values = cycle_layers.double()
        self.cycle_mean.copy_(values.mean(0))
        self.cycle_std.copy_(values.std(0).clamp_min(1e-8))

    def cycle_fine(self, cycle_layers: torch.Tensor) -> torch.Tensor:
        """The ``cycle_fine`` score ``[B]`` from per-layer cycle distances ``[B, num_ws]``: the fine third of the
        layers, each standardised by :meth:`fit_cycle`'s statistics, averaged."""
        fine = torch.arange(self.cycle_mean.numel()).tensor_split(3)[-1].to(self.cycle_mean.device)
        z = (cycle_layers.to(self.cycle_mean) - self.cycle_mean) / self.cycle_std
        return z.index_select(1, fine).mean(1)

    def weight_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(SCORE_NAMES, self.weights) if float(w) != 0.0}

    def normalise(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, K] z-scores of the components (names of :data:`SCORE_NAMES`; absent ones count 0), on the device of
        this module's buffers whatever device the components are on."""
        device = self.score_mean.device
        cols = [components[n].float().to(device) if n in components else None for n in SCORE_NAMES]
        ref = next(c for c in cols if c is not None)
        stacked = torch.stack([torch.zeros_like(ref) if c is None else c for c in cols], dim=1)
        return (stacked - self.score_mean) / self.score_std

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The combined image score ``sum_k w_k (c_k - mean_k) / std_k``, ``[B]``."""
        return self.normalise(components) @ self.weights


def fit_scores(
    calibration: AnomalyCalibration,
    components: Mapping[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    fpr: float = 0.05,
    weight_step: float = 0.25,
    candidates: Sequence[str] = SCORE_NAMES,
    protocol: str = "normal-only",
    selection: Mapping[str, torch.Tensor] | None = None,
    selection_labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Fit normalisation, weights and image threshold from validation score components; returns a report.

    Under every protocol each score is normalised by its mean and standard deviation on the normal validation
    images, and the weights are chosen by :func:`~monai_hqanogan.scoring.selection.select_weights` (the same rule
    the benchmark applies to every other method):

    - ``"normal-only"`` (default): abnormal validation images are ignored (counted in the report, never scored
      against). The weights give the best AUROC on ``selection`` (normal images with synthetic lesions), or are
      :data:`DEFAULT_WEIGHTS` without a selection set; the threshold is the ``1 - fpr`` quantile of the normal
      validation images' combined score.
    - ``"labelled-validation"`` (opt-in): the weights give the best AUROC on the labelled validation images and the
      threshold is at their F1 maximum. Needs abnormal validation images.

    Args:
        calibration: the calibration to fill in (its W+ Gaussian must already be fitted for ``mahalanobis``).
        components: name -> [N] raw scores of the validation images.
        labels: [N] 1 for abnormal, 0 for normal; None when all are normal.
        fpr: false-positive rate on normal validation images that fixes the ``normal-only`` threshold.
        weight_step: grid step of the weight search.
        candidates: the scores the weight search may use.
        protocol: ``"normal-only"`` or ``"labelled-validation"``.
        selection: name -> [M] raw scores of the synthetic-lesion selection set (``normal-only`` only).
        selection_labels: [M] 1 where a synthetic lesion was pasted, 0 otherwise.
    """
    check_protocol(protocol)
    n = len(next(iter(components.values())))
    labels_t = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().cpu()
    normal = labels_t == 0
    if int(normal.sum()) < 2:
        raise ValueError("calibration needs at least 2 normal validation images.")
    missing = [c for c in candidates if c not in components]
    if missing:
        raise ValueError(f"components lack the candidate scores {missing}.")
    raw = {k: torch.as_tensor(v).detach().float().cpu() for k, v in components.items()}
    normal_comps = {k: v[normal] for k, v in raw.items()}
    for i, name in enumerate(SCORE_NAMES):
        if name in raw:
            calibration.score_mean[i] = normal_comps[name].mean()
            calibration.score_std[i] = normal_comps[name].std().clamp_min(1e-8)
    report: dict[str, Any] = {"protocol": protocol, "num_normal": int(normal.sum())}
    if protocol == "labelled-validation":
        if not bool((labels_t == 1).any()):
            raise ValueError(
                "protocol 'labelled-validation' needs abnormal validation images (label 1); use 'normal-only' "
                "with normal images only."
            )
        chosen = select_weights(normal_comps, candidates, raw, labels_t, weight_step)
        report.update({"num_abnormal": int((~normal).sum()), "weights_from": "labelled validation AUROC"})
        report["auroc"] = chosen["selection_auroc"]
    else:
        report["ignored_abnormal"] = int((~normal).sum())
        if selection is not None:
            if selection_labels is None:
                raise ValueError("selection scores need selection_labels (1 where a synthetic lesion was pasted).")
            sel = {k: torch.as_tensor(v).detach().float().cpu() for k, v in selection.items()}
            chosen = select_weights(normal_comps, candidates, sel, selection_labels, weight_step)
            report["weights_from"] = f"synthetic-lesion AUROC on {len(selection_labels)} selection images"
            report["selection_auroc"] = chosen["selection_auroc"]
        else:
            fallback = {k: v for k, v in DEFAULT_WEIGHTS.items() if k in candidates}
            chosen = select_weights(normal_comps, candidates, fallback=fallback or DEFAULT_WEIGHTS)
            report["weights_from"] = "defaults (no selection set)"
    if "auroc_per_score" in chosen:
        report["auroc_per_score"] = chosen["auroc_per_score"]
    calibration.weights.copy_(torch.tensor([chosen["weights"].get(name, 0.0) for name in SCORE_NAMES]))
    combined = calibration.combine({k: v for k, v in raw.items() if k in SCORE_NAMES}).cpu()
    threshold, source = fit_image_threshold(combined, labels_t, protocol, fpr)
    calibration.image_threshold.fill_(threshold)
    report.update({"threshold_from": source, "weights": calibration.weight_dict()})
    if protocol == "labelled-validation":
        report["f1_max"] = compute_f1_max_threshold(combined, labels_t)[0]
    report["image_threshold"] = float(calibration.image_threshold)
    return report


def save_calibration(calibration: AnomalyCalibration, path: str | os.PathLike) -> Path:
    """Write the calibration atomically (state dict with fingerprint, score names and report)."""
    if not bool(calibration.calibrated):
        raise ValueError("refusing to save an uncalibrated AnomalyCalibration.")
    return save_checkpoint_atomic({"calibration": calibration.state_dict()}, path)


def load_calibration(path: str | os.PathLike, calibration: AnomalyCalibration, fingerprint: str) -> None:
    """Load a calibration file into ``calibration``, refusing one made for other networks.

    Raises:
        CheckpointError: the file is unreadable, not a calibration, or its fingerprint is not ``fingerprint``.
    """
    obj = load_checkpoint(path)
    if "calibration" not in obj:
        raise CheckpointError(f"{str(path)!r} is not a calibration file (keys: {sorted(obj)}).")
    state = obj["calibration"]
    saved = state.get("_extra_state", {}).get("fingerprint")
    if saved != fingerprint:
        raise CheckpointError(
            f"calibration {str(path)!r} belongs to another model (fingerprint {saved}, this model {fingerprint}); "
            "re-run the calibration for these weights."
        )
    try:
        calibration.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"calibration {str(path)!r} does not fit this model: {e}") from e
