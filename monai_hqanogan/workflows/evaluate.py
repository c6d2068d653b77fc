"""The bundle's evaluation: HQ-AnoGAN and the reference baselines on the same test split and synthetic-lesion set,
side by side in one Markdown + JSON report with ROC curves, score histograms and detection panels."""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_hqanogan.evaluation import (
    best_width,
    family_scores,
    method_components,
    select_method_scores,
    selection_summary,
    write_evaluation_report,
)
from monai_hqanogan.scoring import check_protocol, choice_uncertainty
from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.utils.progress import progress_bar, progress_shown
from monai_hqanogan.workflows.checks import as_bool
from monai_hqanogan.workflows.stages import check_datalist, check_writable, is_normal_item, json_ready, load_split

__all__ = ["evaluate_detector", "machine_description"]

logger = logging.getLogger(__name__)


def machine_description(device: str | torch.device = "cpu") -> str:
    """One line naming the machine: the GPU's name on CUDA, else the CPU and its core count, plus torch's version."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return f"{what}; torch {torch.__version__}; Python {platform.python_version()}"


def _panel_figure(path: Path, split: Mapping[str, Any], record: Mapping[str, Any], detector: nn.Module, rows: int):
    """Panels of the ``rows`` highest-scoring abnormal and the lowest-scoring normal images of a split, drawn
    transposed: MONAI reads the prepared PNG files as (width, height) arrays."""
    from monai_hqanogan.visualize import plot_detection_panels, save_figure

    labels, scores = split["labels"], record["pred_score"]
    abnormal = [int(i) for i in torch.argsort(scores, descending=True) if labels[i] == 1][: max(1, rows - 1)]
    normal = [int(i) for i in torch.argsort(scores) if labels[i] == 0][:1]
    index = torch.tensor(abnormal + normal, dtype=torch.long)
    if len(index) == 0:
        return None
    cal = detector.calibration

    def shown(x: torch.Tensor) -> torch.Tensor:
        return x[index].transpose(-1, -2)

    fig = plot_detection_panels(
        shown(split["images"]),
        shown(record["reconstruction"]),
        shown(record["anomaly_map"]),
        pred_masks=shown(record["anomaly_map"]) >= float(cal.pixel_threshold),
        gt_masks=shown(split["masks"]) if "masks" in split else None,
        scores=scores[index],
        threshold=float(cal.image_threshold),
        titles=[f"{split['names'][i]} ({'abnormal' if labels[i] else 'normal'})" for i in index.tolist()],
    )
    return save_figure(fig, path)


def _map_max_at(
    images: torch.Tensor, reconstructions: torch.Tensor, comps: Mapping[str, torch.Tensor], rule: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """``comps`` with ``map_max`` recomputed from the stored reconstructions under ``rule`` (smoothing, foreground):
    the only member of the score family that depends on the map's width."""
    return {**comps, "map_max": family_scores(images, reconstructions, **rule)["map_max"]}


def evaluate_detector(
    detector: nn.Module,
    datalist: str | os.PathLike,
    resolution: int,
    output_dir: str | os.PathLike,
    baselines: Mapping[str, nn.Module] | None = None,
    baseline_fit_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    fit_key: str = "training",
    test_key: str = "test",
    localisation_key: str | None = "localisation_test",
    method_name: str = "HQ-AnoGAN",
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    panel_rows: int = 6,
    info: Mapping[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
    protocol: str = "normal-only",
    val_key: str = "validation",
    selection_key: str | None = "localisation_validation",
    progress: bool | str = True,
) -> dict[str, Path]:
    """Score a calibrated detector and the reference baselines on the test split and the synthetic-lesion set.

    Every baseline is fitted on the same normal training images the GAN saw (``fit_key``) and scored on the same
    images as the detector, so the report compares like with like: a baseline that reconstructs gets the detector's
    score family with the detector's own smoothing and foreground rule (mean foreground residual, maximum of the
    smoothed foreground map, critic features where it has a critic; :func:`~monai_hqanogan.evaluation.
    method_components`), and the member or weighted sum is chosen by the
    same rule as the detector's calibration under ``protocol`` (:func:`~monai_hqanogan.evaluation.
    select_method_scores`): on the synthetic lesions of ``selection_key`` under ``normal-only``, on the labelled
    ``val_key`` list under ``labelled-validation``. The detector is scored with its calibrated score and map;
    pixel metrics use its calibrated pixel threshold for the Dice, baselines their Dice-max.
    When the detector's calibration chose its map's smoothing width among candidates (``calibrate.json``'s
    ``smoothing_factors``; the report's ``smoothing_candidates``), every baseline that reconstructs chooses among the
    same widths by the same AUROC on the same images, and the report names each one's width.

    Labels: every item of the lists the metrics and the baselines' choices are computed from (``test_key``,
    ``localisation_key``, ``selection_key`` under ``normal-only``, ``val_key`` under ``labelled-validation``) needs
    ``"label": 0`` or ``1``; a list with unlabelled items (which would count as normal) is refused before any image
    is read, naming them (:func:`~monai_hqanogan.workflows.check_datalist`'s ``labelled_keys``).

    Args:
        detector: a calibrated :class:`HQAnoGANDetector`.
        datalist: the prepared datalist JSON.
        resolution: the model grid size.
        output_dir: where ``report.md``, ``report.json`` and the figures go.
        baselines: name -> reference detector with ``fit``/``score``/``anomaly_map`` (e.g. mean intensity, PCA,
            autoencoder); None: none.
        baseline_fit_kwargs: name -> extra keyword arguments of that baseline's ``fit`` (epochs, time limit, ...).
        fit_key: the datalist list of normal training images.
        test_key: the list of the test split (normal and abnormal, image labels).
        localisation_key: the list of the synthetic-lesion set (with masks); None: leave it out.
        method_name: the detector's row name.
        device: where to run.
        batch_size: images per forward pass.
        panel_rows: rows of the detection panel figures.
        info: extra facts for the report (setting, command, training times, ...).
        base_dir: base of the datalist's relative paths.
        protocol: ``"normal-only"`` (default) or ``"labelled-validation"``, for the baselines' score selection; the
            report names it next to the detector's calibration protocol.
        val_key: the validation list (its normal images normalise every baseline's scores).
        selection_key: the synthetic-lesion validation list the ``normal-only`` selection uses.
        progress: show bars (true or false, also as a string: the bundle's ``--progress false``) over the images
            read and scored and over the baselines, on stderr and only when it is a terminal
            (:func:`~monai_hqanogan.utils.progress_bar`); a baseline whose ``fit`` takes ``progress`` gets it as
            :func:`~monai_hqanogan.utils.progress_shown` says, unless ``baseline_fit_kwargs`` set it. The report is
            the same either way.

    Returns:
        the written files (``json``, ``markdown``, figures).
    """
    start = time.perf_counter()
    check_protocol(protocol)
    progress = as_bool(progress, "progress")
    if protocol == "normal-only" and baselines and not selection_key:
        raise ValueError(
            "protocol 'normal-only' selects the baselines' scores on synthetic lesions: give selection_key."
        )
    output_dir = check_writable(output_dir)
    device = torch.device(device)
    keys = [fit_key, test_key] + ([localisation_key] if localisation_key else [])
    labelled = keys[1:]  # the metrics' lists: every item needs a label 0 or 1
    if baselines:
        keys += [val_key] + ([selection_key] if protocol == "normal-only" else [])
        labelled += [selection_key] if protocol == "normal-only" else [val_key]
    check_datalist(datalist, keys, base_dir=base_dir, verify_images=False, labelled_keys=labelled)
    if not bool(detector.calibration.calibrated):
        raise RuntimeError("the detector is not calibrated: run calibrate.json first.")
    detector = detector.to(device).eval()
    loading = {"base_dir": base_dir, "progress": progress}
    sets = {test_key: load_split(datalist, test_key, resolution, require_labels=True, **loading)}
    if localisation_key:
        sets[localisation_key] = load_split(
            datalist, localisation_key, resolution, with_masks=True, require_labels=True, **loading
        )
    fit = load_split(datalist, fit_key, resolution, **loading)
    timings: dict[str, float] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in sets}
    records = {}
    t0 = time.perf_counter()
    for name, split in sets.items():
        records[name] = detector.detect_all(split["images"], batch_size, progress, f"{method_name}: {name}")
        results[name][method_name] = {
            "scores": records[name]["pred_score"],
            "labels": split["labels"],
            "maps": records[name]["anomaly_map"],
            "masks": split.get("masks"),
            "pixel_threshold": float(detector.calibration.pixel_threshold),
            "image_threshold": float(detector.calibration.image_threshold),
            "groups": split["groups"],
            "names": split["paths"],
        }
    timings[f"{method_name} scoring s"] = round(time.perf_counter() - t0, 1)
    selections: dict[str, Any] = {}
    if baselines:
        normal_only = protocol == "normal-only"
        val = load_split(
            datalist, val_key, resolution, keep=is_normal_item if normal_only else None,
            require_labels=not normal_only, **loading,
        )  # fmt: skip
        synthetic = None
        if normal_only:
            synthetic = load_split(datalist, selection_key, resolution, require_labels=True, **loading)
    # the baselines' maps get the detector's own smoothing and foreground rule: one score family for every method
    smoothing = detector.smoothing if detector.smoothing is not None else 0  # 0: the detector does not smooth
    family_rule = {"smoothing": smoothing, "foreground_threshold": detector.foreground_threshold}
    widths = (getattr(detector.calibration, "info", None) or {}).get("smoothing_candidates")
    bar = progress_bar((baselines or {}).items(), progress=progress, desc="baselines", unit="method")
    for bname, baseline in bar:  # the bar closes itself at the end, or when an error leaves the loop
        bar.set_postfix_str(bname)
        t0 = time.perf_counter()
        fit_kwargs = dict((baseline_fit_kwargs or {}).get(bname, {}))
        if "progress" in inspect.signature(baseline.fit).parameters:
            fit_kwargs.setdefault("progress", progress_shown(progress))
        baseline.fit(fit["images"], **fit_kwargs)
        val_comps, _, val_rec, candidates = method_components(baseline, val["images"], **family_rule)
        syn_comps, syn_rec = None, None
        if synthetic is not None:
            syn_comps, _, syn_rec, _ = method_components(baseline, synthetic["images"], **family_rule)
        syn_labels = None if synthetic is None else synthetic["labels"]
        # the widths the detector's calibration chose among, if it chose: each baseline with a map chooses among the
        # same ones, on the same images, by the same AUROC (best_width), re-smoothing its reconstructions; otherwise
        # the detector's own width
        rule, aurocs, width = family_rule, None, None
        width_scores = {}  # the selection's combined synthetic-lesion score at each width, for the report
        if widths and val_rec is not None:
            trials = {}
            for w in map(float, widths):
                r = {**family_rule, "smoothing": w}
                v = _map_max_at(val["images"], val_rec, val_comps, r)
                y = None if synthetic is None else _map_max_at(synthetic["images"], syn_rec, syn_comps, r)
                trials[w] = select_method_scores(candidates, v, val["labels"], protocol, y, syn_labels)
                if y is not None:
                    width_scores[w] = trials[w].combine(y)
            reached = {w: t.report.get("selection_auroc") for w, t in trials.items()}
            width, aurocs = best_width(list(trials), reached.get)
            rule, selection = {**family_rule, "smoothing": width}, trials[width]
        else:
            selection = select_method_scores(candidates, val_comps, val["labels"], protocol, syn_comps, syn_labels)
        selections[bname] = selection_summary(selection)
        if aurocs:
            selections[bname].update(smoothing_sigma=float(rule["smoothing"]), smoothing_aurocs=aurocs)
        if synthetic is not None:  # how firm the choice is, as the detector's calibration reports it
            chosen = width_scores[width] if width_scores else selection.combine(syn_comps)
            selections[bname].update(
                choice_uncertainty(chosen, syn_labels, synthetic["groups"], width_scores or None, width)
            )
        for name, split in sets.items():
            comps, maps, _, _ = method_components(baseline, split["images"], **rule)
            results[name][bname] = {
                "scores": selection.combine(comps),
                "image_threshold": selection.report.get("image_threshold"),
                "labels": split["labels"],
                "maps": maps,
                "masks": split.get("masks") if maps is not None else None,
                "groups": split["groups"],
                "names": split["paths"],
            }
        timings[f"{bname} fit + scoring s"] = round(time.perf_counter() - t0, 1)
    figures = {}
    for name, split in sets.items():
        path = _panel_figure(output_dir / f"panels_{name}.png", split, records[name], detector, panel_rows)
        if path is not None:
            figures[name] = path
    counts = {name: {"images": len(s["labels"]), "abnormal": int(s["labels"].sum())} for name, s in sets.items()}
    counts[fit_key] = {"images": len(fit["labels"]), "abnormal": 0}
    full_info = {
        "machine": machine_description(device),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "resolution": resolution,
        "counts": counts,
        "protocol": protocol,
        "calibration": json_ready(detector.calibration.info),
        "baseline_scores": selections,
        "timings": timings,
        **dict(info or {}),
    }
    full_info["timings"]["evaluation total s"] = round(time.perf_counter() - start, 1)
    paths = write_evaluation_report(
        output_dir, results, title="HQ-AnoGAN brain MRI evaluation", info=json.loads(json.dumps(json_ready(full_info)))
    )
    if figures:
        markdown = paths["markdown"].read_text()
        markdown += (
            "\n## Detection panels\n\nInput | pseudo-normal G(E(x)) | anomaly map | overlay (predicted contour red, "
            "ground truth dashed green where known). Highest-scoring abnormal images, then the lowest-scoring normal "
            "one.\n\n"
        )
        markdown += "".join(f"![{name}]({path.name})\n\n" for name, path in figures.items())
        write_text_atomic(paths["markdown"], markdown)
        paths.update({f"panels_{name}": path for name, path in figures.items()})
    logger.info(f"evaluation report -> {paths['markdown']}")
    return paths
