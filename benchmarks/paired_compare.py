"""Is model A better than model B on the same images? A paired group bootstrap over two evaluations' scores files.

Each evaluation (``evaluate.json``, ``main_job``) writes ``scores_<set>.csv`` next to its report: every image's score
per method. This script compares one method of one file with one method of another (or of the same file) on the
same images, resampling whole near-duplicate groups, and prints the AUROC difference with its interval:

    python benchmarks/paired_compare.py runs/cpu/evaluation/scores_test.csv:HQ-AnoGAN \\
        runs/gpu/evaluation/scores_test.csv:HQ-AnoGAN

    python benchmarks/paired_compare.py A.csv:HQ-AnoGAN A.csv:autoencoder --json out.json

The files must list the same images in the same order (two evaluations of one datalist; the resolution may differ).
The interval covers the choice of test images, not the training's randomness: compare several seeds for that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monai_hqanogan.evaluation.scores_file import compare_score_files
from monai_hqanogan.utils import write_text_atomic


def parse_side(text: str) -> tuple[Path, str]:
    """``FILE:METHOD`` -> (file, method); the method is what follows the last colon."""
    path, sep, method = text.rpartition(":")
    if not (sep and path and method):
        raise argparse.ArgumentTypeError(f"expected FILE:METHOD (e.g. scores_test.csv:HQ-AnoGAN), got {text!r}.")
    return Path(path), method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=parse_side, help="FILE:METHOD of the first (the difference is a minus b)")
    parser.add_argument("b", type=parse_side, help="FILE:METHOD of the second")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="the interval's coverage (default 0.95)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    for path, _ in (args.a, args.b):
        if not path.is_file():
            parser.error(f"{path} is not a file (an evaluation writes scores_<set>.csv next to its report.md).")
    try:
        out = compare_score_files(*args.a, *args.b, args.samples, args.confidence, args.seed)
    except ValueError as e:
        parser.error(str(e))
    groups = out["num_groups"]
    print(
        f"{out['a']} - {out['b']}: image AUROC difference {out['difference']:+.4f}, "
        f"{out['confidence']:.0%} interval [{out['low']:+.4f}, {out['high']:+.4f}] "
        f"({out['num_samples']} resamples of {groups['normal']} normal and {groups['abnormal']} abnormal groups; "
        f"share of resamples <= 0: {out['share_not_above']:.3f})"
    )
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
