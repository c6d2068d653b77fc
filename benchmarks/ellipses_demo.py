"""Train StyleGAN2-ADA on synthetic ellipses on the CPU and save real vs generated sample sheets.

A quality smoke check that needs no data download: after a few hundred iterations at 32 px, the samples of
G_ema should look like the training images (a bright ellipse with a darker inner ellipse on black).

    python benchmarks/ellipses_demo.py --iterations 600 --out runs/ellipses_demo

Writes ``real.png``, ``samples.png`` (G_ema, fixed latents) and a side-by-side ``comparison.png`` into ``--out``,
TensorBoard logs under ``--out/tb`` and resumable checkpoints under ``--out/checkpoints`` (running the same
command again continues from the last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from monai.handlers import TensorBoardStatsHandler
from monai.utils import set_determinism
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.handlers import GeneratorSampleHandler, KimgProgressBar, TrainingCheckpointHandler
from monai_hqanogan.networks.nets import StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.visualize import make_image_grid, save_image_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ellipses_demo", help="output directory")
    parser.add_argument("--iterations", type=int, default=600, help="training iterations (one D and one G step)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=2048, help="size of the synthetic training set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channel-base", type=int, default=2048)
    parser.add_argument("--channel-max", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.0025)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_determinism(seed=args.seed)
    out = Path(args.out)
    real = make_ellipse_images(args.num_images, args.resolution, seed=args.seed)
    loader = DataLoader(TensorDataset(real), batch_size=args.batch_size, shuffle=True, drop_last=True)
    epochs = math.ceil(args.iterations / len(loader))

    g = StyleGAN2Generator(
        resolution=args.resolution, z_dim=64, w_dim=64, mapping_layers=2,
        channel_base=args.channel_base, channel_max=args.channel_max,
    )  # fmt: skip
    d = StyleGAN2Discriminator(resolution=args.resolution, channel_base=args.channel_base, channel_max=args.channel_max)
    g.to(args.device)
    d.to(args.device)
    writer = SummaryWriter(log_dir=str(out / "tb"))
    trainer = StyleGAN2Trainer(
        device=args.device,
        max_epochs=epochs,
        train_data_loader=loader,
        generator=g,
        discriminator=d,
        g_optimizer=stylegan2_adam(g.parameters(), lr=args.lr, reg_interval=4),
        d_optimizer=stylegan2_adam(d.parameters(), lr=args.lr, reg_interval=16),
        total_kimg=args.iterations * args.batch_size / 1000,
        amp=True,
    )
    handlers = [
        TrainingCheckpointHandler(save_dir=out / "checkpoints", save_interval=5),
        TensorBoardStatsHandler(summary_writer=writer, output_transform=lambda x: x, iteration_log=10),
        GeneratorSampleHandler(output_dir=out / "samples", summary_writer=writer, interval=10, scale=4),
        KimgProgressBar(),
    ]
    for h in handlers:
        h.attach(trainer)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start

    samples = handlers[2].render(trainer.generator_ema)
    save_image_grid(real[:16], out / "real.png", nrow=4, scale=4)
    save_image_grid(samples, out / "samples.png", nrow=4, scale=4)
    side = torch.cat([make_image_grid(real[:16], nrow=4), make_image_grid(samples, nrow=4)], dim=2)
    save_image_grid(side.unsqueeze(0), out / "comparison.png", value_range=(0.0, 1.0), scale=4)
    summary = {
        "iterations": trainer.state.iteration,
        "kimg": trainer.kimg,
        "seconds": round(seconds, 1),
        "device": args.device,
        "final_output": trainer.state.output,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
