# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Train HQ-AnoGAN on your own normal images
#
# The whole chain with the bundle's command line: a folder of images -> a prepared datalist -> the StyleGAN2-ADA
# generator -> the pSp encoder -> calibration, with TensorBoard logs, and how to tell that each step went well.
#
# **Your data.** Set `HQANOGAN_NORMAL_DIR` to a folder of normal images (PNG, JPEG, NIfTI 2D or 3D, DICOM series;
# searched recursively) and optionally `HQANOGAN_ABNORMAL_DIR` to abnormal ones, before starting the notebook.
# Without them the notebook makes a synthetic stand-in: ellipse "heads" of mixed sizes, some with a lesion.
#
# **Sizes.** The run below is sized for a CPU (32 px, a few thousand images shown to each network): minutes, enough
# to see the workflow and the diagnostics, far from a useful model. On a GPU use the bundle's `full` setting
# (`--setting full`: 128 px, 3000 kimg for the generator; hours). `HQANOGAN_TUTORIAL_SMALL=1` shrinks everything
# further (what CI runs).

# %%
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain text is fine

import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display
from monai.bundle import ConfigParser
from PIL import Image as PILImage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images
from monai_hqanogan.visualize import make_image_grid
from monai_hqanogan.workflows import load_model_file, load_split

SMALL = os.environ.get("HQANOGAN_TUTORIAL_SMALL", "0") == "1"

# sizes: the normal setting takes several minutes on 2 CPU cores, the small one (CI) well under a minute
RESOLUTION = 16 if SMALL else 32  # model resolution (a power of two; 128 in the bundle's full setting)
NUM_IMAGES = 60 if SMALL else 400  # synthetic normal images (only without HQANOGAN_NORMAL_DIR)
GENERATOR_KIMG = 0.064 if SMALL else 8.0  # thousands of real images shown to D while training G (full: 3000)
ENCODER_KIMG = 0.064 if SMALL else 4.0  # thousands of images shown to the encoder (full: 600)


def find_bundle() -> Path:
    """The bundle folder: $HQANOGAN_BUNDLE, or bundles/brain_mri_anomaly_hqanogan above the current folder."""
    if os.environ.get("HQANOGAN_BUNDLE"):
        return Path(os.environ["HQANOGAN_BUNDLE"]).resolve()
    for folder in [Path.cwd(), *Path.cwd().parents]:
        candidate = folder / "bundles" / "brain_mri_anomaly_hqanogan"
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate
    raise FileNotFoundError("run this notebook inside the monai-hqanogan repository, or set HQANOGAN_BUNDLE")


BUNDLE = find_bundle()
WORK = Path(os.environ.get("HQANOGAN_TUTORIAL_DIR", BUNDLE.parents[1] / "runs" / "tutorials")) / "02_own_images"
shutil.rmtree(WORK, ignore_errors=True)  # start afresh (a rerun of a bundle command would resume instead)
WORK.mkdir(parents=True)


def shell(*args: str | Path, tail: int = 6) -> str:
    """Run ``python ARGS...`` in WORK, print the command and the last ``tail`` lines of its output, return it all.
    (In a notebook ``!python ...`` does the same; a function keeps this file plain Python.)"""
    shown = " ".join("'$SETTINGS'" if str(a).startswith("{") else shlex.quote(str(a)) for a in args)
    print("$ python " + shown.replace(str(BUNDLE), "$BUNDLE").replace(str(WORK) + os.sep, ""))
    start = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=WORK, capture_output=True, text=True, env=env, check=False
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"the command failed ({result.returncode}):\n{output[-3000:]}")
    lines = [line for line in output.splitlines() if line.strip()]
    if tail:
        print("\n".join(lines[-tail:]))
    print(f"[{time.perf_counter() - start:.0f} s]")
    return output


def show(fig, dpi: int = 72) -> None:
    """Display a matplotlib figure as a PNG (works whatever matplotlib backend is active) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buffer.getvalue()))


def show_file(path: Path, width: int = 560) -> None:
    """Display a picture file, shrunk to at most ``width`` pixels (keeps the saved notebook small)."""
    picture = PILImage.open(path)
    picture.thumbnail((width, width))
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    display(Image(buffer.getvalue()))


def rel(path: str | Path) -> str:
    """``path`` relative to the repository, for shorter printouts."""
    return os.path.relpath(path, BUNDLE.parents[1])


print(f"small setting: {SMALL}; bundle: {rel(BUNDLE)}; outputs: {rel(WORK)}")

# %% [markdown]
# ## 1. A folder of normal images
#
# Training needs normal images only. Abnormal images (and their masks) are optional: they go to validation and
# test, where they choose the score weights and thresholds and measure the result. Without them, validation and
# test hold normal images, and synthetic lesions pasted into them give the labelled anomalies.

# %%
NORMAL_DIR = os.environ.get("HQANOGAN_NORMAL_DIR")
ABNORMAL_DIR = os.environ.get("HQANOGAN_ABNORMAL_DIR")


def save_pngs(images: torch.Tensor, folder: Path, prefix: str, rng: np.random.Generator) -> None:
    """[N, 1, S, S] images in [-1, 1] -> 8-bit PNGs, each cropped to a random width (non-square, like real files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = ((image[0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        width = int(rng.integers(int(0.8 * pixels.shape[1]), pixels.shape[1] + 1))
        left = (pixels.shape[1] - width) // 2
        PILImage.fromarray(pixels[:, left : left + width]).save(folder / f"{prefix}{i:04d}.png")


if NORMAL_DIR is None:  # the synthetic stand-in
    rng = np.random.default_rng(0)
    NORMAL_DIR, ABNORMAL_DIR = WORK / "my_images" / "normal", WORK / "my_images" / "abnormal"
    save_pngs(make_ellipse_images(NUM_IMAGES, 2 * RESOLUTION, seed=0), NORMAL_DIR, "case_", rng)
    lesioned, _ = add_synthetic_lesions(
        make_ellipse_images(NUM_IMAGES // 4, 2 * RESOLUTION, seed=1), seed=2, radius_range=(0.1, 0.2)
    )
    save_pngs(lesioned, ABNORMAL_DIR, "case_", rng)
files = sorted(p for p in Path(NORMAL_DIR).rglob("*") if p.is_file())
print(f"normal images: {rel(NORMAL_DIR)} ({len(files)} files, e.g. {files[0].name if files else 'none'})")
print(f"abnormal images: {ABNORMAL_DIR and rel(ABNORMAL_DIR)}")

# %% [markdown]
# ## 2. Folder -> datalist
#
# `python -m monai_hqanogan.data.prepare folder` reads every image, converts it to an 8-bit grey PNG, groups
# near-duplicates (slices of one volume always form one group), splits whole groups into training / validation /
# test (training: normal images only), pastes synthetic lesions with exact masks into the normal validation and
# test images (the localisation sets), and writes `datalist.json`, a `README.md` and `preview.png`.

# %%
prepare_args = ["-m", "monai_hqanogan.data.prepare", "folder", "--normal", NORMAL_DIR, "--output", "data"]
if ABNORMAL_DIR is not None:
    prepare_args += ["--abnormal", ABNORMAL_DIR]
shell(*prepare_args, "--no-progress", tail=9)
DATALIST = WORK / "data" / "datalist.json"
content = json.loads(DATALIST.read_text())
print("lists:", [k for k in content if k != "info"])
print("a training item:", content["training"][0])
print("a localisation item:", content["localisation_test"][-1])
show_file(WORK / "data" / "preview.png")

# %% [markdown]
# ## 3. Settings
#
# Every bundle config reads `settings`, one entry of `configs/settings.json` (`demo` for a CPU, `full` for a
# GPU) chosen with `--setting NAME`. The whole dict can be replaced with `--settings '{...}'`, as here: smaller
# networks than the demo's, so that a CPU trains them in minutes. Single values take `--settings#KEY VALUE` after
# such a dict (`monai.bundle run` has no dict to reach into without one); the main job adds the setting's dict for
# you, so `main_job ... --settings#generator_kimg 200` works on its own. A key the settings do not have is refused.

# %%
SETTINGS = json.loads((BUNDLE / "configs" / "settings.json").read_text())["demo"]
SETTINGS.update(
    description="tutorial 02: tiny networks for a CPU",
    resolution=RESOLUTION,
    z_dim=16 if SMALL else 64,
    w_dim=16 if SMALL else 64,
    mapping_layers=1 if SMALL else 2,
    channel_base=64 if SMALL else 1024,
    channel_max=16 if SMALL else 64,
    encoder_base_channels=8 if SMALL else 16,
    encoder_max_channels=16 if SMALL else 64,
    batch_size=8 if SMALL else 16,
    generator_kimg=GENERATOR_KIMG,
    encoder_kimg=ENCODER_KIMG,
    checkpoint_epochs=5,
    sample_epochs=2 if SMALL else 4,
)
print(json.dumps(SETTINGS, indent=1))
COMMON = [
    "--meta_file", BUNDLE / "configs" / "metadata.json",
    "--bundle_root", BUNDLE,
    "--dataset_dir", "data",
    "--run_dir", "runs",
    "--settings", json.dumps(SETTINGS),
]  # fmt: skip


def bundle(config: str, *extra: str, tail: int = 4) -> str:
    """``python -m monai.bundle run --config_file '["$BUNDLE/configs/common.json","$BUNDLE/configs/<config>"]' ...``
    with the settings above. The configs share ``common.json`` (settings, device, paths, networks): MONAI merges a
    list of config files in order. ``inference.json`` runs alone, as MONAI Label and MONAI's bundle tools read it."""
    files = [str(BUNDLE / "configs" / name) for name in ("common.json", config)]
    files = files[1] if config == "inference.json" else json.dumps(files, separators=(",", ":"))
    return shell("-m", "monai.bundle", "run", "--config_file", files, *COMMON, *extra, tail=tail)


# %% [markdown]
# ## 4. The generator: StyleGAN2-ADA
#
# Checkpoints go to `runs/generator/checkpoints` (running the same command again resumes from the newest one; a
# larger `generator_kimg` trains on from there), sample grids to `runs/generator/samples`, and TensorBoard logs to
# `runs/generator/tensorboard`. At the end, `runs/generator.pt` holds G_ema (the moving average of G, the one used
# for inference) and D.

# %%
bundle("train_generator.json")
print(sorted(p.name for p in (WORK / "runs" / "generator").iterdir()))

# %% [markdown]
# ### Did it go well? Samples
#
# The first check is always to look: G's samples (fixed latent codes, so consecutive grids are comparable) should
# come to resemble the real images, and they should vary as much as the real ones do. Identical samples are *mode
# collapse*; samples that reproduce training images exactly are memorisation (a risk with few images, which ADA
# counters).


# %%
def as_image(path: Path) -> np.ndarray:
    return np.asarray(PILImage.open(path).convert("L"))


def iteration(path: Path) -> int:
    return int(path.stem.split("=")[-1])


samples = sorted((WORK / "runs" / "generator" / "samples").glob("*.png"), key=iteration)
real = load_split(DATALIST, "training", RESOLUTION, limit=16)["images"].transpose(-1, -2)  # MONAI reads PNGs as (W, H)
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
for ax, picture, title in (
    (axes[0], as_image(samples[0]), f"G_ema after iteration {iteration(samples[0])}"),
    (axes[1], as_image(samples[-1]), f"G_ema after iteration {iteration(samples[-1])} (the last)"),
    (axes[2], make_image_grid(real, nrow=4)[0].numpy(), "real training images"),
):
    ax.imshow(picture, cmap="gray")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
show(fig)

# %% [markdown]
# ### Did it go well? Losses, r_t and p
#
# The trainer logs, per iteration: `loss/G` and `loss/D` (non-saturating logistic losses), `D/real_logit` and
# `D/fake_logit`, the regularisers `reg/r1` and `reg/pl`, and ADA's `ada/r_t` and `ada/p`. Read them in
# TensorBoard (`tensorboard --logdir runs`) or, as here, from the event files.
#
# - **r_t = E[sign(D(real))]**, the share of real images D calls real minus the share it calls fake. Near 1, D
#   separates the *training* images too well: it is overfitting them, and G's gradients become useless. ADA
#   raises the augmentation probability **p** whenever r_t is above its target 0.6 and lowers it below.
# - **p** starts at 0 and moves at most 1 per 500 kimg, so in a CPU run of a few kimg it barely leaves 0 (here r_t
#   hovers around its target and p stays below 0.01); in a long GPU run on a few thousand images it rises to a few
#   tenths and levels off. A p that keeps climbing towards 1 means D still overfits: more data, or a smaller D.
# - **Losses**: D's loss around 1 (2 log 2 = 1.39 means D cannot tell real from fake at all), with the real and
#   fake logits apart but not drifting further apart, is a balanced game. Short spikes that recover are common;
#   D's loss collapsing to 0 while G's climbs means D won and G stopped learning.


# %%
def scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of a TensorBoard log folder: tag -> (steps, values)."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: (np.array([e.step for e in events.Scalars(tag)]), np.array([e.value for e in events.Scalars(tag)]))
        for tag in events.Tags()["scalars"]
    }


def smooth(values: np.ndarray, width: int = 9) -> np.ndarray:
    """Running mean over ``width`` values (the ends padded with the end values)."""
    width = max(1, min(width, len(values) // 4))
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, "valid")


g_logs = scalars(WORK / "runs" / "generator" / "tensorboard")
print("logged:", sorted(g_logs))
kimg_per_step = SETTINGS["batch_size"] / 1000
panels = (
    ("losses", ["loss/G", "loss/D"]),
    ("D logits", ["D/real_logit", "D/fake_logit"]),
    ("ADA", ["ada/r_t", "ada/p"]),
    ("regularisers", ["reg/r1", "reg/pl"]),
)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
for ax, (title, tags) in zip(axes, panels):
    for tag in tags:
        steps, values = g_logs[tag]
        ok = np.isfinite(values)  # r_t and the regularisers are only measured every few iterations
        if ok.any():
            ax.plot(steps[ok] * kimg_per_step, smooth(values[ok]), label=tag)
    if title == "ADA":
        ax.axhline(0.6, color="grey", linestyle=":", label="r_t target")
    ax.set(title=title, xlabel="kimg")
    ax.legend(fontsize=8)
show(fig)
for tag in ("ada/r_t", "ada/p", "loss/D"):
    values = g_logs[tag][1][np.isfinite(g_logs[tag][1])]
    if len(values) == 0:
        continue
    quarter = values[-max(1, len(values) // 4) :]
    print(f"{tag:<8} last {values[-1]:.4f}, mean of the last quarter {quarter.mean():.4f}, max {values.max():.4f}")

# %% [markdown]
# ## 5. The encoder (pSp into W+)
#
# G and D are frozen; the encoder learns to map an image to the W+ code whose image G(w) reconstructs it (L2 +
# discriminator-feature loss + a penalty on the distance to w_avg). Its TensorBoard logs hold the loss terms, and
# `runs/encoder/reconstructions` grids of fixed training images (top) and their reconstructions (bottom).

# %%
bundle("train_encoder.json")
e_logs = scalars(WORK / "runs" / "encoder" / "tensorboard")
loss_tags = [t for t in sorted(e_logs) if t.startswith("loss/")]
fig, axes = plt.subplots(1, len(loss_tags), figsize=(4 * len(loss_tags), 3))
for ax, tag in zip(np.atleast_1d(axes), loss_tags):
    steps, values = e_logs[tag]
    ax.plot(steps * kimg_per_step, values, alpha=0.3)
    ax.plot(steps * kimg_per_step, smooth(values))
    ax.set(title=tag, xlabel="kimg")
show(fig)
grids = sorted((WORK / "runs" / "encoder" / "reconstructions").glob("*.png"), key=iteration)
print(f"reconstructions after iteration {iteration(grids[-1])}:")
show_file(grids[-1], width=480)

# %% [markdown]
# ## 6. Calibration
#
# `calibrate.json` fits the W+ Gaussian on the training images, normalises each candidate score on the normal
# validation images, and, under the default normal-only protocol (no real abnormal image chooses anything), picks
# the map's smoothing width and the weights of the combination with the best AUROC on synthetic lesions pasted into
# normal validation images (the datalist's `localisation_validation`), the image threshold at 5 % false positives
# on the normal validation images and the pixel threshold at the Dice maximum of the synthetic lesions. It saves the
# detector with its calibration to `runs/models/model.pt`. The report says what it chose, why, and how firm the
# choice is: the selection AUROC's 95 % interval (a bootstrap over whole groups of near-duplicate slices) and the
# chosen width's lead over the runner-up. An interval that holds 0 means the two widths could not be told apart.

# %%
bundle("calibrate.json", tail=0)
report = json.loads((WORK / "runs" / "calibration" / "calibration.json").read_text())
print("images:", report["counts"])
print("weights:", report["weights"], "chosen by", report["weights_from"])
for name, auroc in report.get("auroc_per_score", {}).items():
    print(f"  synthetic-lesion AUROC of {name:<15} {auroc:.3f}")
if "selection_auroc_ci" in report:
    ci = report["selection_auroc_ci"]
    print(f"chosen combination: {report['selection_auroc']:.3f}, 95 % interval [{ci['low']:.3f}, {ci['high']:.3f}]")
if "smoothing_runner_up" in report:
    r = report["smoothing_runner_up"]
    print(
        f"map width {report['smoothing_sigma']:g} px, ahead of {r['sigma']:g} px by {r['difference']:+.3f} "
        f"[{r['low']:+.3f}, {r['high']:+.3f}]"
    )
print(f"image threshold {report['image_threshold']:.3f} ({report['threshold_from']})")
print(f"pixel threshold {report['pixel_threshold']:.3f} ({report['pixel_threshold_from']})")

# %% [markdown]
# ### Did it go well? Reconstruction error
#
# The pseudo-normal reconstruction G(E(x)) should be about as good on *held-out* normal images as on the training
# images (much worse means that G or E memorised the training set), and worse on abnormal images, where the
# lesion cannot be reconstructed (that difference is what the anomaly map shows).

# %%
parser = ConfigParser()
parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
parser.read_config(str(BUNDLE / "configs" / "inference.json"))
parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(WORK / "data"), "run_dir": str(WORK / "runs")})
parser.update({"settings": SETTINGS})
model_file = parser.get_parsed_content("model_file")  # runs/models/model.pt
detector = load_model_file(parser.get_parsed_content("network_def"), model_file, "calibrate.json").eval()
limit = 48 if SMALL else 200
errors = {}
for name, key, label in (
    ("training (normal)", "training", 0),
    ("held-out normal", "localisation_test", 0),
    ("held-out with lesion", "localisation_test", 1),
):
    split = load_split(DATALIST, key, RESOLUTION)
    images = split["images"][split["labels"] == label][:limit]
    with torch.no_grad():
        reconstruction = detector.reconstruct(images)[1]
    errors[name] = (images - reconstruction).abs().flatten(1).mean(1)
    print(f"{name:<22} mean |x - G(E(x))| = {errors[name].mean():.4f} over {len(images)} images")
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(list(errors.values()), bins=20, label=list(errors), histtype="step", linewidth=1.5)
ax.set(xlabel="mean absolute reconstruction error per image", ylabel="images")
ax.legend(fontsize=8)
show(fig)

# %% [markdown]
# ## 7. Use the model
#
# The calibrated detector is `runs/models/model.pt`. Score files, folders or 3D volumes (slice by slice) with the
# inference config, which writes anomaly maps and label maps on the input grid, `scores.csv` and panels:

# %%
bundle("inference.json", "--input", ABNORMAL_DIR or NORMAL_DIR, "--output_dir", "inference", tail=1)
with open(WORK / "inference" / "scores.csv") as f:
    rows = list(csv.DictReader(f))
print(f"scores.csv: {len(rows)} rows with {list(rows[0])}, e.g.")
for row in rows[:3]:
    print(f"  {Path(row['image']).name:<16} score {float(row['score']):6.2f} label {row['label']}")
print("files:", sorted(p.name for p in (WORK / "inference").iterdir())[:5], "...")

# %% [markdown]
# ## Recap: the commands
#
# ```bash
# python -m monai_hqanogan.data.prepare folder --normal /path/to/normal [--abnormal ...] [--masks ...] --output data
# cd bundles/brain_mri_anomaly_hqanogan
# python -m monai.bundle run --config_file "['configs/common.json','configs/train_generator.json']" \
#     --meta_file configs/metadata.json --dataset_dir /path/to/data [--setting full]
# python -m monai.bundle run --config_file "['configs/common.json','configs/train_encoder.json']" ...
# python -m monai.bundle run --config_file "['configs/common.json','configs/calibrate.json']" ...
# python -m monai.bundle run --config_file "['configs/common.json','configs/evaluate.json']" ...
# tensorboard --logdir runs
# ```
#
# or all of it in one command: `python -m monai_hqanogan.workflows.main_job --bundle_root
# bundles/brain_mri_anomaly_hqanogan --dataset_dir /path/to/data`. The evaluation (next to the trivial baselines)
# and what the scores mean are the subject of notebook 3.
