"""HQ-AnoGAN detector: encoder, generator, discriminator and calibrated scorer in one ``nn.Module``.

Sato et al., "HQ-AnoGAN", Int J CARS 2023, https://doi.org/10.1007/s11548-023-03031-9. An image x is encoded into
W+ (pSp encoder), turned into its pseudo-normal reconstruction x' = G(E(x)) (constant noise), and scored from the
latents and the residual. ``forward(image)`` returns the anomaly map (a MONAI bundle's ``pred``); :meth:`detect`
returns the full record (``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``, ``reconstruction``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

from monai_hqanogan.losses.encoder_losses import discriminator_feature_distance
from monai_hqanogan.networks.layers.modulated import check_deterministic_noise_mode
from monai_hqanogan.networks.nets.psp_encoder import PSPEncoder
from monai_hqanogan.networks.nets.stylegan2 import StyleGAN2Generator
from monai_hqanogan.networks.nets.stylegan2_discriminator import StyleGAN2Discriminator
from monai_hqanogan.scoring.calibration import SCORE_NAMES, AnomalyCalibration, fit_scores
from monai_hqanogan.scoring.selection import (
    best_width,
    check_protocol,
    choice_uncertainty,
    foreground_mask,
    reconstruction_scores,
)
from monai_hqanogan.transforms.array import ensure_finite
from monai_hqanogan.utils.checkpoint import model_fingerprint
from monai_hqanogan.utils.progress import progress_bar
from monai_hqanogan.utils.validation import check_image_batch

__all__ = ["HQAnoGANDetector"]


def _subsample(values: torch.Tensor, limit: int = 1_000_000) -> torch.Tensor:
    """An evenly strided float sample of at most ``limit`` values (``torch.quantile`` has an input size limit)."""
    values = values.flatten().float()
    return values[:: max(1, -(-values.numel() // limit))]


class HQAnoGANDetector(nn.Module):
    """Anomaly detector from a trained StyleGAN2 (G, D) and pSp encoder (E).

    Args:
        encoder: the trained :class:`PSPEncoder`.
        generator: the trained generator (G_ema).
        discriminator: the trained discriminator, for the ``feature`` score (None: that score is 0).
        calibration: a fitted :class:`AnomalyCalibration` (None: an empty one; call :meth:`calibrate`).
        refine_steps: Adam steps in W+ starting from E(x) to sharpen the reconstruction (0: none, the fast path).
        refine_lr: learning rate of those steps.
        smoothing_sigma: Gaussian smoothing of the anomaly map in pixels (0: none); the bundle and the benchmarks use
            :func:`~monai_hqanogan.evaluation.family_smoothing` (``resolution / 32``, at least 1 px).
        foreground_threshold: pixels are foreground where the (dilated) input exceeds this value in the [-1, 1]
            range; the map is zeroed and the residual score averaged over the foreground (None: no masking).
        feature_layers: discriminator feature indices for the ``feature`` score (None: all).
        noise_mode: the generator's noise for reconstructions, ``"const"`` or ``"none"`` (as the encoder was trained).
    """

    def __init__(
        self,
        encoder: PSPEncoder,
        generator: StyleGAN2Generator,
        discriminator: StyleGAN2Discriminator | None = None,
        calibration: AnomalyCalibration | None = None,
        refine_steps: int = 0,
        refine_lr: float = 0.01,
        smoothing_sigma: float = 1.0,
        foreground_threshold: float | None = None,
        feature_layers: Sequence[int] | None = None,
        noise_mode: str = "const",
    ) -> None:
        super().__init__()
        for name in ("resolution", "img_channels", "w_dim", "num_ws"):
            if getattr(encoder, name) != getattr(generator, name):
                raise ValueError(
                    f"encoder {name}={getattr(encoder, name)} != generator {name}={getattr(generator, name)}."
                )
        if refine_steps < 0 or smoothing_sigma < 0:
            raise ValueError(f"refine_steps and smoothing_sigma must be >= 0, got {refine_steps}, {smoothing_sigma}.")
        self.encoder = encoder.eval()
        self.generator = generator.eval().requires_grad_(False)
        self.discriminator = None if discriminator is None else discriminator.eval().requires_grad_(False)
        self.feature_layers = None if feature_layers is None else list(feature_layers)
        self.calibration = (
            calibration if calibration is not None else AnomalyCalibration(generator.num_ws, generator.w_dim)
        )
        self.resolution, self.img_channels = generator.resolution, generator.img_channels
        self.refine_steps, self.refine_lr = refine_steps, refine_lr
        self.smoothing = GaussianFilter(spatial_dims=2, sigma=smoothing_sigma) if smoothing_sigma > 0 else None
        self.smoothing_sigma = float(smoothing_sigma)  # the width built with: calibrate's smoothing_factors scale it
        self.foreground_threshold = foreground_threshold
        self.noise_mode = check_deterministic_noise_mode(noise_mode)

    # ------------------------------------------------------------------ helpers
    def _feature_distance(self, reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return discriminator_feature_distance(self.discriminator, reconstruction, image, self.feature_layers)

    def fingerprint(self) -> str:
        """Fingerprint of the networks (E, G, D) that a calibration must match."""
        nets = [self.encoder, self.generator] + ([] if self.discriminator is None else [self.discriminator])
        return model_fingerprint(*nets)

    def check_input(self, image: torch.Tensor) -> None:
        """Raise a ValueError naming the problem unless ``image`` is a floating-point [B, C, R, R] tensor with
        finite values."""
        check_image_batch(image, self.img_channels, self.resolution, "HQAnoGANDetector")
        if not image.is_floating_point():
            raise ValueError(
                f"HQAnoGANDetector expects floating-point images in [-1, 1], got {image.dtype}: scale them first, e.g. "
                f"with monai_hqanogan.transforms.gan_image_transforms({self.resolution})."
            )
        ensure_finite(image, "input", advice="fix or drop them before scoring.")

    def prepare_input(self, image: torch.Tensor) -> torch.Tensor:
        """:meth:`check_input`, then ``image`` on the networks' device and in their dtype (float32 by default)."""
        self.check_input(image)
        weight = next(self.generator.parameters())
        return image.to(device=weight.device, dtype=weight.dtype)

    def _refine(self, image: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """``refine_steps`` Adam steps on W+ minimising the pixel L2 to ``image`` (plus the feature loss if any)."""
        ws = ws.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([ws], lr=self.refine_lr)
        with torch.enable_grad():
            for _ in range(self.refine_steps):
                rec = self.generator.synthesis(ws, noise_mode=self.noise_mode)
                loss = F.mse_loss(rec, image, reduction="none").flatten(1).mean(1)
                if self.discriminator is not None:
                    loss = loss + self._feature_distance(rec, image)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
        return ws.detach()

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ws, pseudo-normal reconstruction)`` of ``image``."""
        ws = self.encoder(image)
        if self.refine_steps > 0:
            ws = self._refine(image, ws)
        return ws, self.generator.synthesis(ws, noise_mode=self.noise_mode)

    def foreground(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] float mask of the body: input above ``foreground_threshold``, dilated by 2 pixels."""
        return foreground_mask(image, self.foreground_threshold)

    def residual_scores(self, image: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
        """The score family every reconstruction method gets (``residual``, ``map_max``, ``anomaly_map``,
        ``foreground``; :func:`~monai_hqanogan.scoring.reconstruction_scores`) with this detector's smoothing and
        foreground rule."""
        return reconstruction_scores(image, reconstruction, self.smoothing, self.foreground_threshold)

    def residual_map(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] anomaly map: |x - x'| averaged over channels, smoothed, background zeroed."""
        return self.residual_scores(image, reconstruction)["anomaly_map"]

    # ------------------------------------------------------------------ inference
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The anomaly map [B, 1, H, W] of ``image`` [B, C, H, W] (H = W = the model's resolution)."""
        _, rec = self.reconstruct(image)
        return self.residual_map(image, rec)

    @torch.no_grad()
    def score_components(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every raw score of :data:`SCORE_NAMES` per image, plus ``ws``, ``cycle_layers`` (the per-layer cycle
        distances [B, num_ws]), ``reconstruction``, ``anomaly_map`` and ``foreground``."""
        return self._components(self.prepare_input(image))

    def _components(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`score_components` of an image batch already through :meth:`prepare_input`."""
        ws, rec = self.reconstruct(image)
        family = self.residual_scores(image, rec)
        residual = family["residual"]
        no_d = self.discriminator is None
        cycle_layers = (self.encoder(rec) - ws).square().sum(-1)  # [B, num_ws]: |E(G(E(x)))_l - E(x)_l|^2
        out: dict[str, torch.Tensor] = {
            "residual": residual,
            "map_max": family["map_max"],
            "feature": torch.zeros_like(residual) if no_d else self._feature_distance(rec, image),
            "latent_cycle": cycle_layers.mean(-1),
            "mahalanobis": self.calibration.density(ws),
            "w_avg_distance": (ws - self.generator.w_avg).norm(dim=-1).mean(-1),
            "cycle_fine": self.calibration.cycle_fine(cycle_layers),
        }
        out.update(
            {
                "ws": ws,
                "cycle_layers": cycle_layers,
                "reconstruction": rec,
                "anomaly_map": family["anomaly_map"],
                "foreground": family["foreground"],
            }
        )
        return out

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> dict[str, Any]:
        """The full record for a batch: ``pred_score`` [B] (combined calibrated score), ``pred_label`` [B] bool,
        ``anomaly_map`` [B, 1, H, W], ``pred_mask`` [B, 1, H, W] bool, ``reconstruction``, ``valid`` [B] (False for
        constant images, whose scores mean little), ``components`` (the raw scores) and the thresholds."""
        if not bool(self.calibration.calibrated):
            raise RuntimeError("the detector is not calibrated: call calibrate(...) or load a calibration file first.")
        image = self.prepare_input(image)
        comps = self._components(image)
        raw = {k: comps[k] for k in SCORE_NAMES}
        score = self._finite(self.calibration.combine(raw), comps["anomaly_map"])
        return {
            "pred_score": score,
            "pred_label": score >= self.calibration.image_threshold,
            "anomaly_map": comps["anomaly_map"],
            "pred_mask": comps["anomaly_map"] >= self.calibration.pixel_threshold,
            "reconstruction": comps["reconstruction"],
            "valid": image.flatten(1).std(dim=1) > 1e-6,
            "components": raw,
            "image_threshold": float(self.calibration.image_threshold),
            "pixel_threshold": float(self.calibration.pixel_threshold),
        }

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def _batched(
        self,
        images: torch.Tensor | Iterable[torch.Tensor],
        batch_size: int,
        progress: bool = False,
        desc: str = "scoring",
    ) -> dict[str, torch.Tensor]:
        chunks = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        total = len(images) if isinstance(images, torch.Tensor) else None  # images; batches of an iterable unknown
        parts: dict[str, list[torch.Tensor]] = {}
        device = next(self.generator.parameters()).device
        with progress_bar(progress=progress, total=total, desc=desc, unit="img") as bar:
            for chunk in chunks:
                for k, v in self.score_components(chunk.to(device)).items():
                    parts.setdefault(k, []).append(v.cpu())
                bar.update(len(chunk))
        if not parts:
            raise ValueError("no images were given.")
        return {k: torch.cat(v) for k, v in parts.items()}

    @torch.no_grad()
    def detect_all(
        self,
        images: torch.Tensor | Iterable[torch.Tensor],
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "scoring",
    ) -> dict[str, torch.Tensor]:
        """:meth:`score_components` of many images, batched, gathered on the CPU, plus ``pred_score`` (the calibrated
        combined score). For evaluations that need every image's score, map and reconstruction at once.

        Args:
            images: images [N, C, R, R] (or an iterable of batches).
            batch_size: images per forward pass.
            progress: show a bar over the images on stderr when it is a terminal
                (:func:`~monai_hqanogan.utils.progress_bar`).
            desc: the bar's label.
        """
        if not bool(self.calibration.calibrated):
            raise RuntimeError("the detector is not calibrated: call calibrate(...) or load a calibration file first.")
        comps = self._batched(images, batch_size, progress, desc)
        device = self.calibration.weights.device
        comps["pred_score"] = self._finite(
            self.calibration.combine({k: comps[k].to(device) for k in SCORE_NAMES}).cpu(), comps["anomaly_map"]
        )
        return comps

    @staticmethod
    def _finite(score: torch.Tensor, amap: torch.Tensor) -> torch.Tensor:
        """``score`` if it and the maps are finite; a FloatingPointError otherwise (fail closed: a NaN score must
        never read as "normal")."""
        finite = torch.isfinite(score) & torch.isfinite(amap).flatten(1).all(dim=1).to(score.device)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()[:10].tolist()
            raise FloatingPointError(
                f"non-finite anomaly scores or maps for images {bad} of the batch: the weights or the "
                "calibration are broken (no decision is made from them)."
            )
        return score

    @torch.no_grad()
    def calibrate(
        self,
        fit_images: torch.Tensor,
        val_images: torch.Tensor,
        val_labels: torch.Tensor | None = None,
        val_masks: torch.Tensor | None = None,
        fpr: float = 0.05,
        pixel_fpr: float = 0.01,
        weight_step: float = 0.25,
        batch_size: int = 32,
        protocol: str = "normal-only",
        selection_images: torch.Tensor | None = None,
        selection_labels: torch.Tensor | None = None,
        selection_masks: torch.Tensor | None = None,
        progress: bool = False,
        smoothing_factors: Sequence[float] | None = None,
        selection_groups: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Fit the scorer and thresholds under a named protocol; returns a report (also kept in
        ``calibration.info``).

        Under ``"normal-only"`` (the default, DESIGN.md section 4a) no real abnormal image influences anything:
        abnormal validation images are dropped before scoring, the weights are chosen on the synthetic-lesion
        ``selection_*`` set (or are :data:`~monai_hqanogan.scoring.DEFAULT_WEIGHTS` without one), the image threshold
        sits at ``fpr`` on the normal validation images and the pixel threshold at the Dice maximum of the synthetic
        lesions (or at ``pixel_fpr`` of normal pixels). Under ``"labelled-validation"`` (opt-in) the weights give
        the best AUROC on the labelled validation images, the threshold is at their F1 maximum, and ``val_masks``
        (if given) set the pixel threshold.

        Example::

            report = detector.calibrate(train_images, val_images, selection_images=synthetic_images,
                                        selection_labels=synthetic_labels, selection_masks=synthetic_masks)
            record = detector.detect(test_images)

        Args:
            fit_images: normal images (e.g. the training set) for the W+ Gaussian of the ``mahalanobis`` score and
                the per-layer statistics of ``cycle_fine``.
            val_images: validation images, normal or mixed.
            val_labels: 1 abnormal / 0 normal per validation image (None: all normal).
            val_masks: ground-truth lesion masks [N, 1, H, W] of the validation images (``labelled-validation``).
            fpr: false-positive rate on normal validation images that fixes the ``normal-only`` image threshold.
            pixel_fpr: false-positive rate on normal pixels that fixes the pixel threshold without masks.
            weight_step: grid step of the weight search.
            batch_size: images per forward pass.
            protocol: ``"normal-only"`` or ``"labelled-validation"``.
            selection_images: normal images, some with synthetic lesions pasted in: they choose the weights under
                ``normal-only`` and, with ``selection_masks``, the pixel threshold under either protocol.
            selection_labels: 1 where a lesion was pasted, 0 otherwise.
            selection_masks: the pasted lesions' masks [M, 1, H, W], for the pixel threshold.
            progress: show a bar over the images of each set scored on stderr when it is a terminal
                (:func:`~monai_hqanogan.utils.progress_bar`).
            smoothing_factors: let the calibration choose the anomaly map's smoothing too: the Gaussian's sigma is
                tried at each of these multiples of ``smoothing_sigma`` (the width the detector was built with, not
                one a loaded model file holds; e.g. ``(1, 1.5, 2, 3)``), each with its own
                weight search on the same set the weights are chosen on (the synthetic lesions under
                ``normal-only``, the labelled validation images under ``labelled-validation``), and the width with
                the best AUROC is kept (the first of equal ones), in the detector's state and so in its model file.
                The report lists every width's AUROC (``smoothing_aurocs``). None: keep the detector's width.
            selection_groups: the near-duplicate groups of the selection images (a slice and its lesioned copy share
                one), for the report's bootstrap interval of the selection AUROC (``selection_auroc_ci``) and the
                chosen width's lead over the runner-up (``smoothing_runner_up``,
                :func:`~monai_hqanogan.scoring.choice_uncertainty`); they choose nothing. None: one group per image.
        """
        check_protocol(protocol)
        if selection_images is not None and selection_labels is None:
            raise ValueError("selection_images need selection_labels (1 where a synthetic lesion was pasted).")
        if selection_groups is not None and (
            selection_images is None or len(selection_groups) != len(selection_images)
        ):
            raise ValueError("selection_groups need selection_images, and one group per selection image.")
        sigmas = self._smoothing_candidates(smoothing_factors, protocol, selection_images)
        if protocol == "normal-only" and val_masks is not None:
            raise ValueError(
                "val_masks are real lesion masks, which choose nothing under protocol 'normal-only': give synthetic "
                "lesions as selection_images / selection_labels / selection_masks, or use protocol "
                "'labelled-validation'."
            )
        self.eval()
        cal = self.calibration
        if protocol == "normal-only" and val_labels is not None:
            keep = torch.as_tensor(val_labels).long().cpu() == 0
            ignored = int((~keep).sum())
            val_images, val_labels = val_images[keep.to(val_images.device)], None
        else:
            ignored = 0
        fit = self._batched(fit_images, batch_size, progress, "calibration: fit images")
        cal.density.fit(fit["ws"])
        cal.fit_cycle(fit["cycle_layers"])
        comps = self._batched(val_images, batch_size, progress, "calibration: validation")
        selection = None
        if selection_images is not None:
            selection = self._batched(selection_images, batch_size, progress, "calibration: synthetic lesions")

        def fit(val: dict[str, torch.Tensor], sel: dict[str, torch.Tensor] | None) -> dict[str, Any]:
            return fit_scores(
                cal,
                {k: val[k] for k in SCORE_NAMES},
                val_labels,
                fpr=fpr,
                weight_step=weight_step,
                protocol=protocol,
                selection=None if sel is None else {k: sel[k] for k in SCORE_NAMES},
                selection_labels=selection_labels,
            )

        aurocs, chosen_sigma = None, None
        width_scores: dict[float, torch.Tensor] = {}  # the selection's combined score at each width tried
        if sigmas is not None:

            def auroc_of(sigma: float) -> float:  # only map_max depends on the width: re-smooth the residuals
                self._set_smoothing(sigma)
                sel = self._resmoothed(selection_images, selection)
                trial = fit(self._resmoothed(val_images, comps), sel)
                if sel is not None:
                    width_scores[sigma] = cal.combine({k: sel[k] for k in SCORE_NAMES}).cpu()
                return float(trial.get("selection_auroc", trial.get("auroc")))

            chosen_sigma, aurocs = best_width(sigmas, auroc_of)
            self._set_smoothing(chosen_sigma)
            # score the chosen width with the full forward pass, as inference will
            comps = self._batched(val_images, batch_size, progress, "calibration: validation (chosen width)")
            if selection_images is not None:
                selection = self._batched(selection_images, batch_size, progress, "calibration: synthetic (chosen)")
        report = fit(comps, selection)
        if aurocs is not None:
            report["smoothing_candidates"] = list(sigmas)
            report["smoothing_sigma"] = float(self.smoothing.sigma[0])
            report["smoothing_aurocs"] = aurocs
        if protocol == "normal-only":
            report["ignored_abnormal"] = ignored
            if selection is not None:  # how firm the choice is: reported, never used
                chosen_scores = cal.combine({k: selection[k] for k in SCORE_NAMES}).cpu()
                uncertainty = choice_uncertainty(
                    chosen_scores, selection_labels, selection_groups, width_scores or None, chosen_sigma
                )
                report.update(uncertainty)
        if selection is not None and selection_masks is not None:
            report.update(self._fit_pixel_threshold(selection, selection_labels, selection_masks, pixel_fpr))
            report["pixel_threshold_from"] += " (synthetic lesions)"
        else:
            report.update(self._fit_pixel_threshold(comps, val_labels, val_masks, pixel_fpr))
        cal.fingerprint = self.fingerprint()
        cal.info = report
        cal.calibrated.fill_(True)
        return report

    def _smoothing_candidates(
        self, factors: Sequence[float] | None, protocol: str, selection_images: torch.Tensor | None
    ) -> list[float] | None:
        """The sigmas (px) ``calibrate(smoothing_factors=...)`` tries, checked before any image is scored."""
        if factors is None:
            return None
        values = list(factors)
        if not values or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 and f < float("inf") for f in values
        ):
            raise ValueError(f"smoothing_factors must be a non-empty list of numbers > 0, got {factors!r}.")
        if self.smoothing is None:
            raise ValueError("smoothing_factors need a detector that smooths its map (smoothing_sigma > 0).")
        if protocol == "normal-only" and selection_images is None:
            raise ValueError(
                "smoothing_factors choose the width on the synthetic lesions under protocol 'normal-only': give "
                "selection_images and selection_labels."
            )
        # multiples of the width the detector was built with, not of the one a loaded file or an earlier
        # calibration set: calibrating again tries the same widths
        return list(dict.fromkeys(self.smoothing_sigma * float(f) for f in values))  # each once, in the given order

    def _set_smoothing(self, sigma: float) -> None:
        """Set the map's Gaussian width in place (its parameters are in the state dict, so the model file keeps it)."""
        with torch.no_grad():
            for parameter in self.smoothing.sigma:
                parameter.fill_(sigma)

    def _resmoothed(self, images: torch.Tensor | None, comps: dict[str, torch.Tensor] | None, chunk: int = 256):
        """``comps`` with ``map_max`` recomputed from ``images`` and their stored reconstructions at the current
        width (on the CPU, in float32); None for None."""
        if comps is None or images is None:
            return None
        smoothing = GaussianFilter(2, sigma=float(self.smoothing.sigma[0]))
        peaks = [
            reconstruction_scores(
                images[i : i + chunk].float().cpu(), comps["reconstruction"][i : i + chunk].float(), smoothing,
                self.foreground_threshold,
            )["map_max"]
            for i in range(0, len(comps["reconstruction"]), chunk)
        ]  # fmt: skip
        return {**comps, "map_max": torch.cat(peaks)}

    def _fit_pixel_threshold(
        self,
        comps: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        masks: torch.Tensor | None,
        pixel_fpr: float,
    ) -> dict[str, Any]:
        """Set ``calibration.pixel_threshold`` from scored images: Dice-max over ``masks`` if given, else the
        ``1 - pixel_fpr`` quantile of the normal images' foreground map values."""
        cal = self.calibration
        maps = comps["anomaly_map"]
        labels = torch.zeros(len(maps), dtype=torch.long) if labels is None else labels.long().cpu()
        if masks is not None:
            masks = masks.bool().cpu()
            if masks.shape != maps.shape:
                raise ValueError(f"masks must have the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}.")
            if not bool(masks.any()):
                raise ValueError("the masks are all empty: give lesion masks, or no masks to use pixel_fpr.")
            candidates = torch.quantile(_subsample(maps[maps > 0]), torch.linspace(0.5, 0.999, 200))
            dices = [
                float(2 * ((maps >= t) & masks).sum() / ((maps >= t).sum() + masks.sum()).clamp_min(1))
                for t in candidates
            ]
            best = int(torch.tensor(dices).argmax())
            cal.pixel_threshold.fill_(float(candidates[best]))
            source = f"Dice max ({dices[best]:.3f}) on {len(maps)} images with masks"
        else:
            normal = labels == 0
            if not bool(normal.any()):
                raise ValueError("no normal image to set the pixel threshold from: give masks or normal images.")
            values = maps[normal][comps["foreground"][normal].bool()]
            cal.pixel_threshold.fill_(float(torch.quantile(_subsample(values), 1 - pixel_fpr)))
            source = f"FPR {pixel_fpr} on normal pixels"
        return {"pixel_threshold": float(cal.pixel_threshold), "pixel_threshold_from": source}

    @torch.no_grad()
    def calibrate_pixel_threshold(
        self,
        images: torch.Tensor | Iterable[torch.Tensor],
        masks: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_fpr: float = 0.01,
        batch_size: int = 32,
    ) -> dict[str, Any]:
        """Re-fit only the pixel threshold of a calibrated detector, e.g. on a separate set with lesion masks
        (synthetic lesions) when the image-level validation set has none.

        Args:
            images: images [N, C, R, R] (or an iterable of batches).
            masks: lesion masks [N, 1, R, R] (None: use ``pixel_fpr`` on the normal images).
            labels: 1 abnormal / 0 normal per image, needed without masks (None: all normal).
            pixel_fpr: false-positive rate on normal pixels when there are no masks.
            batch_size: images per forward pass.
        """
        if not bool(self.calibration.calibrated):
            raise RuntimeError("calibrate(...) the detector before re-fitting its pixel threshold.")
        self.eval()
        report = self._fit_pixel_threshold(self._batched(images, batch_size), labels, masks, pixel_fpr)
        self.calibration.info = {**self.calibration.info, **report}
        return report
