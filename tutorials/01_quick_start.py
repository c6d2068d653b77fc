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
# # Quick start: detect anomalies with the HQ-AnoGAN bundle
#
# HQ-AnoGAN ([Sato et al., Int J CARS 2023](https://doi.org/10.1007/s11548-023-03031-9)) learns what *normal*
# images look like with a StyleGAN2-ADA generator trained on normal images only. A pSp encoder maps any image into
# the generator's W+ space, the generator turns that code into a **pseudo-normal** version of the image, and the
# differences give an image score and an anomaly map.
#
# This notebook loads the networks of the MONAI bundle `bundles/brain_mri_anomaly_hqanogan` through its own
# configs, detects anomalies on sample images, draws the panels and reads the detection record.
#
# **No trained weights are shipped yet**, so the notebook first trains a *tiny* model with the bundle's training
# configs on synthetic "head" images (bright ellipses, some with a pasted lesion). It takes about 4 minutes on a
# 2-core CPU and shows the workflow, not the method's quality: for real data see notebook 2, for the full setting
# (128 px, hours on a GPU) the bundle's README.
#
# Set `HQANOGAN_TUTORIAL_SMALL=1` to shrink everything further (what CI runs).

# %%
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain text is fine

import csv
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image as PILImage

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images, prepare_image_folder
from monai_hqanogan.transforms import gan_image_transforms
from monai_hqanogan.visualize import plot_detection_panels
from monai_hqanogan.workflows import load_model_file, load_split

SMALL = os.environ.get("HQANOGAN_TUTORIAL_SMALL", "0") == "1"

# sizes: the normal setting takes a few minutes on 2 CPU cores, the small one (CI) well under a minute
RESOLUTION = 16 if SMALL else 32  # model resolution (a power of two)
NUM_NORMAL = 60 if SMALL else 300  # synthetic normal images (about 55 % of them end up in training)
NUM_ABNORMAL = 16 if SMALL else 60  # synthetic images with a lesion (validation and test only)
GENERATOR_KIMG = 0.064 if SMALL else 6.0  # thousands of images shown to the generator
ENCODER_KIMG = 0.064 if SMALL else 3.0  # thousands of images shown to the encoder


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
WORK = Path(os.environ.get("HQANOGAN_TUTORIAL_DIR", BUNDLE.parents[1] / "runs" / "tutorials")) / "01_quick_start"
shutil.rmtree(WORK, ignore_errors=True)  # start afresh: the trainers would otherwise resume an earlier run
DATA, RUNS = WORK / "data", WORK / "runs"


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
# ## 1. Sample images
#
# The bundle reads a *prepared* data set: a folder of PNGs and a `datalist.json` with the splits (training holds
# normal images only) and synthetic-lesion localisation sets with exact masks. `prepare_image_folder` (the Python
# side of `python -m monai_hqanogan.data.prepare folder`, see notebook 2) makes one from folders of images. Here
# the images are synthetic: bright ellipses with a darker core on a black background, and a few with a lesion.


# %%
def save_pngs(images: torch.Tensor, folder: Path, prefix: str) -> None:
    """[N, 1, H, W] images in [-1, 1] -> 8-bit grey PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = ((image[0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        PILImage.fromarray(pixels).save(folder / f"{prefix}{i:04d}.png")


SIZE = 2 * RESOLUTION  # the files are larger than the model; the bundle resizes them
save_pngs(make_ellipse_images(NUM_NORMAL, SIZE, seed=0), DATA / "source" / "normal", "normal_")
lesioned, masks = add_synthetic_lesions(
    make_ellipse_images(NUM_ABNORMAL, SIZE, seed=1), seed=2, radius_range=(0.1, 0.2), contrast_range=(0.5, 1.0)
)
save_pngs(lesioned, DATA / "source" / "abnormal", "lesion_")
save_pngs(masks * 2 - 1, DATA / "source" / "masks", "lesion_")

datalist = prepare_image_folder(
    DATA / "prepared",
    normal_dir=DATA / "source" / "normal",
    abnormal_dir=DATA / "source" / "abnormal",
    mask_dir=DATA / "source" / "masks",
    progress=False,
)
counts = json.loads(datalist.read_text())["info"]["counts"]
print(f"datalist: {rel(datalist)}")
for split, c in counts.items():
    print(f"  {split:<24} {c['normal']:>4} normal {c['abnormal']:>4} abnormal")
show_file(datalist.parent / "preview.png")

# %% [markdown]
# ## 2. Train a tiny model with the bundle's configs
#
# The bundle has one config per step. Every value can be overridden: here the data folder, the output folder and
# the `settings` (sizes of the networks, batch, kimg), which replace the bundle's `demo` setting with a smaller
# one. `ConfigWorkflow` is what `python -m monai.bundle run` uses; each call below equals the command printed
# above it (from the repository root, with `BUNDLE=bundles/brain_mri_anomaly_hqanogan` and `SETTINGS` the dict as
# JSON).

# %%
CONFIGS = BUNDLE / "configs"
SETTINGS = json.loads((CONFIGS / "settings.json").read_text())["demo"]
SETTINGS.update(
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
    sample_epochs=5,
)
OVERRIDES = {"dataset_dir": str(DATA / "prepared"), "run_dir": str(RUNS), "settings": SETTINGS}


def run_bundle(config: str, workflow_type: str, **extra) -> ConfigWorkflow:
    """Run one bundle config with OVERRIDES (and ``extra`` ones), like
    `python -m monai.bundle run --config_file configs/<config> --meta_file configs/metadata.json --KEY VALUE ...`."""
    options = " ".join(f"--{key} {rel(value) if isinstance(value, Path) else value}" for key, value in extra.items())
    print(
        f"python -m monai.bundle run --config_file $BUNDLE/configs/{config} --meta_file $BUNDLE/configs/metadata.json "
        f"--bundle_root $BUNDLE --dataset_dir {rel(DATA / 'prepared')} --run_dir {rel(RUNS)} --settings '<SETTINGS>' "
        f"{options}".rstrip()
    )
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **OVERRIDES,
        **{key: str(value) if isinstance(value, Path) else value for key, value in extra.items()},
    )
    logging.getLogger("ignite.engine.engine").setLevel(logging.WARNING)  # no line per epoch in the notebook
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    print(f"  done in {time.perf_counter() - start:.0f} s")
    return workflow


run_bundle("train_generator.json", "train")  # StyleGAN2-ADA on the normal training images
run_bundle("train_encoder.json", "train")  # pSp encoder into W+, generator and discriminator frozen
run_bundle("calibrate.json", "infer")  # score weights and thresholds on validation data -> models/model.pt
print(sorted(p.name for p in RUNS.iterdir()))

# %% [markdown]
# ## 3. Load the detector through the bundle's inference config
#
# `network_def` of `configs/inference.json` is an `HQAnoGANDetector`: encoder, generator, discriminator and the
# calibrated scorer in one `nn.Module`. Its weights, calibration included, are in `models/model.pt` (for the
# demo and for this run, under the run folder; for the full setting in the bundle's `models/`). The same two lines
# would load shipped weights.

# %%
parser = ConfigParser()
parser.read_meta(str(CONFIGS / "metadata.json"))
parser.read_config(str(CONFIGS / "inference.json"))
parser.update({"bundle_root": str(BUNDLE), **OVERRIDES})
model_file = parser.get_parsed_content("model_file")
detector = load_model_file(parser.get_parsed_content("network_def"), model_file, "calibrate.json").eval()

calibration = detector.calibration
print(f"model file: {rel(model_file)}")
print(f"score = {' + '.join(f'{w:.2f} x {name}' for name, w in calibration.weight_dict().items())} (z-scores)")
print(f"image threshold {float(calibration.image_threshold):.3f}")
print(f"pixel threshold {float(calibration.pixel_threshold):.3f}")

# %% [markdown]
# ## 4. Detect anomalies and read the record
#
# `detector.detect(images)` takes a batch `[B, 1, R, R]` in [-1, 1] (what `gan_image_transforms(R)` makes of any
# image file) and returns the record, in anomalib's vocabulary:
#
# | key | what |
# |---|---|
# | `pred_score` | the calibrated image score (higher = more anomalous) |
# | `pred_label` | `pred_score >= image_threshold` |
# | `anomaly_map` | per-pixel anomaly, `[B, 1, R, R]` |
# | `pred_mask` | `anomaly_map >= pixel_threshold` |
# | `reconstruction` | the pseudo-normal image G(E(x)) |
# | `components` | every raw candidate score (see notebook 3) |
#
# The sample images are the first normal and lesioned images of the synthetic-lesion test set, whose masks are known.

# %%
loc = load_split(datalist, "localisation_test", RESOLUTION, with_masks=True)
pick = torch.cat([torch.nonzero(loc["labels"] == 0)[:2, 0], torch.nonzero(loc["labels"] == 1)[:3, 0]])
images, true_masks = loc["images"][pick], loc["masks"][pick]
record = detector.detect(images)

print("record keys:", sorted(record))
for key, value in record.items():
    if isinstance(value, torch.Tensor):
        print(f"  {key:<15} {str(tuple(value.shape)):<18} {value.dtype}")
for i, index in enumerate(pick.tolist()):
    print(
        f"{loc['names'][index]:<28} truth {'lesion' if loc['labels'][index] else 'normal':<7} "
        f"score {float(record['pred_score'][i]):6.2f} -> {'anomalous' if record['pred_label'][i] else 'normal':<9} "
        f"mask pixels {int(record['pred_mask'][i].sum()):>4}"
    )

# %% [markdown]
# The panels show, per image: the input, its pseudo-normal reconstruction, the residual heat map, and the overlay
# with the predicted region (red) and, when known, the true lesion (green, dashed). MONAI reads PNG files as
# (width, height) arrays, so the tensors are transposed back for display.


# %%
def shown(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


show(
    plot_detection_panels(
        shown(images),
        shown(record["reconstruction"]),
        shown(record["anomaly_map"]),
        pred_masks=shown(record["pred_mask"]),
        gt_masks=shown(true_masks),
        scores=record["pred_score"],
        threshold=record["image_threshold"],
        titles=[loc["names"][i] for i in pick.tolist()],
    )
)

# %% [markdown]
# What to look at: the pseudo-normal image should look like the input without its lesion, and the red region should
# sit on the green one. A model this small also leaves residuals along edges and on normal images, which is why
# thresholds are calibrated rather than fixed. When a lesion is the brightest part of an image, the preprocessing's
# per-image intensity scaling (minimum to -1, 99.5th percentile to 1) darkens the rest of the head, so the whole
# head differs from its pseudo-normal: a global change that any detector of this kind picks up (notebook 3 is about
# such effects).
#
# ## 5. Any image file, and the bundle's inference command
#
# For one file, the bundle's preprocessing is `gan_image_transforms`: load, one channel, intensities to [-1, 1],
# longest side to the model resolution, pad to a square.

# %%
one_file = sorted((DATA / "source" / "abnormal").glob("*.png"))[0]
image = gan_image_transforms(RESOLUTION)({"image": str(one_file)})["image"]
one = detector.detect(image.unsqueeze(0))  # a batch of one
print(f"{one_file.name}: score {float(one['pred_score'][0]):.2f}, anomalous: {bool(one['pred_label'][0])}")

# %% [markdown]
# `configs/inference.json` does this for a file, a folder, a 3D volume (slice by slice) or a datalist split, maps
# the anomaly map back onto the input grid and writes NIfTI (or PNG) maps, label maps, `scores.csv` and panels:
#
# ```bash
# cd bundles/brain_mri_anomaly_hqanogan
# python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \
#     --input /path/to/images_or_volume.nii.gz --output_dir out/
# ```

# %%
out_dir = WORK / "inference"
run_bundle("inference.json", "infer", input=DATA / "source" / "abnormal", output_dir=out_dir, output_ext=".png")
with open(out_dir / "scores.csv") as f:
    rows = list(csv.DictReader(f))
print(f"{len(rows)} files scored; the first rows of scores.csv:")
for row in rows[:4]:
    print(f"  {Path(row['image']).name:<16} score {float(row['score']):6.2f} label {row['label']}")
print(sorted(p.name for p in out_dir.iterdir())[:6], "...")
show_file(sorted((out_dir / "panels").glob("*.png"))[0])

# %% [markdown]
# ## Next
#
# - `02_train_on_your_images`: your own folder of normal images -> datalist -> generator -> encoder -> calibration,
#   with TensorBoard, and how to tell that training went well.
# - `03_anomaly_scores`: the score components, the calibrated combination, ROC curves, trivial baselines, and what
#   a shortcut looks like on Br35H.
# - The real model: `python -m monai_hqanogan.workflows.main_job --bundle_root bundles/brain_mri_anomaly_hqanogan
#   --setting full` on a GPU (see the bundle's README).
