"""Which latent (W+) score earns its place, and where the top detections sit (issue 15), on a trained detector.

HQ-AnoGAN's own contribution is a score from the pSp encoder's W+ codes. This study scores every latent candidate
alone and in combination with the reconstruction family, under the normal-only protocol (DESIGN.md section 4a):

- every statistic (means, standard deviations, Gaussians, neighbours) comes from normal images only: ``training``
  (fit) and the normal items of ``validation``;
- the rule that picks the default combination, written down before any test number was seen: the weights on the
  0.25 simplex grid with the best AUROC on ``localisation_validation`` (normal validation images with synthetic
  lesions), simplest choice on ties (:func:`~monai_hqanogan.scoring.select_weights`), once with the reconstruction
  family alone and once with the family plus every latent candidate; a latent score earns its place when the rule
  gives it weight and the combination's selection AUROC rises;
- the real tumours of ``test`` are only read to report.

Latent candidates, with ``w = E(x)`` and the cycle code ``w' = E(G(w))``:

- ``latent_cycle``: mean over layers of ``|w_l - w'_l|^2`` (the detector's score);
- ``cycle_z``: that distance per layer, standardised per layer on normal fit images, averaged;
- ``cycle_coarse`` / ``cycle_middle`` / ``cycle_fine``: ``cycle_z`` over the first, middle and last third of the
  layers;
- ``cycle_mahalanobis``: per-layer Mahalanobis distance of ``w - w'`` (Ledoit-Wolf Gaussian on normal fit codes);
- ``mahalanobis``: per-layer Mahalanobis distance of ``w`` itself (the detector's score);
- ``w_avg_distance``: mean distance of ``w`` to G's average ``w`` (the detector's score);
- ``latent_knn``: mean Euclidean distance of the flattened ``w`` to its 5 nearest normal fit codes.

Shortcuts: for the 50 top-scoring test images of each class, where the maximum of the anomaly map lies: ``border``
(within ``m = max(1, R/16)`` pixels of the image edge, where the white frames of some Br35H images are), ``rim``
(the outer ring of the head, skull and scalp: foreground, but not ``m`` pixels inside it) or ``inside``. The fix
measured: the reconstruction family taken on the body's interior only (``foreground_margin = m``, see
:func:`~monai_hqanogan.scoring.foreground_mask`), every number again with it; it is kept only if the same rule
(the selection AUROC on synthetic lesions) prefers it.

    python benchmarks/latent_study.py --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h \
        --out benchmarks/results/2026-12-02-latent-study
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from monai_hqanogan.metrics import compute_image_auroc
from monai_hqanogan.scoring import SCORE_NAMES, AnomalyCalibration, WPlusGaussian, combine_with, select_weights
from monai_hqanogan.scoring.selection import reconstruction_scores
from monai_hqanogan.utils import write_text_atomic
from monai_hqanogan.workflows import SHIPPED_SETTING, load_bundle_detector, load_split, machine_description
from monai_hqanogan.workflows.stages import is_normal_item

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brain_mri_anomaly_hqanogan"
FAMILY = ("map_max", "residual", "feature")
LATENT = (
    "latent_cycle", "cycle_z", "cycle_coarse", "cycle_middle", "cycle_fine", "cycle_mahalanobis", "mahalanobis",
    "w_avg_distance", "latent_knn",
)  # fmt: skip
PLACES = ("border", "rim", "inside")


@torch.no_grad()
def raw_latents(detector: Any, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``ws``, the cycle codes ``ws_cycle``, the reconstructions and the detector's raw scores, for every image."""
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in images.split(batch_size):
        comps = detector.score_components(chunk)
        comps["ws_cycle"] = detector.encoder(comps["reconstruction"])
        for key in ("ws", "ws_cycle", "reconstruction", *FAMILY, "latent_cycle", "mahalanobis", "w_avg_distance"):
            parts.setdefault(key, []).append(comps[key].float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def with_margin(detector: Any, raw: Mapping[str, torch.Tensor], images: torch.Tensor, margin: int) -> dict:
    """``raw`` with the reconstruction family (``residual``, ``map_max``, ``anomaly_map``) taken on the foreground
    rule with ``margin`` (:func:`~monai_hqanogan.scoring.foreground_mask`)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for x, rec in zip(images.split(256), raw["reconstruction"].split(256)):
        family = reconstruction_scores(x, rec, detector.smoothing, detector.foreground_threshold, None, margin)
        for key in ("anomaly_map", "residual", "map_max"):
            parts.setdefault(key, []).append(family[key])
    return {**raw, **{k: torch.cat(v) for k, v in parts.items()}}


class LatentCandidates:
    """The latent candidates, with every statistic fitted on normal ``fit`` codes only."""

    def __init__(self, fit: Mapping[str, torch.Tensor], k: int = 5) -> None:
        self.k = k
        num_ws, w_dim = fit["ws"].shape[1:]
        # the detector's own per-layer standardisation, so the study's cycle_fine is the detector's score
        self.calibration = AnomalyCalibration(num_ws, w_dim)
        self.calibration.fit_cycle(self._cycle_per_layer(fit))
        self.cycle_gauss = WPlusGaussian(num_ws, w_dim).fit((fit["ws"] - fit["ws_cycle"]).double())
        self.fit_codes = fit["ws"].flatten(1).double()
        self.groups = dict(zip(("cycle_coarse", "cycle_middle"), torch.arange(num_ws).tensor_split(3)))

    @staticmethod
    def _cycle_per_layer(raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (raw["ws"] - raw["ws_cycle"]).double().square().sum(-1)  # [N, num_ws]

    def __call__(self, raw: Mapping[str, torch.Tensor], exclude_self: bool = False) -> dict[str, torch.Tensor]:
        cal, per_layer = self.calibration, self._cycle_per_layer(raw)
        z = (per_layer - cal.cycle_mean.double()) / cal.cycle_std.double()
        out = {name: raw[name].double() for name in (*FAMILY, "latent_cycle", "mahalanobis", "w_avg_distance")}
        out["cycle_z"] = z.mean(1)
        out.update({name: z[:, idx].mean(1) for name, idx in self.groups.items()})
        out["cycle_fine"] = cal.cycle_fine(per_layer).double()
        out["cycle_mahalanobis"] = self.cycle_gauss((raw["ws"] - raw["ws_cycle"]).double())
        dist = torch.cdist(raw["ws"].flatten(1).double(), self.fit_codes)
        if exclude_self:  # a fit image is its own nearest neighbour
            dist = dist.masked_fill(dist < 1e-9, float("inf"))
        out["latent_knn"] = dist.topk(self.k, dim=1, largest=False).values.mean(1)
        return out


def peak_places(amap: torch.Tensor, images: torch.Tensor) -> list[str]:
    """Where each map's maximum lies: ``border``, ``rim`` or ``inside`` (see the module docstring)."""
    size = amap.shape[-1]
    margin = max(1, size // 16)
    body = (images.amax(dim=1, keepdim=True) > -0.9).float()
    inner = 1 - F.max_pool2d(1 - body, kernel_size=2 * margin + 1, stride=1, padding=margin)  # eroded body
    places = []
    for b in range(amap.shape[0]):
        row, col = divmod(int(amap[b, 0].flatten().argmax()), size)
        if min(row, col, size - 1 - row, size - 1 - col) < margin:
            places.append("border")
        elif inner[b, 0, row, col] > 0:
            places.append("inside")
        else:
            places.append("rim")
    return places


def shortcut_counts(scores: torch.Tensor, labels: torch.Tensor, places: list[str], top: int = 50) -> dict[str, Any]:
    """How many of the ``top`` highest-scoring images of each class peak at each place."""
    out: dict[str, Any] = {}
    for cls, name in ((1, "abnormal"), (0, "normal")):
        idx = torch.nonzero(labels == cls).flatten()
        order = idx[scores[idx].argsort(descending=True)[:top]]
        out[name] = {place: sum(places[i] == place for i in order.tolist()) for place in PLACES}
    return out


def _combined(scores: Mapping[str, torch.Tensor], chosen: Mapping[str, Any]) -> torch.Tensor:
    return combine_with(scores, chosen["weights"], chosen["mean"], chosen["std"])


def _aurocs(scores: Mapping[str, Mapping[str, torch.Tensor]], labels: Mapping[str, torch.Tensor], pick) -> dict:
    return {
        split: compute_image_auroc(pick(scores[split]), labels[split])
        for split in ("selection", "test", "synthetic_test")
    }


def study(
    detector: Any,
    dataset_dir: Path,
    resolution: int,
    fit_limit: int = 900,
    top: int = 50,
    margins: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Every number of the study for one detector and one split (see the module docstring); ``margins``: the
    foreground margins to score with (default 0 and ``max(1, resolution // 16)``)."""
    datalist = dataset_dir / "datalist.json"
    sets = {
        "fit": load_split(datalist, "training", resolution, base_dir=dataset_dir, limit=fit_limit),
        "validation": load_split(datalist, "validation", resolution, base_dir=dataset_dir, keep=is_normal_item),
        "selection": load_split(datalist, "localisation_validation", resolution, base_dir=dataset_dir),
        "test": load_split(datalist, "test", resolution, base_dir=dataset_dir),
        "synthetic_test": load_split(datalist, "localisation_test", resolution, base_dir=dataset_dir),
    }
    raw0 = {name: raw_latents(detector, split["images"]) for name, split in sets.items()}
    labels = {name: split["labels"] for name, split in sets.items()}
    candidates = LatentCandidates(raw0["fit"])
    result: dict[str, Any] = {"counts": {name: len(split["images"]) for name, split in sets.items()}, "margins": {}}
    for margin in margins or (0, max(1, resolution // 16)):
        raw = {name: with_margin(detector, r, sets[name]["images"], margin) for name, r in raw0.items()}
        scores = {name: candidates(r, exclude_self=name == "fit") for name, r in raw.items()}
        names = (*FAMILY, *LATENT) if margin == 0 else FAMILY[:2]  # the margin changes the map scores only
        part: dict[str, Any] = {
            "alone": {name: _aurocs(scores, labels, lambda s, n=name: s[n]) for name in names},
            "combinations": {},
        }
        pools = {"family": FAMILY, "family + latent": (*FAMILY, *LATENT)}
        if margin == 0:
            pools["latent only"] = LATENT
        for label, pool in pools.items():
            chosen = select_weights(scores["validation"], pool, scores["selection"], labels["selection"])
            row = _aurocs(scores, labels, lambda s, c=chosen: _combined(s, c))
            part["combinations"][label] = {"weights": chosen["weights"], **row}
            if label == "family":
                family_choice = _combined(scores["test"], chosen).float()
        places = peak_places(raw["test"]["anomaly_map"], sets["test"]["images"])
        part["shortcuts"] = {"family choice": shortcut_counts(family_choice, labels["test"], places, top)}
        if margin == 0:
            shipped = detector.calibration.combine({k: scores["test"][k].float() for k in SCORE_NAMES}).cpu()
            part["shortcuts"]["shipped score"] = shortcut_counts(shipped, labels["test"], places, top)
        result["margins"][margin] = part
    return result


def to_markdown(result: Mapping[str, Any], command: str) -> str:
    lines = [
        "# Latent-score study and shortcut counts (issue 15)",
        "",
        f"Machine: {result['machine']}. Command: `{command}`. Model: `{result['model']}` (setting "
        f"{result['setting']}). {result['seconds']:.0f} s.",
        "",
        "Normal-only: statistics from normal images only; the selection set is normal validation images with "
        "synthetic lesions; real tumours only in the test column. Images: "
        + ", ".join(f"{k} {v}" for k, v in result["counts"].items())
        + ".",
        "",
    ]
    for margin, part in result["margins"].items():
        rule = "the body, dilated by 2 px" if int(margin) == 0 else f"the body's interior, {margin} px in"
        lines += [
            f"## Maps taken on {rule} (foreground margin {margin})",
            "",
            "### Each score alone (image AUROC)",
            "",
            "| score | kind | selection (synthetic, validation) | test (real tumours) | synthetic test |",
            "|---|---|---:|---:|---:|",
        ]
        for name, row in part["alone"].items():
            kind = "reconstruction" if name in FAMILY else "latent"
            lines.append(
                f"| {name} | {kind} | {row['selection']:.3f} | {row['test']:.3f} | {row['synthetic_test']:.3f} |"
            )
        lines += [
            "",
            "### Combinations chosen by the rule (best selection AUROC on the 0.25 grid, simplest on ties)",
            "",
            "| candidates | weights | selection | test | synthetic test |",
            "|---|---|---:|---:|---:|",
        ]
        for label, row in part["combinations"].items():
            weights = ", ".join(f"{k} {v:.2f}" for k, v in row["weights"].items())
            lines.append(
                f"| {label} | {weights} | {row['selection']:.3f} | {row['test']:.3f} | {row['synthetic_test']:.3f} |"
            )
        lines += [
            "",
            f"### Where the maps of the top-{result['top']} test images of each class peak",
            "",
            "| score | class | border | rim (skull, scalp) | inside |",
            "|---|---|---:|---:|---:|",
        ]
        for score, per_class in part["shortcuts"].items():
            for cls, counts in per_class.items():
                lines.append(f"| {score} | {cls} | " + " | ".join(str(counts[p]) for p in PLACES) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", type=Path, required=True, help="a prepared split (holds datalist.json)")
    parser.add_argument("--model_file", type=Path, default=BUNDLE / "models" / "model.pt")
    parser.add_argument("--setting", default=SHIPPED_SETTING, help="the bundle setting of the weights")
    parser.add_argument("--settings", default=None, help="a full settings dict as JSON instead of --setting")
    parser.add_argument("--fit_limit", type=int, default=900, help="normal training images for the statistics")
    parser.add_argument("--top", type=int, default=50, help="top-scoring images per class for the shortcut counts")
    parser.add_argument("--margins", type=int, nargs="+", default=None, help="foreground margins (default 0, R/16)")
    parser.add_argument("--out", type=Path, required=True, help="folder for latent_study.md and .json (created)")
    args = parser.parse_args(argv)
    if not (args.dataset_dir / "datalist.json").is_file():
        raise FileNotFoundError(f"{str(args.dataset_dir / 'datalist.json')!r} does not exist: prepare the data first.")
    settings = json.loads(args.settings) if args.settings else None
    start = time.perf_counter()
    detector = load_bundle_detector(BUNDLE, args.model_file, args.setting, settings)
    result = study(detector, args.dataset_dir, detector.resolution, args.fit_limit, args.top, args.margins)
    result.update(
        machine=machine_description(),
        model=str(args.model_file.resolve().relative_to(ROOT) if args.model_file.resolve().is_relative_to(ROOT)
                  else args.model_file),
        setting=args.setting if settings is None else "custom",
        top=args.top,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    write_text_atomic(args.out / "latent_study.json", json.dumps(result, indent=1, default=float))
    write_text_atomic(args.out / "latent_study.md", to_markdown(result, command))
    print(to_markdown(result, command))
    return result


if __name__ == "__main__":
    main()
