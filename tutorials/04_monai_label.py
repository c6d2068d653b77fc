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
# # MONAI Label: serve the anomaly detector and fetch a label for a volume
#
# [MONAI Label](https://docs.monai.io/projects/label) is a server that hands AI labels to viewers such as 3D Slicer
# and OHIF. `monai_hqanogan/apps/monailabel` is a MONAI Label app that serves the HQ-AnoGAN bundle
# (`bundles/brain_mri_anomaly_hqanogan`) as one model, `hqanogan_anomaly`:
#
# - the **label** `anomaly` (value 1) marks the voxels whose anomaly heat map reaches the calibrated pixel threshold,
#   on the input's own grid and with its affine (2D images, and 3D volumes slice by slice);
# - the continuous **heat map** is saved next to the studies as NIfTI, and the result JSON carries the image score and
#   decision.
#
# This notebook trains a tiny model with the bundle's own steps, writes a small NIfTI volume with a lesion, starts a
# real MONAI Label server on it, asks for a label over HTTP, looks at the label and the heat map, changes the pixel
# threshold per request, and stops the server. Then it shows the same in 3D Slicer.
#
# **Run it in MONAI Label's environment.** MONAI Label 0.8.5 imports torchvision, which does not import next to
# this project's torch 2.13, so it lives in an environment of its own (from the repository root):
#
# ```bash
# python -m venv .monailabel && source .monailabel/bin/activate
# pip install torch==2.14.1 torchvision==0.29.1
# pip install --no-deps monailabel==0.8.5        # its own requirements pull sam2 and other pins
# pip install -e ".[monailabel,dev]"             # what the server imports, plus Jupyter and jupytext
# jupyter lab tutorials/04_monai_label.ipynb     # pip install jupyterlab if needed
# ```
#
# The model is tiny and trained on synthetic "heads" (bright ellipses) for a few minutes on a CPU: the notebook
# shows the plumbing (files, grids, thresholds, HTTP), not the method's quality. Set `HQANOGAN_TUTORIAL_SMALL=1` to
# shrink everything further (what CI runs).

# %%
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain text is fine
# MONAI Label brings pydicom, and MONAI then says at every image reader it builds that the optional GPU DICOM decoder
# (nvImageCodec) is missing: harmless here (no DICOM), and silenced
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")

import atexit
import email.parser
import email.policy
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch
from IPython.display import Image, display
from PIL import Image as PILImage

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images, prepare_image_folder

logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
if importlib.util.find_spec("monailabel") is None:
    raise ModuleNotFoundError(
        "monailabel is not installed in this kernel's environment. Install it in its own environment (see the first "
        "cell): pip install torch==2.14.1 torchvision==0.29.1; pip install --no-deps monailabel==0.8.5; "
        'pip install -e ".[monailabel,dev]"'
    )

SMALL = os.environ.get("HQANOGAN_TUTORIAL_SMALL", "0") == "1"

# sizes: the normal setting takes a few minutes on 2 CPU cores, the small one (CI) about a minute
RESOLUTION = 16 if SMALL else 32  # model resolution (a power of two)
NUM_NORMAL = 60 if SMALL else 300  # synthetic normal images for training and calibration
GENERATOR_KIMG = 0.064 if SMALL else 6.0  # thousands of images shown to the generator
ENCODER_KIMG = 0.064 if SMALL else 3.0  # thousands of images shown to the encoder
VOLUME_SIZE, VOLUME_SLICES = (24, 5) if SMALL else (64, 7)  # the NIfTI volume sent to the server


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
REPO = BUNDLE.parents[1]
WORK = Path(os.environ.get("HQANOGAN_TUTORIAL_DIR", REPO / "runs" / "tutorials")) / "04_monai_label"
shutil.rmtree(WORK, ignore_errors=True)  # start afresh: the trainers would otherwise resume an earlier run
DATA, RUNS, STUDIES = WORK / "data", WORK / "runs", WORK / "studies"


def show(fig, dpi: int = 72) -> None:
    """Display a matplotlib figure as a PNG (works whatever matplotlib backend is active) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buffer.getvalue()))


def rel(path: str | Path) -> str:
    """``path`` relative to the repository, for shorter printouts."""
    return os.path.relpath(path, REPO)


import monailabel  # noqa: E402  (checked above, with the install hint)

print(f"small setting: {SMALL}; bundle: {rel(BUNDLE)}; outputs: {rel(WORK)}")
print(f"monailabel {monailabel.__version__}, torch {torch.__version__}, python {sys.executable}")

# %% [markdown]
# ## 1. Weights for the server
#
# The server needs a `model.pt` that the bundle's calibration step wrote (networks and calibration in one file). No
# trained weights are shipped yet, so the notebook makes some: synthetic normal images -> a prepared data set
# (`prepare_image_folder`, the Python side of `python -m monai_hqanogan.data.prepare folder`) -> the bundle's main
# job with three of its steps (generator, encoder, calibration), at a size given by `SETTINGS`. Notebooks 1 and 2
# show these steps one by one. The same run from a shell:
#
# ```bash
# python -m monai_hqanogan.workflows.main_job --bundle_root bundles/brain_mri_anomaly_hqanogan \
#     --dataset_dir <prepared folder> --stages train_generator train_encoder calibrate --run_dir <runs> \
#     --settings '<SETTINGS as JSON>'
# ```


# %%
def save_pngs(images: torch.Tensor, folder: Path, prefix: str) -> None:
    """[N, 1, H, W] images in [-1, 1] -> 8-bit grey PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = ((image[0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        PILImage.fromarray(pixels).save(folder / f"{prefix}{i:04d}.png")


save_pngs(make_ellipse_images(NUM_NORMAL, 2 * RESOLUTION, seed=0), DATA / "source" / "normal", "normal_")
datalist = prepare_image_folder(DATA / "prepared", normal_dir=DATA / "source" / "normal", progress=False)

SETTINGS = json.loads((BUNDLE / "configs" / "settings.json").read_text())["demo"]
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
command = [
    sys.executable, "-m", "monai_hqanogan.workflows.main_job", "--bundle_root", str(BUNDLE),
    "--dataset_dir", str(DATA / "prepared"), "--stages", "train_generator", "train_encoder", "calibrate",
    "--run_dir", str(RUNS), "--settings", json.dumps(SETTINGS),
]  # fmt: skip
start = time.perf_counter()
with open(WORK / "main_job.log", "w") as log:  # the steps' own output goes to a file, not into the notebook
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
if done.returncode != 0:
    raise RuntimeError(f"the main job failed; the end of {WORK / 'main_job.log'}:\n"
                       f"{(WORK / 'main_job.log').read_text()[-3000:]}")  # fmt: skip
MODEL = RUNS / "models" / "model.pt"
print(f"trained and calibrated in {time.perf_counter() - start:.0f} s: {rel(MODEL)}")
seconds = json.loads((RUNS / "main_job.json").read_text())["seconds"]
print({stage: round(seconds[stage]) for stage in ("train_generator", "train_encoder", "calibrate")}, "(seconds)")

# %% [markdown]
# ## 2. A study: one NIfTI volume with a lesion
#
# MONAI Label serves the images of a *studies* folder (local files, or a DICOMweb server); an image's id is its file
# name without the extension. This one holds a stack of synthetic slices (`VOLUME_SIZE` pixels square, larger than
# the model: the bundle resizes each slice and maps the result back) with a darker lesion pasted into the middle
# slices, and a non-identity affine (0.9 x 0.9 x 2.5 mm voxels, shifted origin) that the label must keep. The true
# lesion mask is kept aside, to compare. (A lesion brighter than these already bright heads would become its
# slice's brightest part and change that slice's intensity scaling, as in training, which darkens the rest of that
# head: notebook 1 shows that effect.)

# %%
heads = make_ellipse_images(VOLUME_SLICES, VOLUME_SIZE, seed=7)  # [D, 1, S, S] in [-1, 1]
middle = list(range(VOLUME_SLICES // 2 - 1, VOLUME_SLICES // 2 + 2))  # three slices get a lesion
lesioned, lesion_masks = add_synthetic_lesions(
    heads[middle], seed=3, radius_range=(0.12, 0.2), contrast_range=(0.5, 0.8), polarity="darker"
)
volume = heads.clone()
volume[middle] = lesioned
truth = torch.zeros_like(volume, dtype=torch.bool)
truth[middle] = lesion_masks.bool()


def to_nifti(t: torch.Tensor) -> np.ndarray:
    """[D, 1, H, W] slices -> an [H, W, D] array, the usual layout of a NIfTI volume."""
    return t[:, 0].permute(1, 2, 0).numpy()


voxels = ((to_nifti(volume) + 1) * 127.5).astype(np.float32)
affine = np.diag([0.9, 0.9, 2.5, 1.0])
affine[:3, 3] = [-30.0, 20.0, -5.0]
STUDIES.mkdir(parents=True)
nib.save(nib.Nifti1Image(voxels, affine), str(STUDIES / "head_volume.nii.gz"))
true_mask = to_nifti(truth)
print(f"studies: {sorted(p.name for p in STUDIES.iterdir())}; shape {voxels.shape}, lesion in slices {middle}")
print(f"true lesion voxels: {int(true_mask.sum())}")

fig, axes = plt.subplots(1, VOLUME_SLICES, figsize=(1.6 * VOLUME_SLICES, 1.9))
for k, ax in enumerate(axes):
    ax.imshow(voxels[:, :, k], cmap="gray")
    if true_mask[:, :, k].any():
        ax.contour(true_mask[:, :, k], levels=[0.5], colors="lime", linewidths=1, linestyles="--")
    ax.set_title(f"slice {k}", fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("head_volume.nii.gz (true lesion: green, dashed)", fontsize=10)
show(fig)

# %% [markdown]
# ## 3. Start the server
#
# `monailabel start_server` with the app folder, the studies and the bundle's configuration (`--conf` pairs): the
# bundle folder, the weights, and the settings they were trained with (the default is the bundle's `demo` setting;
# these tiny weights need `SETTINGS`). The cell runs what the `monailabel` command runs, `python -m monailabel.main`,
# with this kernel's interpreter, in the background, and waits until `/info/` answers.
#
# MONAI Label writes `logs/`, `model/`, `bin/` and `lib/` into its app folder, so it gets a copy of the app's
# `main.py` (an installed package's folder may be read-only, and the repository stays clean).

# %%
if "stop_server" in globals():  # this cell ran before in this kernel: stop that server first
    stop_server()  # noqa: F821 (defined below, on the first run)
APP = WORK / "app"
shutil.rmtree(APP, ignore_errors=True)
APP.mkdir()
shutil.copy(REPO / "monai_hqanogan" / "apps" / "monailabel" / "main.py", APP)
with socket.socket() as s:  # a free port on this machine
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
URL = f"http://127.0.0.1:{PORT}"

command = [
    sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", str(STUDIES),
    "--host", "127.0.0.1", "--port", str(PORT),
    "--conf", "bundle", str(BUNDLE), "--conf", "model", str(MODEL), "--conf", "settings", json.dumps(SETTINGS),
]  # fmt: skip
print("monailabel start_server --app", rel(APP), "--studies", rel(STUDIES), "--port", PORT, "\\")
print(f"    --conf bundle {rel(BUNDLE)} --conf model {rel(MODEL)} --conf settings '<SETTINGS as JSON>'")

# no training tasks and no background scoring: this app only infers
environment = {**os.environ, "MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
server_log = open(WORK / "server.log", "w")
server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def stop_server() -> None:
    """Stop the server and its worker processes (its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


atexit.register(stop_server)  # also when the kernel stops before the last cell


def get_json(path: str) -> dict:
    with urllib.request.urlopen(URL + path, timeout=10) as response:
        return json.loads(response.read())


start, info = time.perf_counter(), None
while info is None:
    if server.poll() is not None:
        raise RuntimeError(f"the server stopped (code {server.returncode}):\n{(WORK / 'server.log').read_text()}")
    if time.perf_counter() - start > 180:
        stop_server()
        raise TimeoutError(f"no answer from {URL} in 3 minutes:\n{(WORK / 'server.log').read_text()[-3000:]}")
    try:
        info = get_json("/info/")
    except OSError:
        time.sleep(1)
print(f"server up at {URL} after {time.perf_counter() - start:.0f} s")

# %% [markdown]
# `/info/` describes the app: its models, their labels and configuration. A viewer reads it to fill its model list.

# %%
model_info = info["models"]["hqanogan_anomaly"]
print("/info/ models:", sorted(info["models"]))
print("labels:", info["labels"])
print("model type:", model_info["type"], "| dimension:", model_info["dimension"])
print("config:", model_info["config"])
print("description:", model_info["description"])
print("studies:", sorted(get_json("/datastore/?output=all")["objects"]))

# %% [markdown]
# ## 4. Ask for a label
#
# `POST /infer/hqanogan_anomaly?image=<id>` runs the bundle's inference on that image: its preprocessing, the
# detector slice by slice, and the heat map resized back onto the input grid. With `output=all` the answer is a
# multipart message with the label file (NIfTI, same grid and affine as the input) and the result JSON; with
# `output=image` only the label file, which is what `curl` would save:
#
# ```bash
# curl -s -X POST "http://127.0.0.1:8000/infer/hqanogan_anomaly?image=head_volume&output=image" -o label.nii.gz
# ```
#
# MONAI Label's own Python client, `monailabel.client.MONAILabelClient(URL).infer(model, image_id, params)`, sends
# the same request; it imports the `cgi` module, which Python 3.13 removed, so the cell below speaks HTTP with the
# standard library instead (`urllib` for the request, `email` for the multipart answer).


# %%
def infer(image: str, params: dict | None = None) -> tuple[nib.Nifti1Image, dict]:
    """POST /infer/hqanogan_anomaly?image=<image>&output=all with the form field ``params`` (JSON) -> (the label as a
    NIfTI image, the result JSON)."""
    request = urllib.request.Request(
        f"{URL}/infer/hqanogan_anomaly?image={image}&output=all",
        data=urllib.parse.urlencode({"params": json.dumps(params or {})}).encode(),  # a form field named params
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.read())
    result, label_file = None, WORK / f"{image}_label.nii.gz"
    for part in message.iter_parts():
        if part.get_content_type() == "application/json":
            result = json.loads(part.get_content())
        else:
            label_file.write_bytes(part.get_payload(decode=True))
    return nib.load(str(label_file)), result


start = time.perf_counter()
label_image, result = infer("head_volume")
label = np.asarray(label_image.dataobj)
print(f"answer in {time.perf_counter() - start:.1f} s")
print("result JSON:", json.dumps(result, indent=1))
print(f"label shape {label.shape} (input {voxels.shape}); values {sorted(np.unique(label).tolist())}")
print("label affine matches the input:", bool(np.allclose(label_image.affine, affine, atol=1e-4)))

# %% [markdown]
# The result JSON says whether the image as a whole is anomalous (`anomaly_score` against the calibrated
# `image_threshold`), which pixel threshold made the label, how many voxels it marks, and where the heat map went.
# The heat map has the input's grid and affine too. Below, per slice: the input, the heat map, and the label (red)
# with the true lesion (green, dashed). The images are shown as rows x columns of the NIfTI array.

# %%
heat_image = nib.load(result["heatmap"])
heat = np.asarray(heat_image.dataobj)
print(f"heat map: {rel(result['heatmap'])}, shape {heat.shape}")
print("heat map affine matches the input:", bool(np.allclose(heat_image.affine, affine, atol=1e-4)))
inside, outside = heat[true_mask].mean(), heat[~true_mask & (voxels > 10)].mean()
print(f"mean heat inside the lesion {inside:.3f}, elsewhere in the heads {outside:.3f}")
labelled = label.astype(bool)
print(f"labelled voxels inside the lesion {int((labelled & true_mask).sum())} of {int(true_mask.sum())}, outside "
      f"{int((labelled & ~true_mask).sum())}")  # fmt: skip


def draw_slices(label: np.ndarray, title: str) -> None:
    fig, axes = plt.subplots(3, VOLUME_SLICES, figsize=(1.6 * VOLUME_SLICES, 5.2), squeeze=False)
    vmax = float(np.percentile(heat, 99.5))
    for k in range(VOLUME_SLICES):
        axes[0, k].imshow(voxels[:, :, k], cmap="gray")
        axes[0, k].set_title(f"slice {k}" + (" (lesion)" if k in middle else ""), fontsize=8)
        axes[1, k].imshow(heat[:, :, k], cmap="inferno", vmin=0, vmax=vmax)
        axes[2, k].imshow(voxels[:, :, k], cmap="gray")
        if label[:, :, k].any():
            axes[2, k].contour(label[:, :, k], levels=[0.5], colors="red", linewidths=1)
        if true_mask[:, :, k].any():
            axes[2, k].contour(true_mask[:, :, k], levels=[0.5], colors="lime", linewidths=1, linestyles="--")
    for row, name in enumerate(("input", "heat map", "label / truth")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    show(fig)


draw_slices(label, f"pixel threshold {result['pixel_threshold']:.3f} (calibrated)")

# %% [markdown]
# What to look at: the label sits where the heat map is high, on the grid of the input. With this tiny model it
# covers part of the lesion and also some head edges, where its pseudo-normal images are least accurate: the false
# positives that longer training (the bundle's `demo` and `full` settings) reduces.

# %% [markdown]
# ## 5. A different pixel threshold per request
#
# The calibrated pixel threshold is a starting point. MONAI Label reads a request's options from its form field
# `params` (JSON, merged over the model's `config` of `/info/`), so a request may carry its own `pixel_threshold` (in
# heat map units): lower marks more voxels, higher fewer. The image score and the heat map do not change. From a
# shell:
#
# ```bash
# curl -s -X POST "http://127.0.0.1:8000/infer/hqanogan_anomaly?image=head_volume&output=image" \
#     -F 'params={"pixel_threshold": 1.5}' -o label.nii.gz
# ```

# %%
calibrated = result["pixel_threshold"]
labels = {}
for factor in (0.5, 1.0, 2.0):
    other_image, other = infer("head_volume", {"pixel_threshold": calibrated * factor})
    labels[factor] = np.asarray(other_image.dataobj)
    print(
        f"pixel_threshold {other['pixel_threshold']:.3f} ({factor:.1f} x calibrated): "
        f"{other['anomalous_voxels']:>5} voxels labelled, image score {other['anomaly_score']:.3f}"
    )
draw_slices(labels[0.5], f"pixel threshold {calibrated * 0.5:.3f} (half the calibrated one)")

# %% [markdown]
# ## 6. In 3D Slicer
#
# With the server running on a folder of your studies (for example `--studies /path/to/nifti_volumes`, and the host
# `0.0.0.0` to reach it from another machine); these steps follow MONAI Label's documentation of its Slicer plugin
# (the tests drive the server over HTTP, not Slicer):
#
# 1. install the *MONAILabel* extension (Extensions Manager), restart Slicer and open the *MONAI Label* module;
# 2. enter the server address (`http://127.0.0.1:8000` by default) and press the refresh button: the model
#    `hqanogan_anomaly` and the label `anomaly` appear;
# 3. *Next Sample* loads a study; under *Auto Segmentation* pick `hqanogan_anomaly` and press *Run*: the `anomaly`
#    segment appears over the volume;
# 4. for the heat map, load the file the result JSON names under `heatmap`
#    (`<studies>/anomaly_heatmaps/<image id, made safe>-<12 hex digits>.nii.gz`, one per image) with *Add Data*
#    and show it as the foreground volume with a colour lookup table.
#
# OHIF connects the same way for DICOM studies, through MONAI Label's DICOMweb support (not tried here: this app
# is tested with NIfTI volumes and PNG images only).
#
# ## 7. Stop the server

# %%
stop_server()
server_log.close()
print("server stopped:", server.poll() is not None)
print("app folder after the run:", sorted(p.name for p in APP.iterdir()))

# %% [markdown]
# Next: run the bundle's `full` setting on a GPU for weights worth serving (see
# `bundles/brain_mri_anomaly_hqanogan/docs/README.md`), and give the server those weights with
# `--conf model <path> --conf setting full`.
