"""All the GPU work of one session in one device call: throughput, the bundle's model at the ``gpu`` setting, and
every baseline at the same resolution.

Before the call, on any machine with the repository (``benchmarks/gpu_session.sh prepare`` does both):

    bash ../shared/scripts/gpu_wheels.sh .whl            # monai, ignite, nibabel wheels for the offline device
    python benchmarks/compare.py --mode gpu --dataset_dir bundles/brain_mri_anomaly_hqanogan/data/br35h \\
        --data_cache .cache/br35h_64.pt --prepare_only    # the prepared 64 px splits, float16 (~40 MB)

On the device (carry ``.whl`` and ``.cache``; ``benchmarks/gpu_session.sh run`` installs the wheels first):

    python benchmarks/gpu_session.py --data_cache .cache/br35h_64.pt --out $OUT

On the CPU at tiny size (what the tests run, in about a minute):

    python benchmarks/gpu_session.py --tiny --out /tmp/gpu_session

Steps, each written under ``--out`` as soon as it is done, so a call that runs out of time keeps what finished:

1. ``throughput.md``: images/s of the full G+D step (R1 and path length amortised, ADA at p = 0.2, bfloat16
   autocast on CUDA) at 64, 128 and 256 px with the ``gpu`` setting's networks;
2. ``model.pt``: HQ-AnoGAN at the bundle's ``gpu`` setting, trained on the cache's normal training slices (G and E
   stop at their kimg or their wall-clock caps), networks rounded to float16, calibrated under the normal-only
   protocol and stored in float16; ``model.json`` says how it was made and its sha256. It is the bundle's
   ``models/model.pt`` for ``--setting gpu``;
3. ``compare-*.md/.json``: every method on the same split and resolution (``benchmarks/compare.py``'s ``gpu``
   budget), HQ-AnoGAN being the detector of step 2;
4. ``session.json``: the machine, the seconds of every step, what stopped each trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    """A sibling benchmark script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def throughput(out: Path, setting: dict[str, Any], resolutions: list[int], batch: int, iterations: int,
               device: str) -> list[dict[str, Any]]:  # fmt: skip
    """Step 1: the full training step's speed at each resolution, written to ``throughput.md``."""
    tp = _load("train_throughput")
    args = argparse.Namespace(
        w_dim=setting["w_dim"], mapping_layers=setting["mapping_layers"], channel_base=setting["channel_base"],
        channel_max=setting["channel_max"], amp=device.startswith("cuda"), channels_last=True, median=False,
    )  # fmt: skip
    rows = []
    for res in resolutions:
        m = tp.measure(res, batch, iterations, device, args)
        rows.append({"resolution": res, "batch": batch, **m})
        print(f"[gpu session] throughput {res} px: {m['images_per_s']:.1f} images/s", flush=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    lines = [
        f"# Training throughput: {name}", "",
        f"Full StyleGAN2-ADA iteration (G and D steps; R1 every 16 and path length every 4 steps, amortised; ADA at "
        f"p = 0.2; {'bfloat16 autocast' if device.startswith('cuda') else 'float32'}), networks of the `gpu` setting "
        f"(channel_base {setting['channel_base']}, channel_max {setting['channel_max']}, w_dim {setting['w_dim']}); "
        f"torch {torch.__version__}; `python {' '.join(sys.argv)}`.", "",
        "| resolution | batch | s/iter amortised | images/s | kimg/h |", "|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += [
        f"| {r['resolution']} | {r['batch']} | {r['amortised']:.3f} | {r['images_per_s']:.1f} | "
        f"{r['images_per_s'] * 3.6:.1f} |"
        for r in rows
    ]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    return rows


def train_model(out: Path, cmp: Any, data: dict, budget: Any, device: str, seed: int) -> dict[str, Any]:
    """Step 2: HQ-AnoGAN at the budget's setting; float16-rounded, normal-only calibration, ``model.pt``."""
    from monai_hqanogan.workflows import export_detector, round_networks_to_half

    trained = cmp.train_hqanogan(data, budget, device, seed=seed)
    det = round_networks_to_half(trained["detector"])
    report = cmp.calibrate_normal_only(det, data)  # again, on the rounded networks: the file reproduces it exactly
    path = export_detector(det, out / "model.pt", storage_dtype="float16")
    info = {
        "setting": budget.hq, "training": trained["training"], "train_s": trained["train_s"], "seed": seed,
        "calibration": {k: v for k, v in report.items() if isinstance(v, (int, float, str, dict))},
        "sha256": sha256(path), "bytes": path.stat().st_size, "storage": "float16 networks, float32 calibration",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "CPU", "torch": torch.__version__,
    }  # fmt: skip
    (out / "model.json").write_text(json.dumps(info, indent=1, default=float))
    t = trained["training"]
    print(
        f"[gpu session] model.pt: G {t['generator_kimg']:.1f} kimg ({t['generator_stopped_by']}), E "
        f"{t['encoder_kimg']:.1f} kimg ({t['encoder_stopped_by']}), {path.stat().st_size / 2**20:.1f} MiB",
        flush=True,
    )
    return info


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_cache", type=Path, default=None, help="the prepared splits (compare.py --prepare_only)")
    parser.add_argument("--out", type=Path, required=True, help="where every result goes (the device's $OUT)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="synthetic data and tiny budgets (the CPU test)")
    parser.add_argument("--skip", default="", help="compare.py methods not to run, e.g. 'GANomaly'")
    args = parser.parse_args(argv)
    if not args.tiny and (args.data_cache is None or not args.data_cache.is_file()):
        parser.error("give --data_cache (written by compare.py --mode gpu --prepare_only), or --tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    cmp = _load("compare")
    session: dict[str, Any] = {"command": " ".join(["python"] + sys.argv), "device": args.device, "seconds": {}}
    if args.device.startswith("cuda"):
        session["gpu"] = torch.cuda.get_device_name()
    start = time.perf_counter()

    def save() -> None:
        session["seconds"]["total"] = round(time.perf_counter() - start, 1)
        (args.out / "session.json").write_text(json.dumps(session, indent=1, default=float))

    if args.tiny:
        budget = dataclasses.replace(
            cmp.BUDGETS["tiny"], hq={**cmp.BUDGETS["tiny"].hq, "generator_kimg": 0.032, "encoder_kimg": 0.016},
            hq_generator_s=60.0, hq_encoder_s=30.0, fanogan_gan_iterations=2, fanogan_encoder_iterations=2,
            anogan_steps=2, anogan_max_images=6, refine_steps=1, refine_max_images=6,
        )  # fmt: skip
        data, resolutions, batch, iterations = cmp.toy_data(16, n_train=32, n_test=8), [8, 16], 4, 1
    else:
        budget = cmp.BUDGETS["gpu"]
        data = cmp.dataset_data(None, budget.hq["resolution"], args.data_cache)
        resolutions, batch, iterations = [64, 128, 256], budget.hq["batch_size"], 5
    t0 = time.perf_counter()
    session["throughput"] = throughput(args.out, budget.hq, resolutions, batch, iterations, args.device)
    session["seconds"]["throughput"] = round(time.perf_counter() - t0, 1)
    save()
    t0 = time.perf_counter()
    session["model"] = train_model(args.out, cmp, data, budget, args.device, args.seed)
    session["seconds"]["model"] = round(time.perf_counter() - t0, 1)
    save()
    t0 = time.perf_counter()
    out = cmp.compare(
        data, budget, args.device, hq_model=args.out / "model.pt", hq_train_s=session["model"]["train_s"],
        skip=tuple(name.strip() for name in args.skip.split(",") if name.strip()), seed=args.seed,
    )  # fmt: skip
    record = cmp.run_record(data, out, "toy" if args.tiny else str(args.data_cache), args.seed)
    report_args = argparse.Namespace(device=args.device, toy=args.tiny, name="gpu-session", dataset_dir=None)
    report = cmp.write_report(args.out, "gpu", [record], report_args, time.perf_counter() - t0, (data, out))
    session["seconds"]["compare"] = round(time.perf_counter() - t0, 1)
    session["compare"] = report.name
    save()
    print(f"[gpu session] done in {session['seconds']['total']:.0f} s: {sorted(p.name for p in args.out.iterdir())}")
    return args.out


if __name__ == "__main__":
    main()
