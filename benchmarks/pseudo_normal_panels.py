"""Pseudo-normals of two or more trained detectors side by side, on the same real test slices.

Issue 16 asks that a model be checked on pictures as well as numbers before it is shipped: does each pseudo-normal
G(E(x)) follow the input's own anatomy (head size and shape, ventricles), or is it one template brain for every
input; where does the anomaly map glow (the tumour, or frames and the skull rim)? This script draws, for slices
spread evenly through a labelled list (not chosen by score, so no model picks its own examples), one row per
slice: the input, then for every model its pseudo-normal and its anomaly map, with the model's image score and
decision at its calibrated threshold.

    python benchmarks/pseudo_normal_panels.py --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h \
        --model shipped=cpu:bundles/brain_mri_anomaly_hqanogan/models/model.pt \
        --model candidate=cpu:runs/cpu/models/model.pt --out panels.png

``--model NAME=SETTING:PATH`` names a model file and the setting of ``configs/settings.json`` its networks were
built with (their resolution may differ: each model reads the slices at its own). The printed table lists every
slice's score under each model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from monai_hqanogan.workflows import check_datalist, load_bundle_detector, load_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brain_mri_anomaly_hqanogan"


def parse_model(text: str) -> tuple[str, str, Path]:
    """``NAME=SETTING:PATH`` -> (name, setting, path); a clear error for anything else."""
    name, sep, rest = text.partition("=")
    setting, sep2, path = rest.partition(":")
    if not (sep and sep2 and name and setting and path):
        raise argparse.ArgumentTypeError(f"NAME=SETTING:PATH expected, e.g. shipped=cpu:models/model.pt; got {text!r}")
    return name, setting, Path(path)


def evenly_spread(labels: torch.Tensor, per_class: int) -> list[int]:
    """``per_class`` indices of each class (0 first, then 1), evenly spaced from its first to its last item."""
    picked = []
    for k in (0, 1):
        rows = torch.nonzero(labels == k)[:, 0]
        if len(rows) == 0:
            continue
        picked += rows[torch.linspace(0, len(rows) - 1, min(per_class, len(rows))).round().long()].tolist()
    return picked


def draw(inputs: torch.Tensor, truths: list[str], names: list[str], records: dict[str, dict], out: Path) -> None:
    """One row per slice: input | per model: pseudo-normal, anomaly map (score and decision in the title)."""
    columns = 1 + 2 * len(records)
    fig, axes = plt.subplots(len(truths), columns, figsize=(1.9 * columns, 1.9 * len(truths)), squeeze=False)
    for row, (truth, name) in enumerate(zip(truths, names)):
        # MONAI reads PNG files as (width, height) arrays: transpose for display
        axes[row, 0].imshow(inputs[row, 0].T, cmap="gray", vmin=-1, vmax=1)
        axes[row, 0].set_title(f"{name}\n{truth}", fontsize=7)
        for m, (model, record) in enumerate(records.items()):
            score, flagged = float(record["pred_score"][row]), bool(record["pred_label"][row])
            axes[row, 1 + 2 * m].imshow(record["reconstruction"][row, 0].T, cmap="gray", vmin=-1, vmax=1)
            axes[row, 1 + 2 * m].set_title(f"{model}: G(E(x))", fontsize=7)
            axes[row, 2 + 2 * m].imshow(record["anomaly_map"][row, 0].T, cmap="inferno")
            axes[row, 2 + 2 * m].set_title(f"score {score:.2f} {'ANOMALOUS' if flagged else 'normal'}", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", type=Path, required=True, help="a prepared dataset (datalist.json)")
    parser.add_argument("--model", type=parse_model, action="append", required=True, help="NAME=SETTING:PATH")
    parser.add_argument("--key", default="test", help="the datalist's labelled list to draw from (default test)")
    parser.add_argument("--per_class", type=int, default=4, help="slices per class (default 4)")
    parser.add_argument(
        "--settings",
        type=json.loads,
        default=None,
        help="a whole settings dict (JSON) for every model, instead of the named settings",
    )
    parser.add_argument("--bundle_root", type=Path, default=BUNDLE)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per_class must be >= 1")
    datalist = args.dataset_dir / "datalist.json"
    if not datalist.is_file():
        parser.error(f"{datalist} does not exist: prepare the data first (python -m monai_hqanogan.data.prepare)")
    names_given = [name for name, _, _ in args.model]
    if len(set(names_given)) != len(names_given):
        parser.error(f"every --model needs its own NAME; got {names_given}")
    detectors = {
        name: load_bundle_detector(args.bundle_root, path, setting, args.settings) for name, setting, path in args.model
    }
    # pick from the labels alone, then read only the picked slices, once per resolution
    items = check_datalist(datalist, [args.key], verify_images=False, labelled_keys=[args.key])[args.key]
    picked = evenly_spread(torch.tensor([int(item["label"]) for item in items]), args.per_class)
    wanted = {items[i]["image"] for i in picked}
    order = [sorted(picked).index(i) for i in picked]  # load_split keeps the list's order
    truths = ["tumour" if int(items[i]["label"]) else "normal" for i in picked]
    images: dict[int, torch.Tensor] = {}
    records = {}
    for name, detector in detectors.items():
        resolution = int(detector.generator.resolution)
        if resolution not in images:
            split = load_split(datalist, args.key, resolution, keep=lambda item: item["image"] in wanted)
            if len(split["names"]) != len(picked):
                raise ValueError(f"the {args.key!r} list names an image more than once; cannot tell the slices apart")
            images[resolution] = split["images"][order]
            names = [split["names"][i] for i in order]
        with torch.no_grad():
            record = detector.detect(images[resolution])
        records[name] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
    shown = images[max(images)]
    draw(shown, truths, names, records, args.out)
    print(f"{'slice':<24} {'truth':<7} " + " ".join(f"{name:>12}" for name in records))
    for row, (name, truth) in enumerate(zip(names, truths)):
        print(f"{name:<24} {truth:<7} " + " ".join(f"{float(r['pred_score'][row]):12.2f}" for r in records.values()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
