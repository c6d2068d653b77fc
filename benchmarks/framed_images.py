"""Does a method's image AUROC lean on the white frames of some Br35H images? A shortcut check over a scores file.

Some Br35H slices sit inside a white frame (DESIGN.md's shortcuts). A detector whose map peaks on a frame scores
those images high without looking at the brain; if frames come with one class more often than with the other, the
AUROC rewards it. This script flags every image of an evaluation's ``scores_<set>.csv`` whose outer ring (the
``--ring`` outermost pixels of the prepared PNG) is mostly white, counts them per class, and prints each method's
image AUROC with and without them, and where the flagged abnormal images rank among the normal ones:

    python benchmarks/framed_images.py runs/cpu/evaluation/scores_test.csv \\
        --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h

It reads labels only to report; it chooses nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from monai_hqanogan.evaluation.scores_file import read_scores_csv
from monai_hqanogan.metrics import compute_image_auroc


def is_framed(path: Path, ring: int = 3, level: int = 200, share: float = 0.5) -> bool:
    """True when more than ``share`` of the ``ring`` outermost pixels of the grey image are above ``level``."""
    a = np.asarray(Image.open(path).convert("L"))
    edge = np.concatenate([a[:ring].ravel(), a[-ring:].ravel(), a[:, :ring].ravel(), a[:, -ring:].ravel()])
    return float((edge > level).mean()) > share


def framed_report(scores_file: Path, dataset_dir: Path, ring: int = 3) -> dict:
    """Counts of framed images per class and, per method, the AUROC with and without them."""
    data = read_scores_csv(scores_file)
    labels = np.asarray(data["label"])
    framed = np.array([is_framed(dataset_dir / name, ring) for name in data["image"]])
    keep = ~framed
    out: dict = {
        "framed": {"normal": int(framed[labels == 0].sum()), "abnormal": int(framed[labels == 1].sum())},
        "images": {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum())},
        "methods": {},
    }
    for method, s in data["scores"].items():
        s = np.asarray(s)
        normal = np.sort(s[labels == 0])
        flagged = s[framed & (labels == 1)]
        rank = np.searchsorted(normal, flagged, side="left") / normal.size  # share of normals scored below each
        out["methods"][method] = {
            "auroc": compute_image_auroc(s, labels),
            "auroc_without_framed": compute_image_auroc(s[keep], labels[keep]),
            "framed_abnormal_rank": float(rank.mean()) if flagged.size else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores_file", type=Path, help="an evaluation's scores_<set>.csv")
    parser.add_argument("--dataset_dir", type=Path, required=True, help="the prepared split the paths are relative to")
    parser.add_argument("--ring", type=int, default=3, help="width of the outer ring in pixels (default 3)")
    args = parser.parse_args(argv)
    if not args.scores_file.is_file():
        parser.error(f"{args.scores_file} is not a file (an evaluation writes scores_<set>.csv next to its report.md).")
    out = framed_report(args.scores_file, args.dataset_dir, args.ring)
    f, n = out["framed"], out["images"]
    print(f"framed: {f['normal']} of {n['normal']} normal, {f['abnormal']} of {n['abnormal']} abnormal images")
    print("| method | image AUROC | without framed images | framed abnormal images: mean share of normals below |")
    print("|---|---:|---:|---:|")
    for method, m in out["methods"].items():
        rank = "n/a" if m["framed_abnormal_rank"] is None else f"{m['framed_abnormal_rank']:.3f}"
        print(f"| {method} | {m['auroc']:.3f} | {m['auroc_without_framed']:.3f} | {rank} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
