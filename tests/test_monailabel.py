"""The bundle served by MONAI Label. A real server: ``monailabel start_server`` with the app in
``monai_hqanogan/apps/monailabel``, two NIfTI volumes (one with a pasted lesion), tiny weights trained by the bundle;
``/info/`` and ``/infer/<model>`` over HTTP on a loopback port. And MONAI Label's stock ``BundleInferTask`` (what its
``monaibundle`` app builds for every bundle) on a copy of the bundle folder. Skipped where monailabel does not
import."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("HQANOGAN_REQUIRE_MONAILABEL") == "1" and importlib.util.find_spec("monailabel") is None:
    raise ImportError("HQANOGAN_REQUIRE_MONAILABEL=1 but monailabel does not import: CI must not skip these tests.")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monailabel") is None,
    reason="monailabel is not installed (its own environment: see the bundle README, 'MONAI Label')",
)

from monai_hqanogan.data import make_ellipse_images  # noqa: E402
from monai_hqanogan.workflows.main_job import run_main_job  # noqa: E402
from tests.bundle_utils import (  # noqa: E402
    BUNDLE,
    TINY_SETTINGS,
    make_tiny_dataset,
    run_tiny_inference,
    tiny_model_runs,
)

MODEL = "hqanogan_anomaly"
SLICES, SIZE = 3, 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _volumes(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """``clean.nii.gz`` and ``lesion.nii.gz``: the same ellipse slices, the second with a bright disc (radius 4 px)
    pasted inside the head of its middle slice; a non-identity affine. Returns the two paths and the disc's mask."""
    import nibabel as nib

    base = make_ellipse_images(SLICES, SIZE, seed=0, inner=True)  # [D, 1, S, S] in [-1, 1]
    clean = ((base[:, 0].permute(1, 2, 0).numpy() + 1) * 100).astype(np.float32)  # [H, W, D], 0..200
    rows, cols = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((SIZE, SIZE, SLICES), dtype=bool)
    mask[:, :, 1] = (rows - SIZE / 2 + 0.5) ** 2 + (cols - SIZE / 2 + 0.5) ** 2 <= 16
    lesioned = clean.copy()
    lesioned[mask] = 255.0
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    folder.mkdir(parents=True, exist_ok=True)
    # a 2D image too: the lesioned middle slice, not square, as an 8-bit PNG (rows x columns = 20 x 14)
    from PIL import Image

    Image.fromarray(lesioned[:, 3:17, 1].clip(0, 255).astype(np.uint8)).save(folder / "slice2d.png")
    paths = folder / "clean.nii.gz", folder / "lesion.nii.gz"
    for path, volume in zip(paths, (clean, lesioned)):
        nib.save(nib.Nifti1Image(volume, affine), str(path))
    return paths[0], paths[1], mask


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Tiny weights from the bundle's own steps, a studies folder, and a running server (stopped at the end)."""
    root = tmp_path_factory.mktemp("monailabel")
    make_tiny_dataset(root / "data")
    overrides = ["--settings", json.dumps(TINY_SETTINGS)]
    run_main_job(BUNDLE, dataset_dir=root / "data", stages=["train_generator", "train_encoder", "calibrate"],
                 overrides=overrides, run_dir=root / "runs")  # fmt: skip
    model = root / "runs" / "models" / "model.pt"
    clean, sick, mask = _volumes(root / "studies")
    # MONAI Label writes logs/, model/, bin/ and lib/ into its app folder: serve a copy of the app's main.py
    app = root / "app"
    app.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "monai_hqanogan" / "apps" / "monailabel" / "main.py", app)
    conf = ["--conf", "bundle", str(BUNDLE), "--conf", "model", str(model)]
    conf += ["--conf", "settings", json.dumps(TINY_SETTINGS)]
    with _server(app, root / "studies", conf, root / "server.log") as (url, info):
        yield {"url": url, "info": info, "clean": clean, "sick": sick, "mask": mask, "root": root}


@contextlib.contextmanager
def _server(app: Path, studies: Path, conf: list[str], log_path: Path) -> Iterator[tuple[str, dict]]:
    """``monailabel start_server --app <app> --studies <studies> <conf>`` on a free loopback port: ``(its URL, its
    /info/ answer)`` once it answers; stopped with its workers at the end, whatever happened."""
    port = _free_port()
    # what the `monailabel` script runs, with this interpreter (the script calls whatever `python` is first on PATH)
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port), *conf,
    ]  # fmt: skip
    env = {**os.environ, "MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    log = open(log_path, "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server stopped (code {server.returncode}):\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"no answer from {url}:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(1)
        yield url, info
    finally:  # stop the server and its workers whatever happened
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _infer(
    url: str, image: str, out: Path, params: dict | None = None, model: str = MODEL
) -> tuple[np.ndarray, np.ndarray, dict]:
    """POST /infer/<model>?image=<id>&output=all with the request options in the form field ``params`` (where
    MONAI Label reads them): the label file (read with nibabel) and the result JSON (multipart answer)."""
    import nibabel as nib

    form = urllib.parse.urlencode({"params": json.dumps({"device": "cpu", **(params or {})})}).encode()
    request = urllib.request.Request(f"{url}/infer/{model}?image={image}&output=all", data=form, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.read())
    result, label_bytes = None, None
    for part in message.iter_parts():  # the standard library's MIME parser: binary parts come back byte for byte
        if part.get_content_type() == "application/json":
            result = json.loads(part.get_content())
        else:
            label_bytes = part.get_payload(decode=True)
    out.write_bytes(label_bytes)
    img = nib.load(str(out))
    return np.asarray(img.dataobj), img.affine, result


def test_info_lists_the_model_and_its_label(served):
    info = served["info"]
    assert MODEL in info["models"], info["models"].keys()
    assert info["models"][MODEL]["labels"] == {"anomaly": 1}
    assert info["models"][MODEL]["config"]["pixel_threshold"] == "calibrated"
    assert info["labels"] == {"anomaly": 1}


def test_infer_returns_a_label_on_the_input_grid_that_marks_the_lesion(served, tmp_path):
    import nibabel as nib

    expected_affine = nib.load(str(served["sick"])).affine
    sick, affine, result = _infer(served["url"], "lesion", tmp_path / "lesion_label.nii.gz")
    clean, _, clean_result = _infer(served["url"], "clean", tmp_path / "clean_label.nii.gz")
    assert sick.shape == (SIZE, SIZE, SLICES) and clean.shape == (SIZE, SIZE, SLICES)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    assert set(np.unique(sick)) <= {0, 1}
    mask = served["mask"]
    heat = Path(result["heatmap"])
    assert heat.is_file() and heat.parent == served["root"] / "studies" / "anomaly_heatmaps"
    heat_img = nib.load(str(heat))
    assert heat_img.shape == (SIZE, SIZE, SLICES)
    np.testing.assert_allclose(heat_img.affine, expected_affine, atol=1e-4)
    clean_heat = np.asarray(nib.load(clean_result["heatmap"]).dataobj)
    sick_heat = np.asarray(heat_img.dataobj)
    # the pasted lesion is hotter than the same voxels of the clean volume, and more of it is labelled
    assert sick_heat[mask].mean() > clean_heat[mask].mean(), (sick_heat[mask].mean(), clean_heat[mask].mean())
    assert sick[mask].sum() > clean[mask].sum(), (sick[mask].sum(), clean[mask].sum())
    # one intensity rule per slice: the lesion raises its own slice's score and leaves the others as they were, so
    # the volume's score (the highest slice score) cannot fall
    assert result["slice_scores"][1] > clean_result["slice_scores"][1], (result, clean_result)
    assert result["slice_scores"][::2] == pytest.approx(clean_result["slice_scores"][::2], rel=1e-5, abs=1e-6)
    assert result["anomaly_score"] == pytest.approx(max(result["slice_scores"]))
    assert result["slice_scores"][result["top_slice"]] == pytest.approx(result["anomaly_score"])
    assert result["anomaly_score"] >= clean_result["anomaly_score"]


def test_infer_on_a_2d_image_returns_a_label_of_its_size(served, tmp_path):
    from PIL import Image

    request = urllib.request.Request(f"{served['url']}/infer/{MODEL}?image=slice2d&output=image", method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        (tmp_path / "label.png").write_bytes(response.read())
    label = np.asarray(Image.open(tmp_path / "label.png"))
    assert label.shape == (SIZE, 14)  # rows x columns of the input PNG
    assert set(np.unique(label)) <= {0, 1}
    disc = served["mask"][:, 3:17, 1]
    assert label[disc].sum() > 0  # the bright disc is marked where it is in the image (not transposed)


def test_a_request_sets_its_own_pixel_threshold(served, tmp_path):
    """The request's ``pixel_threshold`` replaces the calibrated one: lower labels more voxels, higher fewer; the image
    score does not change. (Options sent any other way, e.g. as a JSON body, never reach the task.)"""
    _, _, calibrated = _infer(served["url"], "lesion", tmp_path / "calibrated.nii.gz")
    level = calibrated["pixel_threshold"]
    low, _, low_result = _infer(served["url"], "lesion", tmp_path / "low.nii.gz", {"pixel_threshold": level / 2})
    high, _, high_result = _infer(served["url"], "lesion", tmp_path / "high.nii.gz", {"pixel_threshold": level * 2})
    assert low_result["pixel_threshold"] == pytest.approx(level / 2)
    assert high_result["pixel_threshold"] == pytest.approx(level * 2)
    assert low.sum() == low_result["anomalous_voxels"] > calibrated["anomalous_voxels"] > high.sum()
    assert low_result["anomaly_score"] == pytest.approx(calibrated["anomaly_score"])


# ------------------------------------------------------------------ MONAI Label's stock bundle app and task
STOCK_MODEL = "brain_mri_anomaly_hqanogan"


@pytest.fixture(scope="module")
def stock_task(tmp_path_factory):
    """MONAI Label's ``monaibundle`` sample app as ``monailabel apps --download`` gives it, a copy of the bundle folder
    without data or runs in its model folder (``<app>/model/<name>``, where the app looks for bundles), and MONAI
    Label's own ``BundleInferTask`` (the installed package's, which that app builds for every bundle) on it. The copy
    has tiny calibrated weights as ``models/model.pt`` and the tiny networks as the shipped setting's entry of
    ``settings.json``: the stock task runs ``inference.json`` with its defaults."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    from monai_hqanogan.workflows import SHIPPED_SETTING

    root = tmp_path_factory.mktemp("stock")
    download = [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle"]
    subprocess.run([*download, "--output", str(root)], check=True, capture_output=True, timeout=120)
    bundle = root / "monaibundle" / "model" / STOCK_MODEL
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("data", "runs", "models"))
    runs = tiny_model_runs(root / "runs")
    (bundle / "models").mkdir()
    shutil.copy(runs / "models" / "model.pt", bundle / "models" / "model.pt")
    (bundle / "configs" / "settings.json").write_text(json.dumps({SHIPPED_SETTING: TINY_SETTINGS}))
    clean, sick, mask = _volumes(root / "studies")
    task = BundleInferTask(str(bundle), {})
    return {"task": task, "bundle": bundle, "runs": runs, "studies": root / "studies", "sick": sick, "root": root}


def _bundle_scores(stock, source: Path) -> dict:
    """The bundle's own inference run (``inference.json`` through ConfigWorkflow) on ``source``: its scores.json."""
    out = stock["root"] / f"own_{source.name.split('.')[0]}"
    run_tiny_inference(stock["runs"], source, out)
    return json.loads((out / "scores.json").read_text())


def _same_score_as_the_bundle_run(result: dict, scores: dict) -> None:
    (row,) = scores["rows"]
    assert result["anomaly_score"] == pytest.approx(row["score"], rel=1e-5, abs=1e-6)
    assert result["anomalous"] is bool(row["label"]) and result["image_threshold"] == pytest.approx(row["threshold"])
    assert result["pixel_threshold"] == result["calibrated_pixel_threshold"] == pytest.approx(scores["pixel_threshold"])


def test_the_stock_bundle_task_loads_the_bundle_with_its_label(stock_task):
    task = stock_task["task"]
    assert task.is_valid()
    info = task.info()
    assert info["labels"] == {"anomaly": 1}  # the metadata's channel_def of pred, background left out
    assert info["config"]["pixel_threshold"] == "calibrated" and info["config"]["save_heatmap"] is True


def test_the_stock_bundle_task_labels_a_nifti_volume_and_returns_its_score(stock_task):
    import nibabel as nib

    task, sick = stock_task["task"], stock_task["sick"]
    label_file, result = task({"image": str(sick), "device": "cpu"})
    image, written = nib.load(str(sick)), nib.load(label_file)
    label = np.asarray(written.dataobj)
    assert label.shape == (SIZE, SIZE, SLICES) and np.issubdtype(label.dtype, np.integer)
    assert set(np.unique(label)) <= {0, 1}
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-4)
    _same_score_as_the_bundle_run(result, _bundle_scores(stock_task, sick))
    assert len(result["slice_scores"]) == SLICES
    assert result["anomaly_score"] == pytest.approx(max(result["slice_scores"]))
    heat = Path(result["heatmap"])
    assert heat.parent == stock_task["bundle"] / "runs" / "cpu" / "heatmaps"
    heat_img = nib.load(str(heat))
    np.testing.assert_allclose(heat_img.affine, image.affine, atol=1e-4)
    # the label is the heat map at the pixel threshold: 1 exactly where the map reaches it
    expected = np.asarray(heat_img.dataobj) >= result["pixel_threshold"]
    np.testing.assert_array_equal(label.astype(bool), expected)
    assert result["anomalous_voxels"] == int(label.sum())
    assert json.loads(json.dumps(result)) == result  # plain JSON, as MONAI Label sends it


def test_the_stock_bundle_task_labels_a_png_in_its_own_orientation(stock_task):
    import nibabel as nib
    from PIL import Image

    task = stock_task["task"]
    png = stock_task["studies"] / "slice2d.png"
    label_file, result = task({"image": str(png), "device": "cpu"})
    assert label_file.endswith(".png")
    label = np.asarray(Image.open(label_file))
    assert label.shape == (SIZE, 14) and set(np.unique(label)) <= {0, 1}  # rows x columns of the input PNG
    _same_score_as_the_bundle_run(result, _bundle_scores(stock_task, png))
    assert len(result["slice_scores"]) == 1 and result["anomaly_score"] == pytest.approx(result["slice_scores"][0])
    heat = np.asarray(nib.load(result["heatmap"]).dataobj)  # MONAI's (width, height) layout: transposed
    assert heat.shape == (14, SIZE)
    np.testing.assert_array_equal(label.astype(bool), heat.T >= result["pixel_threshold"])


def test_the_stock_bundle_task_takes_the_request_options(stock_task, capsys):
    """``pixel_threshold`` and ``save_heatmap``, the bundle's displayable configs, come with each request. MONAI Label
    also writes them into the bundle config and parses it again; the transforms read them from the request as plain
    values, so a ``$...`` text is refused as a threshold, never run as a config expression."""
    task, sick = stock_task["task"], str(stock_task["sick"])
    _, calibrated = task({"image": sick, "device": "cpu"})
    level = calibrated["pixel_threshold"]
    low_file, low = task({"image": sick, "device": "cpu", "pixel_threshold": level / 4, "save_heatmap": False})
    assert low["pixel_threshold"] == pytest.approx(level / 4) and "heatmap" not in low
    assert low["anomalous_voxels"] >= calibrated["anomalous_voxels"] and low["anomalous_voxels"] > 0
    assert low["anomaly_score"] == pytest.approx(calibrated["anomaly_score"])  # the image score does not change
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"pixel_threshold must be a positive number or 'calibrated', got .\$print"):
        task({"image": sick, "device": "cpu", "pixel_threshold": "$print('injected')"})
    assert "injected" not in capsys.readouterr().out.splitlines()
    _, again = task({"image": sick, "device": "cpu"})  # the next request has the calibrated threshold again
    assert again["pixel_threshold"] == pytest.approx(level) and "heatmap" in again


def test_the_stock_monaibundle_app_serves_the_bundle(stock_task, tmp_path):
    """``monailabel start_server --app <monaibundle> --studies ... --conf models brain_mri_anomaly_hqanogan``: MONAI
    Label's own app, unchanged, serves the bundle of its model folder over HTTP."""
    import nibabel as nib
    from PIL import Image

    # the default zoo source (monaihosting) first lists the model zoo over the network; any other source takes a
    # bundle that is already in the app's model folder as it is
    conf = ["--conf", "models", STOCK_MODEL, "--conf", "zoo_source", "github", "--conf", "skip_trainers", "true"]
    app = stock_task["root"] / "monaibundle"
    with _server(app, stock_task["studies"], conf, tmp_path / "server.log") as (url, info):
        assert info["models"][STOCK_MODEL]["labels"] == {"anomaly": 1}
        label, affine, result = _infer(url, "lesion", tmp_path / "lesion_label.nii.gz", model=STOCK_MODEL)
        assert label.shape == (SIZE, SIZE, SLICES) and set(np.unique(label)) <= {0, 1}
        np.testing.assert_allclose(affine, nib.load(str(stock_task["sick"])).affine, atol=1e-4)
        assert np.isfinite(result["anomaly_score"]) and isinstance(result["anomalous"], bool)
        assert result["anomaly_score"] == pytest.approx(max(result["slice_scores"]))
        assert Path(result["heatmap"]).is_file() and result["anomalous_voxels"] == int(label.sum())
        request = urllib.request.Request(f"{url}/infer/{STOCK_MODEL}?image=slice2d&output=image", method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            (tmp_path / "label.png").write_bytes(response.read())
        png = np.asarray(Image.open(tmp_path / "label.png"))
        assert png.shape == (SIZE, 14) and set(np.unique(png)) <= {0, 1}


def test_the_stock_bundle_task_refuses_a_huge_image_from_its_header(stock_task, tmp_path):
    """A request's NIfTI whose header claims 20000 x 20000 pixels over a few bytes (issue 17): the bundle's
    ``preprocessing`` refuses it from its header, naming the file and the cap, before MONAI Label's loader reads it."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((20000, 20000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    claims = tmp_path / "claims.nii.gz"
    claims.write_bytes(gzip.compress(header.binaryblock + b"\0" * 68))
    with pytest.raises(Exception) as info:
        stock_task["task"]({"image": str(claims), "device": "cpu"})
    messages, error = [], info.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    assert any("claims.nii.gz' is a 2D image of 20000 x 20000 pixels" in m and "too large" in m for m in messages)
