"""The bundle served by a real MONAI Label server: ``monailabel start_server`` with the app in
``monai_hqanogan/apps/monailabel``, two NIfTI volumes (one with a pasted lesion), tiny weights trained by the bundle;
``/info/`` and ``/infer/<model>`` over HTTP on a loopback port. Skipped where monailabel does not import."""

from __future__ import annotations

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
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, make_tiny_dataset  # noqa: E402

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
    port = _free_port()
    # MONAI Label writes logs/, model/, bin/ and lib/ into its app folder: serve a copy of the app's main.py
    app = root / "app"
    app.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "monai_hqanogan" / "apps" / "monailabel" / "main.py", app)
    # what the `monailabel` script runs, with this interpreter (the script calls whatever `python` is first on PATH)
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(root / "studies"),
        "--host", "127.0.0.1",
        "--port", str(port), "--conf", "bundle", str(BUNDLE), "--conf", "model", str(model),
        "--conf", "settings", json.dumps(TINY_SETTINGS),
    ]  # fmt: skip
    env = {**os.environ, "MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    log = open(root / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None:
                log_text = (root / "server.log").read_text()
                raise RuntimeError(f"the server stopped (code {server.returncode}):\n{log_text}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"no answer from {url}:\n{(root / 'server.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield {"url": url, "info": info, "clean": clean, "sick": sick, "mask": mask, "root": root}
    finally:  # stop the server and its workers whatever happened
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _infer(url: str, image: str, out: Path, params: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """POST /infer/<model>?image=<id>&output=all with the request options in the form field ``params`` (where
    MONAI Label reads them): the label file and the result JSON (multipart answer)."""
    import nibabel as nib

    form = urllib.parse.urlencode({"params": json.dumps({"device": "cpu", **(params or {})})}).encode()
    request = urllib.request.Request(f"{url}/infer/{MODEL}?image={image}&output=all", data=form, method="POST")
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
