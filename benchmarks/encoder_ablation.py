"""Encoder and scoring ablations on the toy task (plain ellipses, pasted lesions, 32 px), CPU by default.

Questions measured, on one trained G and the same data for every row:

1. does the supervised latent loss on G's own samples (``synthetic_batch``) help the encoder? and reconstructing
   with the generator's fixed noise images (``noise_mode="const"``) or without noise (``"none"``)?
2. what does latent refinement (k Adam steps in W+ from E(x)) buy, and at what cost per image?
3. how does each candidate score do alone, next to a trivial baseline (mean image intensity)?

    python benchmarks/encoder_ablation.py --out benchmarks/results/encoder_ablation.md

Toy numbers say whether the machinery works, not how it does on real MRI (see the bundle's report for that).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.baselines import MeanIntensityBaseline
from monai_hqanogan.data import TOY_SHAPES, make_ellipse_images, make_toy_lesion_set
from monai_hqanogan.engines import EncoderTrainer, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.metrics import compute_image_auroc, compute_pixel_auroc
from monai_hqanogan.networks.nets import HQAnoGANDetector, PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.scoring import SCORE_NAMES

R = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--g-iterations", type=int, default=400)
    parser.add_argument("--e-iterations", type=int, default=400)
    parser.add_argument("--refine-steps", type=int, nargs="+", default=[0, 10, 50])
    parser.add_argument("--test-size", type=int, default=128, help="normal and lesioned test images each")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()

    torch.manual_seed(0)
    train = make_ellipse_images(512, R, seed=0, **TOY_SHAPES)
    loader = DataLoader(TensorDataset(train), batch_size=16, shuffle=True, drop_last=True)
    g = StyleGAN2Generator(resolution=R, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=64)
    d = StyleGAN2Discriminator(resolution=R, channel_base=512, channel_max=64)
    start = time.perf_counter()
    gan = StyleGAN2Trainer(
        "cpu", 1000, loader, g, d, stylegan2_adam(g.parameters(), reg_interval=4),
        stylegan2_adam(d.parameters(), reg_interval=16), total_kimg=args.g_iterations * 16 / 1000,
    )  # fmt: skip
    gan.run()
    g_seconds = time.perf_counter() - start
    val_images, val_labels, _ = make_toy_lesion_set(64, seed=10)
    test_images, test_labels, test_masks = make_toy_lesion_set(args.test_size, seed=20)
    held_out = make_ellipse_images(128, R, seed=99, **TOY_SHAPES)

    rows, score_rows = [], []
    variants = (
        ("E: L2 + D-feature + w-norm", 0, "const"),
        ("E: same, generator noise off", 0, "none"),
        ("E: + supervised latent on G samples", 8, "const"),
    )
    for variant, synthetic, noise_mode in variants:
        torch.manual_seed(1)
        e = PSPEncoder(resolution=R, w_dim=32, num_ws=g.num_ws, base_channels=16, max_channels=64)
        start = time.perf_counter()
        EncoderTrainer(
            "cpu", 1000, loader, e, gan.generator_ema, torch.optim.Adam(e.parameters(), lr=1e-3), discriminator=d,
            synthetic_batch=synthetic, noise_mode=noise_mode, total_kimg=args.e_iterations * 16 / 1000,
        ).run()  # fmt: skip
        e_seconds = time.perf_counter() - start
        for k in args.refine_steps:
            det = HQAnoGANDetector(e, gan.generator_ema, d, refine_steps=k, refine_lr=0.02, noise_mode=noise_mode)
            det.calibrate(train[:256], val_images, val_labels)
            start = time.perf_counter()
            rec = det.detect(test_images)
            per_image_ms = (time.perf_counter() - start) / len(test_images) * 1000
            with torch.no_grad():
                l2 = float((det.reconstruct(held_out)[1] - held_out).square().mean())
            lesioned = slice(args.test_size, None)
            pixel_auroc = compute_pixel_auroc(rec["anomaly_map"][lesioned], test_masks[lesioned])
            rows.append(
                f"| {variant} | {k} | {e_seconds:.0f} | {l2:.4f} | "
                f"{compute_image_auroc(rec['pred_score'], test_labels):.3f} | {pixel_auroc:.3f} | {per_image_ms:.1f} | "
                f"{', '.join(f'{n} {w:.2f}' for n, w in det.calibration.weight_dict().items())} |"
            )
            print(rows[-1], flush=True)
            if k == 0:
                for name in SCORE_NAMES:
                    auc = compute_image_auroc(rec["components"][name], test_labels)
                    score_rows.append(f"| {variant} | {name} | {auc:.3f} |")
    mean_intensity = compute_image_auroc(test_images.flatten(1).mean(1), test_labels)
    inverted = compute_image_auroc(-test_images.flatten(1).mean(1), test_labels)
    score_rows.append(f"| trivial baseline | mean intensity (best sign) | {max(mean_intensity, inverted):.3f} |")
    # the reference baseline the bundle reports: the mean inside the head (the toy heads all share one brightness,
    # so a pasted lesion moves it: a shortcut this toy set has and Br35H has less of)
    foreground = MeanIntensityBaseline(foreground_threshold=-0.9).fit(train).score(test_images)
    score_rows.append(
        f"| trivial baseline | foreground mean intensity | {compute_image_auroc(foreground, test_labels):.3f} |"
    )

    report = "\n".join(
        [
            f"## Encoder and scoring ablations (toy task, {R} px)",
            "",
            f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
            f"G trained {args.g_iterations} iterations (batch 16, {g_seconds:.0f} s); each encoder "
            f"{args.e_iterations} iterations. Test: {args.test_size} normal + {args.test_size} lesioned images; "
            "calibration on 64 + 64 validation images (weights by validation AUROC, threshold at F1 max).",
            "",
            "Command: `python benchmarks/encoder_ablation.py`",
            "",
            "| encoder | refine steps | E train s | held-out L2 | image AUROC | pixel AUROC | ms/image | weights |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            "Each score alone (no refinement):",
            "",
            "| encoder | score | image AUROC |",
            "|---|---|---:|",
            *score_rows,
            "",
        ]
    )
    print(report)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
