"""In-process A/B of the discriminator's input layout (``follow_channels_last``) on the demo training step.

This VM's speed drifts by about +-20 % within minutes, which hides a few per cent between two separate runs. Here
one trainer runs, and its iterations alternate between D with the input re-strided to channels-last (A, the
trainers' behaviour) and D with the batch left in the standard strides (B, the behaviour before), so the drift falls
on both alike. Each mode (main steps, R1 at every step, path length at every step) is timed as in
``benchmarks/train_throughput.py``, and the amortised iteration is ``main + (R1 - main) / 16 + (PL - main) / 4``.

    python benchmarks/layout_ab.py --iterations 30             # float32 (the default of the CPU trainers)
    python benchmarks/layout_ab.py --iterations 30 --amp       # bfloat16 autocast
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from ignite.engine import Events
from train_throughput import build_trainer  # next to this file

import monai_hqanogan.networks.nets.stylegan2_discriminator as d_module
from monai_hqanogan.engines import StyleGAN2Trainer
from monai_hqanogan.workflows import load_settings

MODES = {
    "main": {"r1_gamma": 0.0, "pl_weight": 0.0},
    "r1": {"r1_interval": 1, "pl_weight": 0.0},
    "pl": {"r1_gamma": 0.0, "pl_interval": 1},
}


def ab(args: argparse.Namespace, mode: str) -> tuple[float, float]:
    """Median seconds per iteration with (A) and without (B) the re-strided input, alternating iterations."""
    trainer = build_trainer(args.resolution, args.batch, 2 * args.iterations + args.warmup, "cpu", args, **MODES[mode])
    follow, keep = d_module.follow_channels_last, lambda x, _module: x
    times: dict[bool, list[float]] = {True: [], False: []}
    state: dict[str, object] = {}

    def started(engine: StyleGAN2Trainer) -> None:
        state["a"] = engine.state.iteration % 2 == 0
        d_module.follow_channels_last = follow if state["a"] else keep
        state["t"] = time.perf_counter()

    def completed(engine: StyleGAN2Trainer) -> None:
        if engine.state.iteration > args.warmup:
            times[bool(state["a"])].append(time.perf_counter() - float(state["t"]))

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    try:
        trainer.run()
    finally:
        d_module.follow_channels_last = follow
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30, help="timed iterations per side and mode")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = load_settings(Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_anomaly_hqanogan", "demo")
    args.resolution, args.batch = demo["resolution"], demo["batch_size"]
    for key in ("channel_base", "channel_max", "mapping_layers", "w_dim"):
        setattr(args, key, demo[key])
    args.channels_last, args.median = True, True
    t = {mode: ab(args, mode) for mode in MODES}
    precision = "bfloat16 autocast" if args.amp else "float32"
    print("| precision | side | s/iter main | +R1 | +PL | amortised | images/s |\n|---|---|---:|---:|---:|---:|---:|")
    for side, name in ((0, "A: input re-strided"), (1, "B: standard strides")):
        main_t, r1_t, pl_t = (t[m][side] for m in MODES)
        amortised = main_t + max(0.0, r1_t - main_t) / 16 + max(0.0, pl_t - main_t) / 4
        print(
            f"| {precision} | {name} | {main_t:.3f} | {r1_t:.3f} | {pl_t:.3f} | {amortised:.3f} "
            f"| {args.batch / amortised:.1f} |"
        )


if __name__ == "__main__":
    main()
