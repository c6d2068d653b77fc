"""Every method on one split, with the same seeds: HQ-AnoGAN, f-AnoGAN, AnoGAN, GANomaly (anomalib), a conv
autoencoder, PCA and mean intensity; plus HQ-AnoGAN ablations (each score alone, the calibrated combination, latent
refinement, optionally ADA off).

    python -m monai_hqanogan.data.prepare br35h --download --output bundles/brain_mri_anomaly_hqanogan/data/br35h
    python benchmarks/compare.py --mode quick --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h
    python benchmarks/compare.py --mode quick --dataset_dir ... \
        --hq_model bundles/brain_mri_anomaly_hqanogan/runs/demo/models/model.pt --hq_train_s 736   # reuse the demo
    python benchmarks/compare.py --mode full --device cuda --dataset_dir ...        # GPU: 128 px, long training
    python benchmarks/compare.py --mode tiny --toy --out /tmp/compare                 # synthetic data, a minute

Every method sees the same preprocessed images (the bundle's ``gan_image_transforms``): trained on the normal
``training`` list, scored on ``test`` (real anomalies, image labels) and ``localisation_test`` (synthetic lesions
with masks). HQ-AnoGAN is calibrated on ``validation`` / ``localisation_validation`` exactly as the bundle does.
Writes ``<out>/<date>-<machine>-compare.md`` (tables with the column "image AUROC", one row per method), a JSON
file with every number, and ``<out>/<date>-<machine>-compare.png``: the same 8 test images across methods (input,
reconstruction, heat map). Methods that cannot run here (e.g. anomalib not installed) keep their row with the
reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images
from monai_hqanogan.engines import EncoderTrainer, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.evaluation import (
    FAMILY_FOREGROUND,
    best_width,
    evaluate_detection,
    family_scores,
    family_smoothing,
    format_interval,
    markdown_table,
    method_components,
    select_method_scores,
)
from monai_hqanogan.losses.encoder_losses import discriminator_feature_distance
from monai_hqanogan.metrics import compute_image_auroc
from monai_hqanogan.networks.nets import HQAnoGANDetector, PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.scoring import FAMILY_NAMES, PROTOCOLS, SCORE_NAMES, ScoreSelection
from monai_hqanogan.transforms import AdaptiveAugmentPipe
from monai_hqanogan.utils import load_checkpoint, write_text_atomic
from monai_hqanogan.workflows import load_split, machine_description

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = json.loads((ROOT / "bundles" / "brain_mri_anomaly_hqanogan" / "configs" / "settings.json").read_text())
METHODS = ("HQ-AnoGAN", "f-AnoGAN", "AnoGAN", "GANomaly", "autoencoder", "PCA", "mean intensity")
#: (key, header) of one run's per-set table and of the table over runs (mean ± sd)
RUN_COLUMNS = (
    ("image_auroc", "image AUROC"), ("interval", "95% interval (groups)"), ("f1_max", "F1-max"),
    ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"), ("dice", "Dice"), ("FPR at threshold", "FPR at threshold"),
    ("TPR at threshold", "TPR at threshold"),
    ("train s", "train s"), ("fit epochs", "epochs"), ("images/s", "images/s"), ("images", "images"),
    ("score", "score"),
)  # fmt: skip
AGGREGATE_TEST_KEYS = ("image_auroc", "f1_max", "FPR at threshold", "TPR at threshold")
AGGREGATE_COLUMNS = (
    ("image_auroc", "test image AUROC"), ("f1_max", "F1-max"), ("FPR at threshold", "FPR at threshold"),
    ("TPR at threshold", "TPR at threshold"), ("pixel_auroc", "lesion-set pixel AUROC"), ("aupro", "AUPRO"),
    ("runs", "runs"), ("chosen", "score chosen (runs)"),
)  # fmt: skip


@dataclasses.dataclass
class Budget:
    """How long each method trains in one mode. HQ-AnoGAN follows the bundle's setting of the same name."""

    hq: dict[str, Any]
    fanogan_gan_iterations: int
    fanogan_encoder_iterations: int
    fanogan_channels: tuple[int, int]
    anogan_steps: int
    anogan_max_images: int | None
    ae_epochs: int
    ae_seconds: float | None
    refine_steps: int
    refine_max_images: int
    hq_generator_s: float | None = None  # wall-clock limits (None: the kimg / iterations above decide)
    hq_encoder_s: float | None = None
    fanogan_seconds: float | None = None
    ganomaly_epochs: int = 1
    ganomaly_seconds: float | None = None
    hq_augment: dict[str, Any] = dataclasses.field(default_factory=dict)  # AdaptiveAugmentPipe options of HQ's ADA


TINY_HQ = {
    **SETTINGS["demo"], "resolution": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 1, "channel_base": 128,
    "channel_max": 16, "encoder_base_channels": 8, "encoder_max_channels": 16, "batch_size": 8,
    "generator_kimg": 0.064, "encoder_kimg": 0.064,
}  # fmt: skip
#: one GPU call of about 8 minutes for every method: 64 px, each network trained for a fixed wall-clock budget
TIMED_HQ = {
    **SETTINGS["full"], "resolution": 64, "batch_size": 64, "generator_kimg": 100_000, "encoder_kimg": 100_000,
}  # fmt: skip
#: the bundle's 'gpu' setting (one device call): HQ-AnoGAN's kimg with wall-clock caps, baselines capped alike
GPU_HQ = SETTINGS["gpu"]
BUDGETS = {
    "tiny": Budget(TINY_HQ, 8, 8, (8, 16), 5, 16, 1, 5.0, 2, 8, ganomaly_epochs=1),
    # quick: budgets in kimg, iterations and epochs only, so that what each method trains does not depend on the
    # machine's load (a wall-clock cap cut the autoencoder and GANomaly short when benchmarks ran side by side)
    "quick": Budget(SETTINGS["demo"], 1000, 500, (32, 128), 100, 60, 30, None, 20, 100, ganomaly_epochs=20),
    "timed": Budget(TIMED_HQ, 10**6, 10**6, (64, 512), 500, 300, 10**6, 45.0, 50, 300, hq_generator_s=180.0,
                    hq_encoder_s=50.0, fanogan_seconds=50.0, ganomaly_epochs=1000, ganomaly_seconds=40.0),
    "full": Budget(SETTINGS["full"], 20000, 10000, (64, 512), 500, None, 300, 600.0, 50, None, ganomaly_epochs=200),
    "gpu": Budget(GPU_HQ, 10**6, 10**6, (64, 512), 500, 200, 10**6, 40.0, 50, 200,
                  hq_generator_s=GPU_HQ["generator_seconds"], hq_encoder_s=GPU_HQ["encoder_seconds"],
                  fanogan_seconds=40.0, ganomaly_epochs=1000, ganomaly_seconds=30.0),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- data
def toy_data(resolution: int, n_train: int = 96, n_test: int = 24, seed: int = 0) -> dict[str, dict[str, Any]]:
    """A synthetic stand-in for a prepared datalist: ellipse "heads", lesions pasted with exact masks."""

    def lesioned(n: int, s: int) -> dict[str, Any]:
        normal = make_ellipse_images(n, resolution, seed=s)
        ill, masks = add_synthetic_lesions(make_ellipse_images(n, resolution, seed=s + 1), seed=s)
        return {
            "images": torch.cat([normal, ill]),
            "labels": torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)]),
            "masks": torch.cat([torch.zeros_like(masks), masks]),
            "names": [f"toy_{s}_{i}" for i in range(2 * n)],
        }

    train = make_ellipse_images(n_train, resolution, seed=seed)
    data = {"training": {"images": train, "labels": torch.zeros(n_train, dtype=torch.long)}}
    for key, s in (("validation", 10), ("test", 20), ("localisation_validation", 30), ("localisation_test", 40)):
        data[key] = lesioned(n_test, seed + s)
    return data


SPLITS = ("training", "validation", "test", "localisation_validation", "localisation_test")


def dataset_data(dataset_dir: Path | None, resolution: int, cache: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every split of a prepared dataset as tensors on the model grid (the bundle's preprocessing).

    With ``cache``: read from that file when it exists (images stored as float16, so a 64 px Br35H fits in 40 MB
    and can travel to another machine), else load from ``dataset_dir`` and write it.
    """
    if cache is not None and cache.exists():
        stored = torch.load(cache, weights_only=True)
        if stored.get("resolution") != resolution:
            raise ValueError(f"{cache} holds {stored.get('resolution')} px images, this mode needs {resolution} px.")
        out = stored["data"]
        for part in out.values():
            part["images"] = part["images"].float()
            if "masks" in part:
                part["masks"] = part["masks"].float()
        return out
    if dataset_dir is None:
        raise ValueError("give --dataset_dir (a folder prepared by monai_hqanogan.data.prepare), or an existing cache.")
    datalist = dataset_dir / "datalist.json"
    out = {}
    for key in SPLITS:
        out[key] = load_split(datalist, key, resolution, with_masks=key.startswith("localisation"))
    if cache is not None:
        small = {key: {**part, "images": part["images"].half()} for key, part in out.items()}
        for part in small.values():
            if "masks" in part:
                part["masks"] = part["masks"].bool()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(cache.suffix + ".partial")
        torch.save({"resolution": resolution, "data": small}, tmp)
        tmp.replace(cache)
    return out


# ---------------------------------------------------------------------------------------------------------- methods
def parameter_count(*modules: nn.Module | None) -> int:
    """Learned values of a model: parameters plus floating-point buffers (PCA keeps its components in buffers)."""
    count = 0
    for m in modules:
        if m is not None:
            count += sum(p.numel() for p in m.parameters())
            count += sum(b.numel() for b in m.buffers() if b.is_floating_point())
    return count


def _loader(images: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True)


def load_hqanogan(path: Path, budget: Budget, device: str, train_s: float) -> dict[str, Any]:
    """A detector the bundle already trained and calibrated (``runs/<setting>/models/model.pt``) with the budget's
    setting, instead of training it again; ``train_s`` is taken as given (e.g. from the main job's timings)."""
    s = budget.hq
    g = StyleGAN2Generator(
        resolution=s["resolution"], z_dim=s["z_dim"], w_dim=s["w_dim"], mapping_layers=s["mapping_layers"],
        channel_base=s["channel_base"], channel_max=s["channel_max"],
    )  # fmt: skip
    d = StyleGAN2Discriminator(resolution=s["resolution"], channel_base=s["channel_base"], channel_max=s["channel_max"])
    e = PSPEncoder(
        resolution=s["resolution"], w_dim=s["w_dim"], num_ws=g.num_ws, base_channels=s["encoder_base_channels"],
        max_channels=s["encoder_max_channels"],
    )  # fmt: skip
    det = HQAnoGANDetector(e, g, d, smoothing_sigma=family_smoothing(s["resolution"]), foreground_threshold=-0.9)
    det.load_state_dict(load_checkpoint(path))
    return {"detector": det.to(device), "train_s": train_s}


def train_hqanogan(
    data: dict, budget: Budget, device: str, ada_mode: str = "adaptive", seed: int = 0
) -> dict[str, Any]:
    """G and D (StyleGAN2-ADA), then E, then the bundle's normal-only calibration; returns the detector and the train
    time."""
    s = budget.hq
    torch.manual_seed(seed)
    res = data["training"]["images"].shape[-1]
    g = StyleGAN2Generator(
        resolution=res, z_dim=s["z_dim"], w_dim=s["w_dim"], mapping_layers=s["mapping_layers"],
        channel_base=s["channel_base"], channel_max=s["channel_max"],
    ).to(device)  # fmt: skip
    d = StyleGAN2Discriminator(resolution=res, channel_base=s["channel_base"], channel_max=s["channel_max"]).to(device)
    loader = _loader(data["training"]["images"], s["batch_size"])
    start = time.perf_counter()
    gan = StyleGAN2Trainer(
        device, 1_000_000, loader, g, d, stylegan2_adam(g.parameters(), lr=s["generator_lr"], reg_interval=4),
        stylegan2_adam(d.parameters(), lr=s["generator_lr"], reg_interval=16), ada_mode=ada_mode,
        total_kimg=s["generator_kimg"], amp=s["amp"], max_seconds=budget.hq_generator_s,
        channels_last=s.get("channels_last", True),
        augment_pipe=AdaptiveAugmentPipe(**budget.hq_augment) if budget.hq_augment else None,
    )  # fmt: skip
    gan.run()
    g_kimg, g_s = gan.kimg, time.perf_counter() - start
    e = PSPEncoder(
        resolution=res, w_dim=s["w_dim"], num_ws=g.num_ws, base_channels=s["encoder_base_channels"],
        max_channels=s["encoder_max_channels"],
    ).to(device)  # fmt: skip
    enc = EncoderTrainer(
        device, 1_000_000, loader, e, gan.generator_ema, torch.optim.Adam(e.parameters(), lr=s["encoder_lr"]),
        discriminator=d, total_kimg=s["encoder_kimg"], amp=s["amp"], max_seconds=budget.hq_encoder_s,
        channels_last=s.get("channels_last", True),
    )  # fmt: skip
    t0 = time.perf_counter()
    enc.run()
    e_kimg, e_s = enc.kimg, time.perf_counter() - t0
    det = HQAnoGANDetector(e, gan.generator_ema, d, smoothing_sigma=family_smoothing(res), foreground_threshold=-0.9)
    det = det.to(device)  # its calibration buffers too
    calibrate_normal_only(det, data)
    training = {
        "generator_kimg": g_kimg, "generator_s": g_s, "encoder_kimg": e_kimg, "encoder_s": e_s,
        "ada_p": float(gan.ada.p), "generator_stopped_by": gan.stopped_by, "encoder_stopped_by": enc.stopped_by,
    }  # fmt: skip
    return {"detector": det, "train_s": time.perf_counter() - start, "training": training}


#: the map widths the calibration chooses among, as multiples of ``family_smoothing``: those of the bundle's
#: ``calibrate.json`` (None there: the family width alone)
SMOOTHING_FACTORS = json.loads((ROOT / "bundles/brain_mri_anomaly_hqanogan/configs/calibrate.json").read_text())[
    "smoothing_factors"
]


def calibrate_normal_only(det: HQAnoGANDetector, data: dict) -> dict[str, Any]:
    """The bundle's default calibration: normal validation images, synthetic lesions choose the weights and the map's
    width (:data:`SMOOTHING_FACTORS`), no real abnormal image."""
    val, loc = data["validation"], data["localisation_validation"]
    return det.calibrate(
        data["training"]["images"][:2000], val["images"][val["labels"] == 0], selection_images=loc["images"],
        selection_labels=loc["labels"], selection_masks=loc["masks"], smoothing_factors=SMOOTHING_FACTORS,
    )  # fmt: skip


#: the sets every method scores: two to choose on (the protocols), two to report
SCORED_SETS = ("validation", "localisation_validation", "test", "localisation_test")


def run_reference(method: nn.Module, fit_kwargs: dict, data: dict, sets: tuple[str, ...] = SCORED_SETS,
                  own_score: bool = False) -> dict[str, Any]:  # fmt: skip
    """Fit a ReferenceBaseline on the training normals and score every set: a method that reconstructs gets the
    score family (``candidates``: residual, map_max, and feature where it has a critic); one that does not, or with
    ``own_score`` (GANomaly as anomalib gives it), its own score as the only candidate ``score``."""
    start = time.perf_counter()
    method.fit(data["training"]["images"], **fit_kwargs)
    train_s = time.perf_counter() - start
    out: dict[str, Any] = {"train_s": train_s, "params": parameter_count(method), "sets": {}}
    if getattr(method, "fit_info", None):
        out["fit_info"] = {k: v for k, v in method.fit_info.items() if isinstance(v, (int, float, str))}
    for key in sets:
        t0 = time.perf_counter()
        comps, maps, rec, out["candidates"] = method_components(method, data[key]["images"], own_score)
        seconds = time.perf_counter() - t0
        out["sets"][key] = {"components": comps, "maps": maps, "reconstructions": rec, "seconds": seconds}
    return out


def _subset(data: dict, key: str, limit: int | None) -> torch.Tensor:
    """Indices of at most ``limit`` images, the same for every run: stratified by label, evenly spaced."""
    labels = data[key]["labels"]
    if limit is None or len(labels) <= limit:
        return torch.arange(len(labels))
    picks = []
    for value in (0, 1):
        idx = torch.nonzero(labels == value).flatten()
        k = max(1, round(limit * len(idx) / len(labels)))
        picks.append(idx[torch.linspace(0, len(idx) - 1, k).round().long()])
    return torch.cat(picks).sort().values


# ---------------------------------------------------------------------------------------------------------- main
def compare(
    data: dict,
    budget: Budget,
    device: str,
    ablate_ada: bool = False,
    log: Callable = print,
    hq_model: Path | None = None,
    hq_train_s: float = float("nan"),
    skip: tuple[str, ...] = (),
    seed: int = 0,
    ablations: bool = True,
) -> dict:
    sets = SCORED_SETS
    res = data["training"]["images"].shape[-1]
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}

    widths: list[float] | None = None

    def attempt(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in skip:
            notes[name] = "skipped (--skip)"
            return
        log(f"[compare] {name} ...")
        try:
            r = results[name] = fn()
            if name != "HQ-AnoGAN" and widths and "map_max" in r["candidates"]:  # the widths HQ-AnoGAN chose among
                r["width"] = choose_width(r, data, widths)
            r["selections"] = {protocol: select_scores(r, data, protocol) for protocol in PROTOCOLS}
            index = r.get("subset", {}).get("test")
            labels = data["test"]["labels"] if index is None else data["test"]["labels"][index]
            sel = r["selections"]["normal-only"]
            auroc = compute_image_auroc(sel.combine(r["sets"]["test"]["components"]), labels)
            log(f"[compare] {name}: trained in {r.get('train_s', 0):.0f} s; normal-only test image AUROC {auroc:.3f} "
                f"({sel.describe()})")  # fmt: skip
        except Exception as err:  # keep the row, say why
            notes[name] = f"not run: {type(err).__name__}: {err}"
            log(f"[compare] {name}: {notes[name]}\n{traceback.format_exc(limit=3)}")

    hq: dict[str, Any] = {}

    def run_hq() -> dict[str, Any]:
        if hq_model is None:
            hq.update(train_hqanogan(data, budget, device, seed=seed))
        else:
            hq.update(load_hqanogan(hq_model, budget, device, hq_train_s))
        det = hq["detector"]
        out = {"train_s": hq["train_s"], "params": parameter_count(det.encoder, det.generator, det.discriminator)}
        out.update({"sets": {}, "candidates": list(SCORE_NAMES)})
        for key in sets:
            t0 = time.perf_counter()
            rec = det.detect_all(data[key]["images"])
            out["sets"][key] = {
                "maps": rec["anomaly_map"], "reconstructions": rec["reconstruction"],
                "seconds": time.perf_counter() - t0, "components": {k: rec[k] for k in SCORE_NAMES},
            }  # fmt: skip
        out["pixel_threshold"] = float(det.calibration.pixel_threshold)
        calibration = det.calibration.info or {}
        if "smoothing_sigma" in calibration:
            out["width"] = {k: calibration[k] for k in ("smoothing_sigma", "smoothing_aurocs")}
        if "training" in hq:
            out["training"] = hq["training"]
        return out

    attempt("HQ-AnoGAN", run_hq)
    if "detector" in hq:  # every method with a map chooses its width among the same candidates, when HQ-AnoGAN did
        widths = (hq["detector"].calibration.info or {}).get("smoothing_candidates")

    def run_fanogan() -> dict[str, Any]:
        from monai_hqanogan.baselines.fanogan import FAnoGANBaseline

        base, top = budget.fanogan_channels
        method = FAnoGANBaseline(image_size=res, base_channels=base, max_channels=top)
        kwargs = {
            "gan_iterations": budget.fanogan_gan_iterations,
            "encoder_iterations": budget.fanogan_encoder_iterations,
            "time_limit_s": budget.fanogan_seconds,
        }
        return run_reference(method, {**kwargs, "device": device, "seed": seed}, data, sets)

    attempt("f-AnoGAN", run_fanogan)

    def run_anogan() -> dict[str, Any]:
        from monai_hqanogan.baselines.anogan import AnoGANScorer

        if "detector" not in hq:
            raise RuntimeError("needs HQ-AnoGAN's trained generator, which did not train")
        det = hq["detector"]
        scorer = AnoGANScorer(generator=det.generator, discriminator=det.discriminator, steps=budget.anogan_steps)
        scorer.fit(data["training"]["images"][:8])
        # no training of its own: it searches the latent space of HQ-AnoGAN's G, compared by D's features
        out: dict[str, Any] = {"train_s": 0.0, "params": parameter_count(det.generator, det.discriminator)}
        out.update({"sets": {}, "subset": {}, "candidates": list(FAMILY_NAMES)})
        for key in sets:
            index = _subset(data, key, budget.anogan_max_images)
            images = data[key]["images"][index]
            t0 = time.perf_counter()
            record = scorer.optimise(images.to(device))
            rec = record["reconstruction"].to(device)
            with torch.no_grad():  # the feature member as HQ-AnoGAN computes it, with the same D
                feature = discriminator_feature_distance(det.discriminator, rec, images.to(device)).cpu()
            comps = family_scores(images, rec.cpu(), feature)
            out["sets"][key] = {
                "components": comps, "maps": comps.pop("anomaly_map"), "reconstructions": rec.cpu(),
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
            out["subset"][key] = index
        return out

    attempt("AnoGAN", run_anogan)

    def run_ganomaly() -> dict[str, Any]:
        from monai_hqanogan.baselines.ganomaly import AnomalibGANomalyBaseline

        method = AnomalibGANomalyBaseline(image_size=res)
        val = data["validation"]
        fit = {  # normal-only: anomalib's validation sees the normal validation images only
            "validation_images": val["images"][val["labels"] == 0], "epochs": budget.ganomaly_epochs,
            "time_limit_s": budget.ganomaly_seconds, "device": device, "seed": seed,
            "batch_size": min(32, len(data["training"]["images"])),
        }  # fmt: skip
        return run_reference(method, fit, data, sets, own_score=True)

    attempt("GANomaly", run_ganomaly)

    from monai_hqanogan.baselines import ConvAutoencoderBaseline, MeanIntensityBaseline, PCABaseline

    attempt("autoencoder", lambda: run_reference(
        ConvAutoencoderBaseline(image_size=res), {"epochs": budget.ae_epochs, "time_limit_s": budget.ae_seconds,
                                                  "device": device, "seed": seed}, data, sets))  # fmt: skip
    attempt("PCA", lambda: run_reference(PCABaseline(), {}, data, sets))
    attempt("mean intensity", lambda: run_reference(MeanIntensityBaseline(), {}, data, sets))

    rows = hq_ablations(hq, data, budget, device, results.get("HQ-AnoGAN"), ablate_ada, log) if ablations else []
    return {"results": results, "notes": notes, "ablations": rows, "hq_detector": hq.get("detector")}


def choose_width(result: dict[str, Any], data: dict, widths: list[float]) -> dict[str, Any]:
    """Let a reference method choose its map's smoothing width among ``widths`` (px) as the bundle's evaluation does:
    the width whose normal-only selection (z-scores on the normal validation images, weights by AUROC on the
    synthetic lesions) reaches the best AUROC, the first of equal ones. Only ``map_max`` and the maps depend on the
    width, so they are recomputed from the stored reconstructions of every set; returns the choice for the report
    (:func:`~monai_hqanogan.evaluation.best_width`, the rule the bundle's evaluation uses)."""

    def images(key: str) -> torch.Tensor:
        index = result.get("subset", {}).get(key)
        return data[key]["images"] if index is None else data[key]["images"][index]

    def rescored(key: str, width: float) -> dict[str, torch.Tensor]:
        return family_scores(images(key), result["sets"][key]["reconstructions"], smoothing=width)

    def selection_auroc(width: float) -> float | None:
        trial = {}
        for key in ("validation", "localisation_validation"):
            trial[key] = {**result["sets"][key]["components"], "map_max": rescored(key, width)["map_max"]}
        view = {**result, "sets": {k: {**result["sets"][k], "components": v} for k, v in trial.items()}}
        return select_scores(view, data, "normal-only").report.get("selection_auroc")

    best, aurocs = best_width(widths, selection_auroc)
    for key, entry in result["sets"].items():
        family = rescored(key, best)
        entry["components"] = {**entry["components"], "map_max": family["map_max"]}
        entry["maps"] = family["anomaly_map"]
    return {"smoothing_sigma": best, "smoothing_aurocs": aurocs}


def select_scores(result: dict[str, Any], data: dict, protocol: str) -> ScoreSelection:
    """:func:`monai_hqanogan.evaluation.select_method_scores` of one method's result (on its subsets, if any)."""

    def part(key: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        index = result.get("subset", {}).get(key)
        labels = data[key]["labels"] if index is None else data[key]["labels"][index]
        return result["sets"][key]["components"], labels

    return select_method_scores(result["candidates"], *part("validation"), protocol, *part("localisation_validation"))


def hq_ablations(hq: dict, data: dict, budget: Budget, device: str, hq_result: dict | None, ablate_ada: bool,
                 log: Callable) -> list[dict[str, Any]]:  # fmt: skip
    """Rows: each score alone and the calibrated combination (test image AUROC); latent refinement; ADA off."""
    if hq_result is None:
        return []
    rows = []
    test = data["test"]
    comps = hq_result["sets"]["test"]["components"]
    for name in SCORE_NAMES:
        rows.append(
            {"variant": f"score alone: {name}", "image AUROC": compute_image_auroc(comps[name], test["labels"])}
        )
    for protocol, sel in hq_result["selections"].items():
        rows.append({"variant": f"selected under {protocol}: {sel.describe()}",
                     "image AUROC": compute_image_auroc(sel.combine(comps), test["labels"])})  # fmt: skip
    det = hq["detector"]
    index = _subset(data, "test", budget.refine_max_images)
    for steps in (0, budget.refine_steps):
        det.refine_steps = steps
        t0 = time.perf_counter()
        rec = det.detect_all(test["images"][index])
        per_image = (time.perf_counter() - t0) / len(index) * 1000
        score = hq_result["selections"]["normal-only"].combine(rec)
        rows.append({
            "variant": f"latent refinement {steps} steps ({len(index)} test images, normal-only score)",
            "image AUROC": compute_image_auroc(score, test["labels"][index]), "ms per image": per_image,
        })  # fmt: skip
    det.refine_steps = 0
    if ablate_ada:
        log("[compare] HQ-AnoGAN without ADA ...")
        off = train_hqanogan(data, budget, device, ada_mode="off")
        rec = off["detector"].detect_all(test["images"])
        auroc = compute_image_auroc(rec["pred_score"], test["labels"])  # its own normal-only calibration
        rows.append({"variant": "ADA off (G retrained)", "image AUROC": auroc, "train s": off["train_s"]})
    return rows


# ---------------------------------------------------------------------------------------------------------- report
def metrics_table(data: dict, out: dict) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{protocol: {set: {method: metrics}}}`` of one run: each method's selected score under each protocol (the
    image metrics differ by protocol; the maps, and so the pixel metrics, do not), plus the score it used and the
    false- and true-positive rates at the protocol's threshold."""
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for protocol in PROTOCOLS:
        table[protocol] = {}
        for key in ("test", "localisation_test"):
            table[protocol][key] = {}
            for name in METHODS:
                r = out["results"].get(name)
                if r is None:
                    table[protocol][key][name] = {"note": out["notes"].get(name, "not run")}
                    continue
                s, sel = r["sets"][key], r["selections"][protocol]
                index = r.get("subset", {}).get(key)
                labels = data[key]["labels"] if index is None else data[key]["labels"][index]
                masks, groups = data[key].get("masks"), data[key].get("groups")  # groups: None in toy data
                if index is not None:
                    masks = None if masks is None else masks[index]
                    groups = None if groups is None else [groups[int(i)] for i in index]
                scores = sel.combine(s["components"])
                threshold = r.get("pixel_threshold") if name == "HQ-AnoGAN" else None
                m = evaluate_detection(scores, labels, s["maps"], masks if s["maps"] is not None else None,
                                       pixel_threshold=threshold, groups=groups)  # fmt: skip
                flagged = scores >= sel.report["image_threshold"]
                m.update({
                    "score": sel.describe(), "map width px": r.get("width", {}).get("smoothing_sigma"),
                    "FPR at threshold": float(flagged[labels == 0].float().mean()),
                    "TPR at threshold": float(flagged[labels == 1].float().mean()) if bool((labels == 1).any())
                    else None, "train s": r["train_s"], "images/s": len(labels) / max(s["seconds"], 1e-9),
                    "parameters": r["params"], "images": len(labels),
                    **{f"fit {k}": v for k, v in r.get("fit_info", {}).items() if k in ("epochs", "stopped_by")},
                })  # fmt: skip
                table[protocol][key][name] = m
    return table


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.3f} ± {sd:.3f}"


def aggregate_table(runs: list[dict[str, Any]], protocol: str) -> list[str]:
    """Markdown rows: per method, mean ± sd over the runs of test image AUROC, F1-max, synthetic-lesion pixel
    AUROC and AUPRO, the FPR and TPR at the protocol's threshold, and the scores each run chose."""
    rows: dict[str, dict[str, str]] = {}
    for name in METHODS:
        test = [r["table"][protocol]["test"].get(name, {}) for r in runs]
        loc = [r["table"][protocol]["localisation_test"].get(name, {}) for r in runs]
        done = [t for t in test if "note" not in t]
        if not done:
            rows[name] = {"runs": "0", "chosen": next((t["note"] for t in test if "note" in t), "not run")[:120]}
            continue
        chosen: dict[str, int] = {}
        for t in done:
            chosen[t["score"]] = chosen.get(t["score"], 0) + 1
        rows[name] = {key: _mean_sd([t.get(key) for t in done]) for key in AGGREGATE_TEST_KEYS}
        rows[name].update(
            {key: _mean_sd([t.get(key) for t in loc if "note" not in t]) for key in ("pixel_auroc", "aupro")}
        )
        rows[name].update(runs=str(len(done)), chosen="; ".join(f"{k} ({v})" for k, v in chosen.items()))
    return markdown_table(rows, AGGREGATE_COLUMNS, text_columns={"chosen"})


def run_table(table: dict[str, Any], protocol: str, key: str) -> list[str]:
    """Markdown rows of one run, one protocol, one set (the image AUROC's interval resamples whole near-duplicate
    groups where the data has them: :func:`~monai_hqanogan.evaluation.evaluate_detection`)."""
    rows = {name: {} if "note" in table[protocol][key][name] else dict(table[protocol][key][name]) for name in METHODS}
    for row in rows.values():
        ci = row.get("image_auroc_ci")
        if ci:
            row["interval"] = format_interval(ci["low"], ci["high"])
    return markdown_table(rows, RUN_COLUMNS, digits={"train s": 1, "images/s": 1}, text_columns={"score", "interval"})


def run_record(data: dict, out: dict, split: str, seed: int) -> dict[str, Any]:
    """One run's numbers for the report: both protocols' tables, notes, ablations, HQ-AnoGAN's training."""
    return {
        "split": split, "seed": seed, "resolution": data["training"]["images"].shape[-1],
        "training_images": len(data["training"]["images"]), "table": plain(metrics_table(data, out)),
        "notes": out["notes"], "ablations": plain(out["ablations"]),
        "hq_training": out["results"].get("HQ-AnoGAN", {}).get("training"),
    }  # fmt: skip


def parse_merge_source(source: str) -> tuple[Path, list[dict[str, Any]], tuple[str, ...] | None]:
    """``REPORT.json`` or ``REPORT.json:METHOD,METHOD`` -> (path, its runs, the methods to take or None for all)."""
    path_text, methods = source, None
    if not Path(source).exists() and ":" in source:
        path_text, _, names = source.rpartition(":")
        methods = tuple(n.strip() for n in names.split(",") if n.strip())
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise SystemExit(f"--merge {source}: unknown method(s) {unknown}; the methods are {list(METHODS)}.")
    path = Path(path_text)
    if not path.is_file():
        raise SystemExit(f"--merge: no such report file {path}.")
    runs = json.loads(path.read_text())
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and {"split", "seed", "table"} <= set(r) for r in runs
    ):
        raise SystemExit(f"--merge: {path} is not a compare.py report (.json list of runs).")
    return path, runs, methods


def split_name(split: str | None) -> str | None:
    """The split's dataset folder as reports name it: relative to the repository when it lies inside it, so that runs
    started with a relative and an absolute ``--dataset_dir`` of one folder are one split."""
    if split is None:
        return None
    path = Path(os.path.normpath(split))
    if path.is_absolute() and path.is_relative_to(ROOT):
        path = path.relative_to(ROOT)
    return path.as_posix()


def merge_runs(sources: list[tuple[Path, list[dict[str, Any]], tuple[str, ...] | None]]) -> list[dict[str, Any]]:
    """One run per (split, seed): each method's numbers from the last source that has numbers for it (and, when a
    source names its methods, only those). A method without numbers in any source keeps a note saying so; the run's
    notes say which file each method came from; HQ-AnoGAN's training record and ablations come with it."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for path, runs, methods in sources:
        for run in runs:
            key = (split_name(run["split"]), run["seed"])
            target = merged.setdefault(key, {
                "split": key[0], "seed": run["seed"], "resolution": run["resolution"],
                "training_images": run["training_images"], "notes": {}, "ablations": [], "hq_training": None,
                "sources": {}, "table": {p: {k: {} for k in run["table"][p]} for p in run["table"]},
            })  # fmt: skip
            if (run["resolution"], run["training_images"]) != (target["resolution"], target["training_images"]):
                raise SystemExit(f"--merge: {path} has split {key[0]} seed {key[1]} at another resolution or size.")
            for name in METHODS:
                if methods is not None and name not in methods:
                    continue
                if "note" in run["table"]["normal-only"]["test"].get(name, {"note": ""}):
                    continue
                for protocol, sets in run["table"].items():
                    for set_name, rows in sets.items():
                        target["table"][protocol].setdefault(set_name, {})[name] = rows[name]
                target["sources"][name] = path.name
                if name == "HQ-AnoGAN":
                    target["ablations"], target["hq_training"] = run.get("ablations", []), run.get("hq_training")
    files = ", ".join(path.name for path, *_ in sources)
    for run in merged.values():
        for name in METHODS:
            if name not in run["sources"]:
                note = f"no numbers for this split and seed in the merged reports ({files})"
                for sets in run["table"].values():
                    for rows in sets.values():
                        rows[name] = {"note": note}
                run["notes"][name] = note
    return list(merged.values())


def plain(value: Any) -> Any:
    """JSON-ready copy of nested metrics (tensors and numpy numbers to floats)."""
    return json.loads(json.dumps(value, default=float))


def write_report(out_dir: Path, mode: str, runs: list[dict[str, Any]], args: argparse.Namespace, seconds: float,
                 figure_data: tuple[dict, dict] | None = None) -> Path:  # fmt: skip
    """``<out>/<date>-<machine>-compare.md`` and ``.json``: the normal-only headline (mean ± sd over every split
    and seed), the labelled-validation table beside it, then each run's tables, notes and ablations."""
    stem = f"{datetime.date.today().isoformat()}-{re.sub(r'[^a-z0-9]+', '-', platform.node().lower())}-compare"
    if args.name:
        stem += f"-{args.name}"
    splits = sorted({r["split"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"# Method comparison ({mode} mode)", "",
        f"- command: `{' '.join(['python'] + sys.argv)}`",
        f"- machine: {machine_description(args.device)}",
        f"- data: {'synthetic toy set' if args.toy else ', '.join(splits)}; resolution {runs[0]['resolution']} px; "
        f"training normals {runs[0]['training_images']}",
        f"- runs: {len(runs)} ({len(splits)} split(s); training seeds {seeds}); "
        + (f"wall time {seconds / 60:.1f} min" if math.isfinite(seconds) else "merged from earlier reports"),
        "",
        "Protocols (DESIGN.md section 4a). **normal-only** (the headline): no real abnormal image trains, selects or "
        "thresholds anything, for any method. Each method's scores are z-scored on the normal validation images; the "
        "weights of its candidate scores (grid step 0.25) are those with the best AUROC on the synthetic-lesion "
        "validation set (normal validation slices with lesions pasted in); the image threshold sits at 5% FPR on the "
        "normal validation images. **labelled-validation** (secondary): the same rule, but the weights maximise AUROC "
        "on the labelled validation list (normal and real tumour slices) and the threshold is at its F1 maximum.",
        "",
        "Score family, the same for every reconstruction method (HQ-AnoGAN, f-AnoGAN, AnoGAN, autoencoder, PCA): "
        f"`residual` (mean |x - x'| over the foreground: pixels above {FAMILY_FOREGROUND} in [-1, 1], dilated 2 px), "
        "`map_max` (maximum of that map smoothed with a Gaussian of sigma resolution / 32 px, at least 1 px, times a "
        f"factor among {SMOOTHING_FACTORS} that each method chooses with its weights on the synthetic lesions, as the "
        "bundle's calibration does) and `feature` (the "
        "distance of the method's own discriminator or critic features, where it has one; AnoGAN uses HQ-AnoGAN's D). "
        "HQ-AnoGAN may also weight its latent scores ("
        + ", ".join(f"`{n}`" for n in SCORE_NAMES if n not in FAMILY_NAMES)
        + "). GANomaly keeps anomalib's own score; mean intensity is the trivial shortcut. AnoGAN runs on stratified "
        "subsets.",
        "",
        "## Normal-only (headline): mean ± sd over runs", "",
        *aggregate_table(runs, "normal-only"), "",
        "## Labelled-validation (secondary, label-tuned): mean ± sd over runs", "",
        *aggregate_table(runs, "labelled-validation"), "",
    ]  # fmt: skip
    for run in runs:
        lines += [f"## Run: split {run['split']}, training seed {run['seed']}", ""]
        if run.get("sources"):
            taken = [f"{m} from `{run['sources'][m]}`" for m in METHODS if m in run["sources"]]
            lines += ["Merged: " + "; ".join(taken) + ".", ""]
        if run.get("hq_training"):
            t = run["hq_training"]
            lines += [
                f"HQ-AnoGAN trained here: G {t['generator_kimg']:.1f} kimg in {t['generator_s']:.0f} s (ADA p at the "
                f"end {t['ada_p']:.3f}), E {t['encoder_kimg']:.1f} kimg in {t['encoder_s']:.0f} s.", "",
            ]  # fmt: skip
        for protocol in PROTOCOLS:
            for key, title in (("test", "test split (real tumours, image labels)"),
                               ("localisation_test", "synthetic-lesion test set (exact masks)")):  # fmt: skip
                lines += [f"**{protocol}, {title}**", "", *run_table(run["table"], protocol, key), ""]
        if run["notes"]:
            lines += ["Not run:", ""] + [f"- **{k}**: {v}" for k, v in run["notes"].items()] + [""]
        if run["ablations"]:
            ablations = {row["variant"]: row for row in run["ablations"]}
            columns = (("image AUROC", "image AUROC"), ("ms per image", "ms per image"))
            lines += ["HQ-AnoGAN ablations (test split):", ""]
            lines += markdown_table(ablations, columns, label="variant", digits={"ms per image": 1})
            lines.append("")
    if figure_data is not None and importlib.util.find_spec("matplotlib") is None:
        lines += ["(No figure: matplotlib is not installed here.)", ""]
    elif figure_data is not None:
        figure = save_comparison_figure(out_dir / f"{stem}.png", *figure_data)
        if figure is not None:
            lines += [f"![the same test images across methods, first run]({figure.name})", ""]
    path = write_text_atomic(out_dir / f"{stem}.md", "\n".join(lines))
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(plain(runs), indent=1))
    return path


def save_comparison_figure(path: Path, data: dict, out: dict, num: int = 8) -> Path | None:
    """Columns: the same ``num`` test images (half normal, half abnormal); rows: input, then each method's
    reconstruction and heat map (methods without one are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_hqanogan.visualize import save_figure

    test = data["test"]
    labels = test["labels"]
    normal, abnormal = torch.nonzero(labels == 0).flatten(), torch.nonzero(labels == 1).flatten()
    pick = torch.cat([normal[: num // 2], abnormal[: num - num // 2]])
    rows: list[tuple[str, torch.Tensor, str]] = [("input", test["images"][pick], "gray")]
    for name in METHODS:
        r = out["results"].get(name)
        if r is None or "subset" in r:  # AnoGAN scored a subset: other images
            continue
        s = r["sets"]["test"]
        if s.get("reconstructions") is not None:
            rows.append((f"{name}\nreconstruction", s["reconstructions"][pick], "gray"))
        if s.get("maps") is not None:
            rows.append((f"{name}\nheat map", s["maps"][pick], "inferno"))
    if len(rows) == 1:
        return None
    fig, axes = plt.subplots(len(rows), len(pick), figsize=(1.4 * len(pick), 1.4 * len(rows)), squeeze=False)
    for i, (title, images, cmap) in enumerate(rows):
        for j in range(len(pick)):
            # MONAI reads the prepared PNGs as (width, height): transpose to show them upright
            axes[i, j].imshow(images[j].float().mean(0).T.numpy(), cmap=cmap)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(title, fontsize=6)
    for j in range(len(pick)):
        axes[0, j].set_title("abnormal" if labels[pick[j]] else "normal", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(BUDGETS), default="quick")
    parser.add_argument(
        "--dataset_dir", type=Path, nargs="+", default=None,
        help="prepared dataset(s) (datalist.json); several = several splits (e.g. prepare br35h --seed 0 / 1)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, each run on every split")
    parser.add_argument("--toy", action="store_true", help="synthetic ellipses instead of a dataset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ablate-ada", action="store_true", help="also train HQ-AnoGAN's G without ADA")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="", help="a suffix for the report's file names")
    parser.add_argument("--hq_model", type=Path, default=None, help="a model.pt the bundle trained (same setting)")
    parser.add_argument("--hq_train_s", type=float, default=float("nan"), help="its training time, for the table")
    parser.add_argument(
        "--data_cache", type=Path, default=None,
        help="a .pt file of the preprocessed splits: read if it exists, else written from --dataset_dir",
    )  # fmt: skip
    parser.add_argument("--prepare_only", action="store_true", help="write --data_cache and stop")
    parser.add_argument("--generator_s", type=float, default=None, help="override the mode's G training seconds")
    parser.add_argument("--encoder_s", type=float, default=None, help="override the mode's E training seconds")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="HQ-AnoGAN trains with bfloat16 autocast (CUDA, or a CPU with native bf16 kernels)",
    )
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="HQ-AnoGAN trains in the contiguous layout (channels_last=False): repeats runs made before channels-last "
        "became the trainers' default exactly",
    )
    parser.add_argument(
        "--ada",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="options of HQ-AnoGAN's ADA pipe, e.g. '{\"clamp\": true}' or '{\"lumaflip\": 0}'",
    )
    parser.add_argument("--skip", default="", help="comma-separated methods not to run, e.g. 'AnoGAN,GANomaly'")
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="REPORT.json[:METHOD,...]",
        help="run nothing: combine the runs of earlier reports' .json files (e.g. seeds run in parallel). Runs of "
        "one split and seed become one run; ':METHOD,...' takes only those methods from that file; a method in "
        "several files comes from the last one",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.merge:
        runs = merge_runs([parse_merge_source(str(source)) for source in args.merge])
        path = write_report(args.out, args.mode, runs, args, float("nan"))
        print(f"[compare] {len(runs)} run(s) from {len(args.merge)} report(s) -> {path}")
        return path
    if not args.toy and args.dataset_dir is None and (args.data_cache is None or not args.data_cache.exists()):
        parser.error("give --dataset_dir (a folder prepared by monai_hqanogan.data.prepare), --data_cache or --toy")
    if args.data_cache is not None and args.dataset_dir is not None and len(args.dataset_dir) > 1:
        parser.error("--data_cache holds one split: give one --dataset_dir with it")
    if args.hq_model is not None and (len(args.seeds) > 1 or len(args.dataset_dir or [None]) > 1):
        parser.error("--hq_model is one trained detector: use it with one split and one seed")
    budget = BUDGETS[args.mode]
    if args.generator_s is not None or args.encoder_s is not None:
        budget = dataclasses.replace(
            budget, hq_generator_s=args.generator_s or budget.hq_generator_s,
            hq_encoder_s=args.encoder_s or budget.hq_encoder_s,
        )  # fmt: skip
    if args.amp:
        budget = dataclasses.replace(budget, hq={**budget.hq, "amp": True})
    if args.contiguous:
        budget = dataclasses.replace(budget, hq={**budget.hq, "channels_last": False})
    if args.ada:
        try:  # refuse unknown options before any work
            AdaptiveAugmentPipe(**args.ada)
        except (TypeError, ValueError) as err:
            parser.error(f"--ada {json.dumps(args.ada)}: {err}")
        budget = dataclasses.replace(budget, hq_augment=dict(args.ada))
    resolution = budget.hq["resolution"]
    start = time.perf_counter()
    splits = [None] if args.toy or args.dataset_dir is None else list(args.dataset_dir)
    datasets = []
    for split in splits:
        data = toy_data(resolution) if args.toy else dataset_data(split, resolution, args.data_cache)
        if args.prepare_only:
            print(f"[compare] {resolution} px splits written to {args.data_cache}")
            return args.data_cache
        datasets.append(("toy" if args.toy else str(split or args.data_cache), data))
    runs: list[dict[str, Any]] = []
    figure_data = None
    path = None
    # seeds outside, splits inside: a benchmark stopped early still covers every split
    for seed in args.seeds:
        for label, data in datasets:
            print(f"[compare] run: split {label}, training seed {seed}", flush=True)
            out = compare(
                data, budget, args.device, ablate_ada=args.ablate_ada, hq_model=args.hq_model,
                hq_train_s=args.hq_train_s, skip=tuple(name.strip() for name in args.skip.split(",") if name.strip()),
                seed=seed, ablations=not runs,
            )  # fmt: skip
            runs.append(run_record(data, out, label, seed))
            if figure_data is None:
                figure_data = (data, out)
            # written after every run, so a long benchmark that is stopped keeps what finished
            path = write_report(args.out, args.mode, runs, args, time.perf_counter() - start, figure_data)
            print(f"[compare] report after {len(runs)} run(s): {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
