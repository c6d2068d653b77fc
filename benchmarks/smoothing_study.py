"""How wide should the score family's map smoothing be? Selection AUROC of ``map_max`` per width, per method.

The family's image score ``map_max`` is the maximum of the foreground residual map smoothed with a Gaussian of
:func:`~monai_hqanogan.evaluation.family_smoothing` (``resolution / 32`` px, at least 1). This study scores, for each
trained detector given and for the reference methods the bundle's evaluation fits next to it (``evaluate.json``'s
``baselines``: PCA and the autoencoder, on the same training normals with the same fit arguments), the
synthetic-lesion **selection** AUROC of ``map_max`` for sigma = ``f * resolution / 32`` px over the given factors
``f``. It reads only the training normals and the synthetic-lesion validation list (``localisation_validation``,
normal validation slices with lesions pasted in): no test image and no real tumour, so it may choose under the
normal-only protocol (DESIGN.md section 4a).

    python benchmarks/smoothing_study.py --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h \
        --model 32px=cpu:bundles/brain_mri_anomaly_hqanogan/models/model.pt \
        --model 64px=cpu@64:runs/cpu64/models/model.pt --factors 0.5 1 1.5 2 3 --out smoothing.md

``--model NAME=SETTING[@RESOLUTION]:PATH`` names a calibrated model file and the setting of
``configs/settings.json`` its networks were built with (``@64``: that setting at another resolution). Writes a
Markdown table (``--out``) and the same numbers as JSON next to it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_hqanogan.evaluation import family_scores
from monai_hqanogan.metrics import compute_image_auroc
from monai_hqanogan.utils import write_text_atomic
from monai_hqanogan.workflows import check_datalist, load_bundle_detector, load_split, machine_description

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brain_mri_anomaly_hqanogan"
SELECTION_KEY = "localisation_validation"


def parse_model(text: str) -> tuple[str, str, int | None, Path]:
    """``NAME=SETTING[@RESOLUTION]:PATH`` -> (name, setting, resolution or None, path); a clear error otherwise."""
    name, sep, rest = text.partition("=")
    setting, sep2, path = rest.partition(":")
    setting, at, resolution = setting.partition("@")
    if not (sep and sep2 and name and setting and path) or (at and not resolution.isdigit()):
        raise argparse.ArgumentTypeError(f"expected NAME=SETTING[@RESOLUTION]:PATH, got {text!r}.")
    return name, setting, int(resolution) if at else None, Path(path)


def bundle_settings(bundle_root: Path, setting: str, resolution: int | None) -> dict[str, Any]:
    """The setting's dict from ``configs/settings.json``, at ``resolution`` when given."""
    table = json.loads((bundle_root / "configs" / "settings.json").read_text())
    if setting not in table:
        raise ValueError(f"setting {setting!r} is not in configs/settings.json ({', '.join(sorted(table))}).")
    return {**table[setting], **({"resolution": resolution} if resolution else {})}


def evaluation_baselines(bundle_root: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference methods that reconstruct, and their fit arguments, as ``evaluate.json`` builds them."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ("common.json", "evaluate.json")])
    parser.update({"bundle_root": str(bundle_root), "settings": settings, "device": "cpu"})
    methods = parser.get_parsed_content("baselines", instantiate=True)
    fit_kwargs = parser.get_parsed_content("baseline_fit_kwargs", instantiate=True)
    chosen = {name: m for name, m in methods.items() if hasattr(m, "reconstruct")}
    return chosen, {name: dict(fit_kwargs.get(name, {})) for name in chosen}


@torch.no_grad()
def detector_reconstructions(detector: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """G(E(x)) of every image, in batches, on the CPU."""
    parts = [detector.reconstruct(detector.prepare_input(images[i : i + batch]))[1].float().cpu()
             for i in range(0, len(images), batch)]  # fmt: skip
    return torch.cat(parts)


def width_aurocs(images: torch.Tensor, rec: torch.Tensor, labels: torch.Tensor, factors: list[float]) -> list[float]:
    """Selection AUROC of ``map_max`` at sigma = ``f * resolution / 32`` px for each factor."""
    resolution = images.shape[-1]
    out = []
    for f in factors:
        scores = family_scores(images, rec, smoothing=f * resolution / 32)["map_max"]
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"map_max is not finite at factor {f}: the reconstructions hold NaN or inf.")
        out.append(compute_image_auroc(scores, labels))
    return out


def study(args: argparse.Namespace) -> dict[str, Any]:
    datalist = args.dataset_dir / "datalist.json"
    check_datalist(datalist, ["training", SELECTION_KEY], labelled_keys=[SELECTION_KEY], verify_images=False)
    rows: list[dict[str, Any]] = []
    for name, setting, resolution, path in args.model:
        start = time.perf_counter()
        settings = dict(args.settings) if args.settings else bundle_settings(args.bundle_root, setting, resolution)
        detector = load_bundle_detector(args.bundle_root, path, settings=settings)
        res = int(detector.generator.resolution)
        fit = load_split(datalist, "training", res, limit=args.max_fit)
        sel = load_split(datalist, SELECTION_KEY, res, require_labels=True)
        recs = {"HQ-AnoGAN": detector_reconstructions(detector, sel["images"])}
        methods, fit_kwargs = evaluation_baselines(args.bundle_root, settings)
        for mname, method in methods.items():
            kwargs = fit_kwargs[mname]
            if args.autoencoder_epochs is not None and "epochs" in kwargs:
                kwargs["epochs"] = args.autoencoder_epochs
            if "progress" in inspect.signature(method.fit).parameters:
                kwargs["progress"] = False
            method.fit(fit["images"], **kwargs)
            recs[mname] = method.reconstruct(sel["images"]).float().cpu()
        for mname, rec in recs.items():
            aurocs = width_aurocs(sel["images"], rec, sel["labels"], args.factors)
            rows.append({"model": name, "resolution": res, "method": mname, "auroc": aurocs})
            print(f"{name} {res} px {mname}: " + " ".join(f"{f:g}:{a:.3f}" for f, a in zip(args.factors, aurocs)))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {"factors": args.factors, "rows": rows, "selection_images": int(len(sel["labels"])),
            "machine": machine_description("cpu"), "command": " ".join(["python", *sys.argv])}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    factors = result["factors"]
    head = "| model | method | " + " | ".join(f"f = {f:g}" for f in factors) + " |"
    lines = [head, "|---|---|" + "---:|" * len(factors)]
    for row in result["rows"]:
        best = max(row["auroc"])
        cells = [f"**{a:.3f}**" if a == best else f"{a:.3f}" for a in row["auroc"]]
        lines.append(f"| {row['model']} ({row['resolution']} px) | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join([
        "Selection AUROC of `map_max` (synthetic lesions, "
        f"{result['selection_images']} `{SELECTION_KEY}` images) with sigma = f x resolution / 32 px; "
        "the best of each row in bold.", "", *lines, "",
        f"- machine: {result['machine']}", f"- command: `{result['command']}`", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", type=Path, required=True, help="a folder prepared by monai_hqanogan.data")
    parser.add_argument("--model", type=parse_model, action="append", required=True,
                        help="NAME=SETTING[@RESOLUTION]:PATH of a calibrated model file (repeatable)")  # fmt: skip
    parser.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0],
                        help="sigma = f * resolution / 32 px for each f (1: the family's width)")  # fmt: skip
    parser.add_argument("--bundle_root", type=Path, default=BUNDLE)
    parser.add_argument("--settings", type=json.loads, default=None,
                        help="a whole settings dict (JSON) for every model, instead of the named settings")  # fmt: skip
    parser.add_argument("--autoencoder_epochs", type=int, default=None, help="override the setting's (tests)")
    parser.add_argument("--max_fit", type=int, default=None, help="at most this many training normals (tests)")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown table; the JSON goes next to it")
    args = parser.parse_args(argv)
    names = [m[0] for m in args.model]
    if len(set(names)) != len(names):
        parser.error(f"two models share a name: {names}")
    if any(f <= 0 for f in args.factors):
        parser.error(f"every factor must be > 0, got {args.factors}")
    result = study(args)
    write_text_atomic(args.out, markdown(result))
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
