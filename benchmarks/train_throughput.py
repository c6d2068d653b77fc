"""Training throughput of full StyleGAN2-ADA iterations (G and D steps, ADA, EMA, lazy R1 and path length).

Lazy regularisation runs every 16 D steps (R1) and every 4 G steps (path length), so a short run would over- or
under-count it. Each resolution is therefore timed three ways on the same models: main steps only, with R1 at
every step, and with path length at every step; the amortised cost of one iteration is
``t_main + (t_r1 - t_main) / 16 + (t_pl - t_main) / 4``. ADA is on at p = 0.2 so that the augmentation cost counts.

    python benchmarks/train_throughput.py                           # CPU: 32, 64, 128 px
    python benchmarks/train_throughput.py --device cuda --batch 64  # GPU, bfloat16 autocast
    python benchmarks/train_throughput.py --demo --compare-layouts  # the bundle's demo networks at 32 px: float32
                                                                    # and bfloat16, contiguous and channels-last
    python benchmarks/train_throughput.py --markdown benchmarks/results/<date>-<machine>.md
    python benchmarks/train_throughput.py --demo --iterations 11 --median    # on a shared, noisy machine

Prints a Markdown table (images/s and kimg/h per resolution) and optionally appends it to a file with the machine
description.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.networks.nets import StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.transforms import AdaptiveAugmentPipe
from monai_hqanogan.workflows import load_settings


def build_trainer(
    resolution: int, batch: int, iterations: int, device: str, args: argparse.Namespace, **trainer_kwargs
) -> StyleGAN2Trainer:
    """The timed trainer, not yet run: G and D from ``args`` (seed 0), ``iterations`` batches of ellipse images, ADA
    at a fixed p = 0.2, ``args.amp`` and ``args.channels_last``; ``trainer_kwargs`` go to the trainer."""
    torch.manual_seed(0)
    g = StyleGAN2Generator(
        resolution=resolution, z_dim=args.w_dim, w_dim=args.w_dim, mapping_layers=args.mapping_layers,
        channel_base=args.channel_base, channel_max=args.channel_max,
    ).to(device)  # fmt: skip
    d = StyleGAN2Discriminator(resolution=resolution, channel_base=args.channel_base, channel_max=args.channel_max)
    d.to(device)
    data = make_ellipse_images(batch * iterations, resolution)
    loader = DataLoader(TensorDataset(data), batch_size=batch, drop_last=True)
    return StyleGAN2Trainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        generator=g,
        discriminator=d,
        g_optimizer=stylegan2_adam(g.parameters(), reg_interval=4),
        d_optimizer=stylegan2_adam(d.parameters(), reg_interval=16),
        augment_pipe=AdaptiveAugmentPipe(p=0.2),
        ada_mode="fixed",
        amp=args.amp,
        channels_last=args.channels_last,
        **trainer_kwargs,
    )


def time_iterations(
    resolution: int, batch: int, iterations: int, device: str, args: argparse.Namespace, **trainer_kwargs
) -> float:
    """Seconds per iteration after one warm-up iteration: the mean, or with ``--median`` the median (robust to a
    shared machine slowing down for part of a run)."""
    trainer = build_trainer(resolution, batch, iterations + 1, device, args, **trainer_kwargs)
    stamps: list[float] = []

    def stamp(_engine: StyleGAN2Trainer) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    if args.median:
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def measure(resolution: int, batch: int, iterations: int, device: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per iteration of the main steps, with R1 at every step, with path length at every step, the
    amortised iteration (R1 every 16, path length every 4 steps) and the resulting images/s."""
    run = (resolution, batch, iterations, device, args)
    t_main = time_iterations(*run, r1_gamma=0.0, pl_weight=0.0)
    t_r1 = time_iterations(*run, r1_interval=1, pl_weight=0.0)
    t_pl = time_iterations(*run, r1_gamma=0.0, pl_interval=1)
    amortised = t_main + max(0.0, t_r1 - t_main) / 16 + max(0.0, t_pl - t_main) / 4
    return {"t_main": t_main, "t_r1": t_r1, "t_pl": t_pl, "amortised": amortised, "images_per_s": batch / amortised}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration")
    parser.add_argument("--channel-base", type=int, default=16384)
    parser.add_argument("--channel-max", type=int, default=256)
    parser.add_argument("--w-dim", type=int, default=512)
    parser.add_argument("--mapping-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    parser.add_argument("--median", action="store_true", help="median seconds per iteration instead of the mean")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast (default: on for CUDA, off on the CPU)")  # fmt: skip
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="the trainer's channels-last layout (default on, as in the trainers)")  # fmt: skip
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the bundle's demo/cpu networks, resolution and batch size (its configs/settings.json)",
    )
    parser.add_argument(
        "--compare-layouts",
        action="store_true",
        help="one row per float32/bfloat16 x contiguous/channels-last, the same models and data",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        demo = load_settings(Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_anomaly_hqanogan", "demo")
        args.resolutions, args.batch = [demo["resolution"]], demo["batch_size"]
        for key in ("channel_base", "channel_max", "mapping_layers", "w_dim"):
            setattr(args, key, demo[key])
    if args.amp is None:
        args.amp = args.device.startswith("cuda")

    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    header = (
        "| resolution | batch | precision | layout | s/iter main | s/iter +R1 | s/iter +PL | s/iter amortised "
        "| images/s | kimg/h |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
    )
    variants = [(args.amp, args.channels_last)]
    if args.compare_layouts:
        variants = [(amp, cl) for amp in (False, True) for cl in (False, True)]
    rows = []
    print(f"device: {args.device} - {machine}; channel_base={args.channel_base}, channel_max={args.channel_max}")
    print(header)
    for res in args.resolutions:
        for args.amp, args.channels_last in variants:
            m = measure(res, args.batch, args.iterations, args.device, args)
            row = (
                f"| {res} | {args.batch} | {'bfloat16 autocast' if args.amp else 'float32'} | "
                f"{'channels-last' if args.channels_last else 'contiguous'} | {m['t_main']:.3f} | {m['t_r1']:.3f} | "
                f"{m['t_pl']:.3f} | {m['amortised']:.3f} | {m['images_per_s']:.1f} | {m['images_per_s'] * 3.6:.1f} |"
            )
            rows.append(row)
            print(row, flush=True)
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(
                f"\n### {args.device}: {machine}\n\nchannel_base={args.channel_base}, channel_max={args.channel_max}, "
                f"w_dim={args.w_dim}, mapping_layers={args.mapping_layers}, torch {torch.__version__}\n\n"
                + header + "\n" + "\n".join(rows) + "\n"
            )  # fmt: skip


if __name__ == "__main__":
    main()
