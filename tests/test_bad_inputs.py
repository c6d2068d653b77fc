"""Bad input at every entry point users hit: ``python -m monai_hqanogan.data.prepare folder``, ``check_datalist``,
``HQAnoGANDetector.detect``, ``SliceAnomalyInferer``, the trainers and the bundle configs.

Each case gets a clear error (the exception type and message are asserted; never a traceback from inside torch) or
the documented handling (skipped with a warning, ignored, set to the minimum, scored), and a failing run leaves the
output of an earlier run byte-identical. Each passing case records its kind (``record_property``); the kinds are
counted in the terminal summary (see ``tests/conftest.py``).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigWorkflow
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.data.prepare import main as prepare_main
from monai_hqanogan.engines import EncoderTrainer, StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.utils import list_checkpoints, load_checkpoint
from monai_hqanogan.workflows import (
    SliceAnomalyInferer,
    check_datalist,
    check_settings,
    export_detector,
    list_inference_inputs,
)
from tests.bundle_utils import (
    BUNDLE,
    TINY_SETTINGS,
    assert_clear,
    config_files,
    make_tiny_dataset,
    tiny_detector,
    tiny_overrides,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------------- helpers
def grey(seed: int = 0, height: int = 24, width: int = 20) -> np.ndarray:
    """A uint8 [H, W] ellipse image."""
    image = make_ellipse_images(1, max(height, width), seed=seed)[0, 0, :height, :width].numpy()
    return ((image + 1) * 127.5).clip(0, 255).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def nifti_bytes(array: np.ndarray, path: Path) -> bytes:
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
    return path.read_bytes()


def bomb_png(side: int = 40000) -> bytes:
    """A valid PNG header claiming ``side`` x ``side`` pixels (1.6 GB decoded) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("normal")
    for i in range(8):
        Image.fromarray(grey(i)).save(folder / f"n{i}.png")
    return folder


def with_extra(good_folder: Path, tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "normal"
    shutil.copytree(good_folder, folder)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


#: the start of the UserWarning that MONAI's LoadImage gives on every construction where pydicom is installed and
#: nvImageCodec (its GPU DICOM decoder plugin) is not
NVIMGCODEC_WARNING = r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"


def prepare(folder: Path, out: Path, *extra: str) -> int:
    return prepare_main(
        ["folder", "--normal", str(folder), "--output", str(out), "--max-size", "32", "--no-progress", *extra]
    )


# ---------------------------------------------------------------------------------------------------- prepare CLI
def _cut_volume(tmp: Path) -> bytes:
    data = nifti_bytes(np.random.rand(24, 20, 6) * 100, tmp / "v.nii.gz")
    return data[: len(data) // 2]  # the header is intact, the data end too early


SKIPPED = {  # kind: (file name, its content, the recorded reason)
    "zero_byte_file": ("empty.png", lambda tmp: b"", "cannot identify|empty|truncated"),
    "truncated_png": ("cut.png", lambda tmp: encoded(grey(), "PNG")[:-60], "runcated"),
    "truncated_jpeg": ("cut.jpg", lambda tmp: encoded(grey(), "JPEG")[:200], "runcated"),
    "truncated_nifti": ("cut.nii.gz", _cut_volume, "truncated or corrupt"),
    "huge_image": ("huge.png", lambda tmp: bomb_png(), "exceeds limit|decompression bomb|DecompressionBomb"),
    "constant_image": ("flat.png", lambda tmp: encoded(np.full((24, 20), 90, np.uint8), "PNG"), "constant image"),
}


@pytest.mark.parametrize("kind", list(SKIPPED))
def test_prepare_skips_an_unusable_file_with_a_warning(kind, good_folder, tmp_path, record_property):
    name, make, reason = SKIPPED[kind]
    folder = with_extra(good_folder, tmp_path, {name: make(tmp_path)})
    rss = maxrss_mb()
    with pytest.warns(UserWarning, match=f"skipped 1 unusable file.*normal/{name}"):
        assert prepare(folder, tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    (skipped,) = datalist["info"]["skipped"]
    assert skipped["file"] == f"normal/{name}"
    assert re.search(reason, skipped["reason"]), skipped["reason"]
    sources = {i["source"] for k in ("training", "validation", "test") for i in datalist[k]}
    assert sources == {f"n{i}.png" for i in range(8)}
    if kind == "huge_image":  # refused from its header: the 1.6 GB image was never decoded
        assert maxrss_mb() - rss < 400
    record_property("bad_input_kind", SAME_KIND.get(kind, kind))


def test_prepare_ignores_files_that_are_not_images(good_folder, tmp_path, record_property):
    junk = {"notes.txt": b"scan notes", "table.csv": b"a,b\n1,2\n", ".DS_Store": b"\0\1", "Thumbs.db": b"\0" * 64}
    folder = with_extra(good_folder, tmp_path, {**junk, "README": b"no suffix", "sub/scan.json": b"{}"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning: these are simply not images
        # but MONAI's LoadImage warns on every construction when pydicom is installed without nvImageCodec (its
        # GPU DICOM decoder); that says nothing about the files read, so only that one message may pass
        warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING, category=UserWarning)
        assert prepare(folder, tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    sources = {i["source"] for k in ("training", "validation", "test") for i in datalist[k]}
    assert sources == {f"n{i}.png" for i in range(8)} and datalist["info"]["skipped"] == []
    record_property("bad_input_kind", "non_image_files")


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_prepare_sets_nan_and_inf_to_the_minimum_with_a_warning(kind, good_folder, tmp_path, record_property):
    image = grey(20).astype(np.float32)
    image[3:5, 4:6] = float(kind)
    folder = with_extra(good_folder, tmp_path, {"odd.nii.gz": nifti_bytes(image, tmp_path / "odd.nii.gz")})
    with pytest.warns(UserWarning, match="odd.nii.gz: 4 NaN or inf pixel"):
        assert prepare(folder, tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    (item,) = [i for k in ("training", "validation", "test") for i in datalist[k] if i["source"] == "odd.nii.gz"]
    stored = np.asarray(Image.open(tmp_path / "out" / item["image"]))
    assert stored.max() - stored.min() > 100  # the image kept its contrast (NaN would have zeroed it)
    record_property("bad_input_kind", kind)


def test_prepare_skips_fifos_devices_and_broken_links_without_opening_them(good_folder, tmp_path, record_property):
    """A FIFO named like an image blocked the preparation forever (its reader waits for a writer); a link to a
    device or to nothing is not read either. Each is skipped with the reason, the good images are prepared."""
    folder = with_extra(good_folder, tmp_path, {})
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the preparation blocked on the FIFO"))
    signal.alarm(120)
    try:
        with pytest.warns(UserWarning, match="skipped 3 unusable file"):
            assert prepare(folder, tmp_path / "out") == 0
    finally:
        signal.alarm(0)
    skipped = json.loads((tmp_path / "out" / "datalist.json").read_text())["info"]["skipped"]
    reasons = {s["file"]: s["reason"] for s in skipped}
    assert "not a regular file (a FIFO, socket or device)" in reasons["normal/pipe.png"]
    assert "not a regular file (a FIFO, socket or device)" in reasons["normal/zero.png"]
    assert "not a regular file (a broken link)" in reasons["normal/gone.png"]
    record_property("bad_input_kind", "fifo_device_broken_link")


@pytest.mark.parametrize(
    "layout, message",
    [
        ("abnormal=masks", "the abnormal folder and the mask folder are one folder"),
        ("masks inside abnormal", "the mask folder .* lies inside the abnormal folder"),
        ("abnormal=normal", "the abnormal folder and the normal folder are one folder"),
        ("normal inside abnormal", "the normal folder .* lies inside the abnormal folder"),
    ],
)
def test_prepare_refuses_input_folders_that_overlap(layout, message, good_folder, tmp_path, capsys, record_property):
    """Images and masks in one folder gave a datalist whose masks were also abnormal images, each image its own
    mask, without a word; the same folder as normal and abnormal mixed the classes."""
    abnormal = tmp_path / "abnormal"
    abnormal.mkdir()
    for i in range(2):
        Image.fromarray(grey(40 + i)).save(abnormal / f"t{i}.png")
        Image.fromarray(np.where(grey(40 + i) > 128, 255, 0).astype(np.uint8)).save(abnormal / f"t{i}_mask.png")
    normal, masks = good_folder, abnormal
    if layout == "masks inside abnormal":
        masks = abnormal / "masks"
        masks.mkdir()
        for i in range(2):
            shutil.copy(abnormal / f"t{i}_mask.png", masks)
    elif layout == "abnormal=normal":
        normal, masks = abnormal, None
    elif layout == "normal inside abnormal":
        normal, masks = shutil.copytree(good_folder, abnormal / "normal"), None
    before = snapshot(tmp_path)
    capsys.readouterr()
    extra = ["--abnormal", str(abnormal), *(["--masks", str(masks)] if masks else [])]
    assert prepare(normal, tmp_path / "out", *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err) and "Traceback" not in err
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    record_property("bad_input_kind", "overlapping_input_folders")


@pytest.mark.parametrize(
    "files, message",
    [
        (["n0.jpg"], "normal inputs n0.jpg and n0.png would both be stored as images/normal/n0.png"),
        (["N1.PNG"], "normal inputs N1.PNG and n1.png would both be stored"),  # letter case ignored
        (["a/b.png", "a__b.png"], "normal inputs a__b.png and a/b.png would both be stored as images/normal/a__b.png"),
        (["v.nii.gz", "v_s0003.png"], "v_s0003.png would be stored under the name of a slice of the volume v.nii.gz"),
    ],
)
def test_prepare_refuses_inputs_stored_under_one_name(files, message, good_folder, tmp_path, capsys, record_property):
    """``x.png`` and ``x.jpg`` were both stored as ``images/normal/x.png``: the second overwrote the first, and two
    datalist items pointed at one image, without a word."""
    data = {"v.nii.gz": nifti_bytes(np.random.rand(24, 20, 6) * 100, tmp_path / "v.nii.gz")}
    folder = with_extra(good_folder, tmp_path, {f: data.get(f, encoded(grey(60), "PNG")) for f in files})
    capsys.readouterr()
    assert prepare(folder, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "rename one of them" in err, err
    assert not (tmp_path / "out").exists()
    record_property("bad_input_kind", "inputs_sharing_a_stored_name")


@pytest.mark.parametrize("value", ["nan", "2", "-0.1"])
def test_prepare_refuses_an_out_of_range_min_foreground(value, good_folder, tmp_path, capsys, record_property):
    """``--min-foreground nan`` kept every empty volume slice and 2 dropped every one, without a word."""
    capsys.readouterr()
    assert prepare(good_folder, tmp_path / "out", "--min-foreground", value) == 1
    assert "min_foreground must be a fraction in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    record_property("bad_input_kind", "min_foreground_out_of_range")


@pytest.fixture(scope="module")
def earlier_output(good_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    assert prepare(good_folder, out) == 0
    return out


REFUSED_FOLDERS = {  # (a 1 x 30 PNG is skipped now, with the shapes the networks cannot use: tests/test_size_caps.py)
    "dicom_without_pydicom": ({"series/1.dcm": b"DICM" * 10}, "pip install pydicom"),
    "empty_folder": (None, "holds no PNG, JPEG, NIfTI"),
}


@pytest.mark.parametrize("kind", list(REFUSED_FOLDERS))
def test_prepare_refuses_with_a_clear_error_and_keeps_the_earlier_output(
    kind, good_folder, earlier_output, tmp_path, capsys, monkeypatch, record_property
):
    files, message = REFUSED_FOLDERS[kind]
    if files is None:
        folder = tmp_path / "normal"
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    else:
        folder = with_extra(good_folder, tmp_path, files)
    real_find_spec = importlib.util.find_spec  # the error must not depend on whether pydicom happens to be installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pydicom" else real_find_spec(n, *a))
    before = snapshot(earlier_output)
    capsys.readouterr()
    assert prepare(folder, earlier_output, "--overwrite") == 1  # it would replace the earlier output on success
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert snapshot(earlier_output) == before
    record_property("bad_input_kind", kind)


def test_paths_with_spaces_and_non_ascii_characters(good_folder, tmp_path, record_property):
    folder = tmp_path / "Ärztin scans" / "脑 MRT 1"
    folder.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(grey(i)).save(folder / f"scan ü {i}.png")
    out = tmp_path / "out put é"
    assert prepare(folder, out) == 0
    items = check_datalist(out / "datalist.json", ["training", "validation", "test"])  # every file decodes
    assert {Path(i["image"]).suffix for k in items for i in items[k]} == {".png"}
    sources = json.loads((out / "datalist.json").read_text(encoding="utf-8"))["training"]
    assert all(s["source"].startswith("scan ü ") for s in sources)
    assert len(list_inference_inputs(folder)) == 8
    record_property("bad_input_kind", "non_ascii_paths_with_spaces")


# ---------------------------------------------------------------------------------------------------- datalists
def _images(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey(1)).save(root / "images" / "good.png")


def _listing(root: Path, *names: str) -> Path:
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "images/good.png"}] + [{"image": n} for n in names]}))
    return path


def _file(root: Path, name: str, data: bytes) -> Path:
    (root / name).write_bytes(data)
    return _listing(root, name)


def _nan_nifti(root: Path) -> Path:
    image = grey(2).astype(np.float32)
    image[0, 0] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "nan.nii.gz"))
    return _listing(root, "nan.nii.gz")


def _cut_nifti(root: Path) -> Path:
    data = nifti_bytes(grey(3)[..., None], root / "cut.nii.gz")
    return _file(root, "cut.nii.gz", data[: len(data) // 2])


def _volume(root: Path) -> Path:
    nib.save(nib.Nifti1Image(np.random.rand(24, 20, 5).astype(np.float32), np.eye(4)), str(root / "vol.nii.gz"))
    return _listing(root, "vol.nii.gz")


def _text(root: Path, text: str) -> Path:
    (root / "datalist.json").write_text(text)
    return root / "datalist.json"


def _raw(root: Path, data: bytes) -> Path:
    (root / "datalist.json").write_bytes(data)
    return root / "datalist.json"


TRUNCATED = "cannot be read: it is truncated"
#: variants counted as one kind
SAME_KIND = {
    "datalist_not_utf8": "datalist_not_json",
    "datalist_item_not_object": "datalist_wrong_structure",
    "datalist_image_not_a_path": "datalist_wrong_structure",
    "settings_not_a_dict": "override_wrong_type",
    "partial_settings_override": "override_wrong_type",
}
DATALISTS = {  # kind: (make the datalist in the folder, the error, its message)
    "datalist_not_json": (lambda r: _raw(r, b"{training: [images/good.png"), ValueError, "is not valid JSON"),
    "datalist_not_utf8": (lambda r: _raw(r, b"\xff\xfe\x00{"), ValueError, "not UTF-8"),
    "datalist_wrong_structure": (lambda r: _raw(r, b'[{"image": "a.png"}]'), ValueError, "holds a JSON list"),
    "datalist_item_not_object": (lambda r: _raw(r, b'{"training": ["a.png"]}'), ValueError, "expected an object"),
    "datalist_image_not_a_path": (lambda r: _raw(r, b'{"training": [{"image": 5}]}'), ValueError, "a file path"),
    "missing_file": (lambda r: _listing(r, "images/gone.png"), FileNotFoundError, "gone.png' does not exist"),
    "zero_byte_file": (lambda r: _file(r, "empty.png", b""), ValueError, r"empty.png' is empty \(0 bytes\)"),
    "truncated_png": (lambda r: _file(r, "cut.png", encoded(grey(), "PNG")[:-60]), ValueError, TRUNCATED),
    "truncated_jpeg": (lambda r: _file(r, "cut.jpg", encoded(grey(), "JPEG")[:300]), ValueError, TRUNCATED),
    "truncated_nifti": (_cut_nifti, ValueError, "cut.nii.gz' is truncated"),
    "mixed_2d_3d": (_volume, ValueError, r"vol.nii.gz' is a 3D volume \(shape \(24, 20, 5\)\)"),
    "non_image_files": (lambda r: _file(r, "notes.txt", b"hello"), ValueError, "notes.txt' is not an image file"),
    "nan": (_nan_nifti, ValueError, "nan.nii.gz' holds 1 NaN or inf pixels"),
    "dicom_without_pydicom": (lambda r: _file(r, "x.dcm", b"DICM"), ImportError, "pip install pydicom"),
    "huge_image": (lambda r: _file(r, "huge.png", bomb_png()), ValueError, "huge.png' is too large to load safely"),
}


@pytest.mark.parametrize("kind", list(DATALISTS))
def test_check_datalist_names_the_problem(kind, tmp_path, monkeypatch, record_property):
    make, error, message = DATALISTS[kind]
    _images(tmp_path)
    datalist = make(tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pydicom" else real_find_spec(n, *a))
    rss = maxrss_mb()
    with pytest.raises(error, match=message):
        check_datalist(datalist, ["training"])
    assert maxrss_mb() - rss < 400
    record_property("bad_input_kind", SAME_KIND.get(kind, kind))


# ---------------------------------------------------------------------------------------------------- detector, inferer
@pytest.fixture(scope="module")
def detector():
    """A calibrated detector built from the bundle's inference config with the tiny settings."""
    return tiny_detector()


def _with(value: float, index: int, shape=(2, 1, 16, 16)) -> torch.Tensor:
    x = torch.rand(*shape)
    x.view(-1)[index * (x.numel() // shape[0]) + 5] = value
    return x


NON_FINITE = "of the batch contain NaN or inf"
BAD_BATCHES = {  # kind: (the batch, the message)
    "wrong_dimensions": (lambda: torch.rand(1, 16, 16), r"expects images of shape \[batch, 1, 16, 16\]"),
    "wrong_dimensions_5d": (lambda: torch.rand(1, 1, 16, 16, 4), "expects images of shape"),
    "wrong_channels": (lambda: torch.rand(2, 3, 16, 16), r"got \(2, 3, 16, 16\)"),
    "wrong_size": (lambda: torch.rand(2, 1, 32, 32), r"got \(2, 1, 32, 32\)"),
    "nan": (lambda: _with(float("nan"), 1), r"images \[1\] " + NON_FINITE),
    "inf": (lambda: _with(float("inf"), 0), r"images \[0\] " + NON_FINITE),
    "integer_dtype": (lambda: torch.zeros(2, 1, 16, 16, dtype=torch.uint8), r"floating-point.*got torch.uint8"),
    "non_tensor_input": (lambda: np.zeros((2, 1, 16, 16), np.float32), "got ndarray"),
}


@pytest.mark.parametrize("kind", list(BAD_BATCHES))
def test_detect_names_the_problem(detector, kind, record_property):
    make, message = BAD_BATCHES[kind]
    with pytest.raises(ValueError, match=message):
        detector.detect(make())
    record_property("bad_input_kind", kind.replace("_5d", ""))


def test_detect_marks_constant_images_invalid_and_accepts_other_float_types(detector, record_property):
    """Documented handling: a constant image is scored but flagged ``valid=False``; float64 or float16 input is cast."""
    images = torch.stack([torch.full((1, 16, 16), -1.0), make_ellipse_images(1, 16, seed=5)[0]])
    record = detector.detect(images)
    assert record["valid"].tolist() == [False, True] and torch.isfinite(record["pred_score"]).all()
    for dtype in (torch.float64, torch.float16):
        assert torch.isfinite(detector.detect(images.to(dtype))["pred_score"]).all()
    record_property("bad_input_kind", "constant_image")


INFERER_ERRORS = {  # kind: (the input batch, inferer options, the message)
    "wrong_dimensions": (lambda: torch.rand(1, 20, 24), {}, "expected a batch of 2D images"),
    "nan": (lambda: _with(float("nan"), 0, (1, 1, 20, 24, 3)), {}, "contain NaN or inf"),
    "inf": (lambda: _with(float("-inf"), 0, (1, 1, 20, 24)), {}, "contain NaN or inf"),
    "constant_image": (lambda: torch.full((1, 1, 20, 24), 7.0), {}, "is constant: there is nothing to score"),
    "empty_volume": (lambda: torch.rand(1, 1, 20, 24, 0), {}, "has no 2D slice to score"),
    "huge_image": (lambda: torch.rand(1, 1, 40, 40), {"max_slice_pixels": 1000}, "more than 1000 pixels: too large"),
    "slice_axis_out_of_range": (lambda: torch.rand(1, 1, 20, 24, 3), {"slice_axis": 7}, "slice_axis"),
}


@pytest.mark.parametrize("kind", list(INFERER_ERRORS))
def test_slice_inferer_names_the_problem(detector, kind, record_property):
    make, options, message = INFERER_ERRORS[kind]
    with pytest.raises(ValueError, match=message):
        SliceAnomalyInferer(resolution=16, **options)(make(), detector)
    record_property("bad_input_kind", kind)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(2, 64),
    width=st.integers(2, 64),
    depth=st.one_of(st.none(), st.integers(1, 4)),
    scale=st.floats(1e-3, 1e4),
    integer=st.booleans(),
)
def test_slice_inferer_maps_any_2d_or_3d_shape_back_onto_its_grid(
    detector, height, width, depth, scale, integer, record_property
):
    """Documented handling: any 2D image or 3D volume (both may be in one datalist), non-square, at any intensity
    scale or integer type, is scored slice by slice and its map comes back on the input's own grid; shapes whose
    short side would be under 2 px at the model resolution are refused instead (tests/test_size_caps.py)."""
    assume(round(min(height, width) * 16 / max(height, width)) >= 2)
    shape = (1, 1, height, width) + (() if depth is None else (depth,))
    image = torch.rand(*shape) * scale
    image[:, :, 0, 0], image[:, :, -1, -1] = 0.0, scale  # no constant slice
    if integer:
        image = (image * max(1.0, 10 / scale)).round().to(torch.int32)
    out = SliceAnomalyInferer(resolution=16)(image, detector)
    assert out["pred"].shape == image.shape and torch.isfinite(out["pred"]).all()
    assert torch.isfinite(out["pred_score"]).all() and out["slice_scores"].shape == (1, depth or 1)
    record_property("bad_input_kind", "non_square_image")


def test_slice_inferer_drops_the_alpha_channel_as_training_does(detector):
    """An RGBA image scores as its colour channels' grey (``ToSingleChannel``, the training transform), whatever its
    alpha: a varying opacity must not leak into the score."""
    grey = make_ellipse_images(1, 20, seed=6, inner=True)[0] * 100 + 100  # [1, 20, 20]
    alpha = torch.rand(1, 20, 20, generator=torch.Generator().manual_seed(0)) * 255
    rgba = torch.cat([grey, grey, grey, alpha])[None]
    inferer = SliceAnomalyInferer(resolution=16)
    out, expected = inferer(rgba, detector), inferer(grey[None], detector)
    assert float(out["pred_score"][0]) == pytest.approx(float(expected["pred_score"][0]), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(torch.as_tensor(out["pred"]), torch.as_tensor(expected["pred"]))


def test_slice_inferer_scales_volume_slices_by_the_2d_rule(detector):
    """One intensity rule for 2D images and volume slices (the rule of training): a slice scored inside a volume
    gets the map and score it gets as a 2D image, so a bright lesion on one slice leaves the other slices' scores
    alone; near-empty end slices (the ones preparation drops) are not scored."""
    heads = (make_ellipse_images(3, 20, seed=4, inner=True)[:, 0] + 1) * 100  # [3, 20, 20], 0..200
    volume = heads.permute(1, 2, 0).clone()  # [H, W, D]
    volume[8:12, 8:12, 1] = 1000.0  # a lesion far brighter than every head: it sets the volume's range
    empty = torch.zeros(20, 20, 1)
    empty[0, 0] = 150.0  # one bright pixel: not constant, but nothing to score
    volume = torch.cat([empty, volume], dim=-1)[None, None]  # [1, 1, 20, 20, 4]
    inferer = SliceAnomalyInferer(resolution=16)
    out = inferer(volume, detector)
    assert math.isnan(float(out["slice_scores"][0, 0])) and float(out["pred"][..., 0].abs().max()) == 0.0
    for k in range(1, 4):
        alone = inferer(volume[..., k], detector)
        assert float(out["slice_scores"][0, k]) == pytest.approx(float(alone["pred_score"][0]), rel=1e-5, abs=1e-6)
        torch.testing.assert_close(
            torch.as_tensor(out["pred"][..., k]), torch.as_tensor(alone["pred"]), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="only constant or near-empty slices"):
        inferer(empty[None, None].repeat(1, 1, 1, 1, 2), detector)


# ---------------------------------------------------------------------------------------------------- trainers
def _generator_trainer(data: torch.Tensor, **kwargs) -> StyleGAN2Trainer:
    torch.manual_seed(0)
    g = StyleGAN2Generator(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    d = StyleGAN2Discriminator(resolution=8, channel_base=32, channel_max=8)
    loader = DataLoader(TensorDataset(data), batch_size=4)
    opts = (stylegan2_adam(g.parameters()), stylegan2_adam(d.parameters()))
    return StyleGAN2Trainer("cpu", kwargs.pop("max_epochs", 2), loader, g, d, *opts, **kwargs)


def _encoder_trainer(data: torch.Tensor, **kwargs) -> EncoderTrainer:
    torch.manual_seed(0)
    g = StyleGAN2Generator(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    e = PSPEncoder(resolution=8, w_dim=8, num_ws=g.num_ws, base_channels=8, max_channels=8)
    loader = DataLoader(TensorDataset(data), batch_size=4)
    opt = torch.optim.Adam(e.parameters(), lr=1e-3)
    return EncoderTrainer("cpu", kwargs.pop("max_epochs", 2), loader, e, g, opt, feature_weight=0.0, **kwargs)


TRAINERS = {"generator": _generator_trainer, "encoder": _encoder_trainer}


@pytest.fixture(scope="module")
def earlier_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One epoch of each trainer on good data: the earlier run whose checkpoints a bad run must not touch."""
    out = {}
    for name, make in TRAINERS.items():
        folder = tmp_path_factory.mktemp(f"{name}_checkpoints")
        trainer = make(make_ellipse_images(8, 8, seed=1), max_epochs=1)
        TrainingCheckpointHandler(save_dir=folder).attach(trainer)
        trainer.run()
        out[name] = folder
    return out


def _bad(kind: str) -> torch.Tensor:
    data = make_ellipse_images(8, 8, seed=2)
    if kind == "nan":
        data[1, 0, 3, 3] = float("nan")
    elif kind == "inf":
        data[2, 0, 1, 1] = float("-inf")
    elif kind == "wrong_dimensions":
        data = data[..., None].expand(-1, -1, -1, -1, 3).contiguous()
    elif kind == "wrong_channels":
        data = data.repeat(1, 3, 1, 1)
    elif kind == "wrong_size":
        data = make_ellipse_images(8, 16, seed=2)
    elif kind == "integer_dtype":
        data = ((data + 1) * 127.5).to(torch.uint8)
    return data


TRAINER_ERRORS = {
    "nan": "images \\[1\\] of the batch contain NaN or inf; refusing to train",
    "inf": "images \\[2\\] of the batch contain NaN or inf; refusing to train",
    "wrong_dimensions": r"expects images of shape \[batch, 1, 8, 8\].*got \(4, 1, 8, 8, 3\)",
    "wrong_channels": r"got \(4, 3, 8, 8\)",
    "wrong_size": r"got \(4, 1, 16, 16\)",
    "integer_dtype": "floating-point images in \\[-1, 1\\], got torch.uint8",
}


@pytest.mark.parametrize("kind", list(TRAINER_ERRORS))
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainers_refuse_bad_batches_and_keep_the_earlier_checkpoints(
    trainer, kind, earlier_checkpoints, record_property
):
    folder = earlier_checkpoints[trainer]
    before = snapshot(folder)
    engine = TRAINERS[trainer](_bad(kind))
    TrainingCheckpointHandler(save_dir=folder).attach(engine)  # resumes from the earlier run, then meets the batch
    with pytest.raises(ValueError, match=TRAINER_ERRORS[kind]):
        engine.run()
    assert engine.state.iteration == 3  # the first iteration after the resumed two: it stopped at the bad batch
    trained = engine.generator if trainer == "generator" else engine.encoder
    saved = load_checkpoint(list_checkpoints(folder)[-1][1])[trainer]
    assert all(torch.equal(t, saved[k]) for k, t in trained.state_dict().items())  # no step on the bad batch
    assert snapshot(folder) == before
    record_property("bad_input_kind", kind)


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainers_refuse_an_empty_dataset_and_a_wrong_total_kimg(trainer, record_property):
    with pytest.raises(ValueError, match="the training dataset is empty"):
        TRAINERS[trainer](torch.zeros(0, 1, 8, 8))
    for bad in ("abc", -1, float("nan"), True):
        with pytest.raises(ValueError, match="total_kimg must be positive"):
            TRAINERS[trainer](make_ellipse_images(8, 8), total_kimg=bad)
    record_property("bad_input_kind", "empty_dataset")
    record_property("bad_input_kind", "override_wrong_type")


# ---------------------------------------------------------------------------------------------------- bundle configs
@pytest.fixture(scope="module")
def bundle_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle_data")
    make_tiny_dataset(root)
    return root


def _earlier_run(root: Path) -> Path:
    """A run folder of an earlier run: a checkpoint, stage files, a report."""
    runs = root / "runs"
    (runs / "generator" / "checkpoints").mkdir(parents=True)
    torch.save({"trainer": {"iteration": 4}}, runs / "generator" / "checkpoints" / "checkpoint_iteration=4.pt")
    torch.save({"generator": {}}, runs / "generator.pt")
    (runs / "evaluation").mkdir()
    (runs / "evaluation" / "report.md").write_text("# earlier report\n")
    return runs


def _workflow(config: str, **overrides) -> ConfigWorkflow:
    kind = "train" if config.startswith("train") else "infer"
    return ConfigWorkflow(config_file=config_files(config), workflow_type=kind, bundle_root=str(BUNDLE), **overrides)


POWER_OF_TWO = "resolution must be a power of two between 8 and 1024, got "
BUNDLE_ERRORS = {  # kind: [(overrides, the message)]
    "override_wrong_type": [
        ({"settings": {**TINY_SETTINGS, "resolution": "16"}}, POWER_OF_TWO + "'16'"),
        ({"settings": {**TINY_SETTINGS, "amp": "yes"}}, "amp must be true or false, got 'yes'"),
        ({"settings": {**TINY_SETTINGS, "generator_lr": "fast"}}, "generator_lr must be a positive number, got 'fast'"),
        ({"batch_size": "four"}, "batch_size must be a positive integer, got 'four'"),
        ({"resolution": 12}, POWER_OF_TWO + "12"),
        ({"total_kimg": "abc"}, "total_kimg must be a positive number, got 'abc'"),
        ({"seed": "zero"}, "seed must be an integer >= 0, got 'zero'"),
    ],
    "partial_settings_override": [({"settings": {"resolution": 16}}, r"settings lack \['z_dim'")],
    "settings_not_a_dict": [({"settings": "tiny"}, "settings must be a dict")],
    "unknown_setting": [
        ({"setting": "huge", "settings": None}, r"unknown setting 'huge'.*has \['cpu', 'demo', 'full', 'gpu'\]")
    ],
}


@pytest.mark.parametrize(
    "kind, case", [(k, i) for k, cases in BUNDLE_ERRORS.items() for i in range(len(cases))], ids=lambda v: str(v)
)
def test_bundle_overrides_of_the_wrong_type_fail_before_any_work(kind, case, bundle_data, tmp_path, record_property):
    override, message = BUNDLE_ERRORS[kind][case]
    runs = _earlier_run(tmp_path)
    before = snapshot(runs)
    overrides = {**tiny_overrides(bundle_data, runs), **override}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    logging.disable(logging.WARNING)
    try:
        with pytest.raises(Exception) as info:
            w = _workflow("train_generator.json", **overrides)
            w.initialize()
            w.run()
    finally:
        logging.disable(logging.NOTSET)
    assert_clear(info.value, ValueError, message)
    assert snapshot(runs) == before
    record_property("bad_input_kind", SAME_KIND.get(kind, kind))


def test_check_settings_accepts_the_shipped_settings_and_json_booleans():
    shipped = json.loads((BUNDLE / "configs" / "settings.json").read_text())
    for name in shipped:
        assert check_settings(shipped[name])["resolution"] in (32, 64, 128)
    # what --settings '{"amp": false, ...}' becomes through MONAI's command line
    assert check_settings({**TINY_SETTINGS, "amp": "false"})


@pytest.mark.parametrize(
    "kind, message",
    [("datalist_not_json", "datalist.json' is not valid JSON"), ("mixed_2d_3d", "is a 3D volume")],
)
def test_bundle_training_refuses_a_bad_datalist_and_keeps_the_earlier_run(
    kind, message, bundle_data, tmp_path, record_property
):
    data = tmp_path / "data"
    shutil.copytree(bundle_data, data)
    if kind == "datalist_not_json":
        (data / "datalist.json").write_text("not json at all")
    else:
        nib.save(nib.Nifti1Image(np.random.rand(24, 20, 4).astype(np.float32), np.eye(4)), str(data / "vol.nii.gz"))
        datalist = json.loads((data / "datalist.json").read_text())
        datalist["training"].append({"image": "vol.nii.gz", "label": 0})
        (data / "datalist.json").write_text(json.dumps(datalist))
    runs = _earlier_run(tmp_path)
    before = snapshot(runs)
    with pytest.raises(Exception) as info:
        w = _workflow("train_generator.json", **tiny_overrides(data, runs))
        w.initialize()
        w.run()
    assert_clear(info.value, ValueError, message)
    assert snapshot(runs) == before
    record_property("bad_input_kind", kind)


@pytest.fixture(scope="module")
def bundle_model(detector, bundle_data, tmp_path_factory) -> Path:
    """A run folder whose ``models/model.pt`` is the tiny calibrated detector, as calibrate.json writes it."""
    runs = tmp_path_factory.mktemp("bundle_runs")
    export_detector(detector, runs / "models" / "model.pt")
    return runs


def _inference(bundle_data: Path, runs: Path, source: Path, out: Path, **overrides: Any) -> None:
    logging.disable(logging.WARNING)
    try:
        overrides = {**tiny_overrides(bundle_data, runs), **overrides}
        w = _workflow("inference.json", **overrides, input=str(source), output_dir=str(out))
        w.initialize()
        w.run()
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("kind", ["nan", "datalist_not_json", "truncated_nifti"])
def test_bundle_inference_refuses_bad_input_and_keeps_the_earlier_output(
    kind, bundle_data, bundle_model, tmp_path, record_property
):
    out = tmp_path / "inference"
    _inference(bundle_data, bundle_model, bundle_data / "images" / "normal_20.png", out)  # the earlier output
    before = snapshot(out)
    if kind == "nan":
        volume = np.random.rand(20, 24, 3).astype(np.float32)
        volume[2, 2, 1] = np.nan
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "nan volume é.nii.gz"))
        source, message = tmp_path / "nan volume é.nii.gz", "nan volume é.nii.gz'.*contain NaN or inf"
    elif kind == "datalist_not_json":
        source, message = tmp_path / "list.json", "list.json' is not valid JSON"
        source.write_text("[oops")
    else:
        data = nifti_bytes(np.random.rand(20, 24, 3), tmp_path / "v.nii.gz")
        source, message = tmp_path / "cut.nii.gz", "cut.nii.gz' is truncated"
        source.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as info:
        _inference(bundle_data, bundle_model, source, out)
    assert_clear(info.value, ValueError, message)
    assert snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".inference.")]
    record_property("bad_input_kind", kind)


def test_bundle_inference_scores_2d_images_and_3d_volumes_of_one_datalist(
    bundle_data, bundle_model, tmp_path, record_property
):
    """Documented handling of a datalist that mixes 2D images and 3D volumes: each is scored in its own geometry."""
    volume = np.zeros((20, 24, 3), dtype=np.float32)
    volume[4:16, 6:18, :] = 50.0 + np.random.rand(12, 12, 3).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    shutil.copy(bundle_data / "images" / "normal_20.png", tmp_path / "slice.png")
    datalist = tmp_path / "mixed.json"
    datalist.write_text(json.dumps({"test": [{"image": "slice.png"}, {"image": "vol.nii.gz"}]}))
    _inference(bundle_data, bundle_model, datalist, tmp_path / "out")
    rows = {Path(r["image"]).name: r for r in json.loads((tmp_path / "out" / "scores.json").read_text())["rows"]}
    assert set(rows) == {"slice.png", "vol.nii.gz"} and all(math.isfinite(r["score"]) for r in rows.values())
    assert len(rows["vol.nii.gz"]["slice_scores"]) == 3 and rows["slice.png"]["slice_scores"] is None
    assert nib.load(str(tmp_path / "out" / "vol_anomaly_map.nii.gz")).shape[:3] == (20, 24, 3)
    record_property("bad_input_kind", "mixed_2d_3d")


# ---------------------------------------------------------------------------------------------------- inference input
@pytest.mark.parametrize("kind", ["fifo", "link_to_dev_zero"])
def test_inference_refuses_an_input_that_is_neither_a_file_nor_a_folder(kind, tmp_path, record_property):
    """A FIFO or a link to a device given as --input was taken for a folder: a bare NotADirectoryError (and a FIFO
    named like an image could block its reader)."""
    source = tmp_path / "input.png"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        source.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=f"{re.escape(str(source))}' is neither a file nor a folder"):
        list_inference_inputs(source)
    record_property("bad_input_kind", "input_neither_file_nor_folder")


def test_inference_refuses_an_empty_test_list_by_name(tmp_path, record_property):
    """``{"test": []}`` reached MONAI's datalist loader, which raised a bare IndexError."""
    datalist = tmp_path / "list.json"
    datalist.write_text('{"test": [], "training": [{"image": "a.png"}]}')
    with pytest.raises(ValueError, match="list.json': list 'test' is empty; it must hold at least one item"):
        list_inference_inputs(datalist)
    record_property("bad_input_kind", "empty_test_list")


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_a_max_panels_that_is_not_a_count_is_refused_before_any_work(
    value, bundle_data, bundle_model, tmp_path, record_property
):
    """``--max_panels -1`` was accepted: the run wrote no panel and exited 0."""
    from monai_hqanogan.handlers import AnomalyPanelSaver
    from monai_hqanogan.workflows import check_overrides

    message = rf"max_panels must be an integer >= 0 \(0: no panels\), got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        check_overrides(max_panels=value)
    with pytest.raises(ValueError, match=message):
        AnomalyPanelSaver(tmp_path / "panels", max_panels=value)
    assert check_overrides(max_panels=0) == {"max_panels": 0}  # 0: no panels, on purpose
    if value == -1:  # the bundle, as `python -m monai.bundle run --config_file configs/inference.json --max_panels -1`
        out = tmp_path / "inference"
        _inference(bundle_data, bundle_model, bundle_data / "images" / "normal_20.png", out)  # the earlier output
        before = snapshot(out)
        with pytest.raises(Exception) as info:
            _inference(bundle_data, bundle_model, bundle_data / "images" / "normal_21.png", out, max_panels=-1)
        assert_clear(info.value, ValueError, message)
        assert snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".inference.")]
    record_property("bad_input_kind", "max_panels_out_of_range")


# ---------------------------------------------------------------------------------------------------- smaller holes
def test_prepare_drops_the_alpha_channel_before_averaging(good_folder, tmp_path, record_property):
    """RGBA and LA images become the grey of their colour channels, as ToSingleChannel makes them: alpha is opacity,
    not intensity (averaging it in brightened every pixel by a quarter of its opacity)."""
    image = grey(30)
    alpha = np.linspace(0, 255, image.size).reshape(image.shape).astype(np.uint8)  # opacity varies over the image
    rgba = np.stack([image, image, image, alpha], axis=-1)
    files = {"rgba.png": encoded(rgba, "PNG"), "la.png": encoded(np.stack([image, alpha], axis=-1), "PNG")}
    assert prepare(with_extra(good_folder, tmp_path, files), tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    stored = {
        i["source"]: np.asarray(Image.open(tmp_path / "out" / i["image"]))
        for k in ("training", "validation", "test")
        for i in datalist[k]
    }
    from monai_hqanogan.transforms import ToSingleChannel

    for source in (rgba, rgba[..., [0, 3]]):  # RGBA and LA: what training and inference make of them
        channel_first = torch.from_numpy(source).permute(2, 0, 1).float()
        expected = ToSingleChannel()(channel_first)[0].round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(expected, image)
    np.testing.assert_array_equal(stored["rgba.png"], image)
    np.testing.assert_array_equal(stored["la.png"], image)
    record_property("bad_input_kind", "alpha_channel")


def test_prepare_reads_palette_and_cmyk_images_as_the_grey_they_show(good_folder, tmp_path, record_property):
    """A palette PNG was stored as its palette indices (0..7 for an 8-colour palette: a black image) and a CMYK JPEG
    as the average of its ink channels; both now give the grey of the colours they show."""
    image = grey(31)
    palette = Image.fromarray(image).quantize(8)  # indices 0..7, colours spread over 0..255
    cmyk = Image.fromarray(np.stack([image] * 3, axis=-1)).convert("CMYK")
    files = {}
    for name, img, fmt in (("palette.png", palette, "PNG"), ("cmyk.jpg", cmyk, "JPEG")):
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
        files[name] = buffer.getvalue()
    assert prepare(with_extra(good_folder, tmp_path, files), tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    stored = {
        i["source"]: np.asarray(Image.open(tmp_path / "out" / i["image"]), dtype=np.float32)
        for k in ("training", "validation", "test")
        for i in datalist[k]
    }
    shown = np.asarray(palette.convert("L"), dtype=np.float32)
    assert np.abs(stored["palette.png"] - shown).max() <= 1 and stored["palette.png"].max() > 100
    assert np.abs(stored["cmyk.jpg"] - image).mean() < 3  # JPEG rounding only
    record_property("bad_input_kind", "palette_cmyk_image")


@pytest.mark.parametrize("suffix, cut", [(".nii", 1), (".nii", 352), (".nii.gz", 352)])
def test_a_nifti_shorter_than_its_header_announces_is_refused(suffix, cut, tmp_path, record_property):
    """A .nii cut by up to 352 bytes (the header's size) passed the check, which forgot the data offset; a .nii.gz
    whose complete gzip stream holds too little data is refused the same way."""
    full = nifti_bytes(grey(3)[..., None].astype(np.float32), tmp_path / "full.nii")  # 352 + 24 * 20 * 4 bytes
    assert len(full) == 352 + 24 * 20 * 4
    data = full[:-cut] if suffix == ".nii" else gzip.compress(full[:-cut])  # .nii.gz: a complete stream, too short
    (tmp_path / "images").mkdir()
    Image.fromarray(grey(1)).save(tmp_path / "images" / "good.png")
    datalist = _file(tmp_path, f"cut{suffix}", data)
    message = rf"cut{re.escape(suffix)}' is truncated: {len(full) - cut} of the {len(full)} bytes"
    for verify in (True, False) if suffix == ".nii" else (True,):  # a .nii's size costs nothing to check
        with pytest.raises(ValueError, match=message):
            check_datalist(datalist, ["training"], verify_images=verify)
    record_property("bad_input_kind", "truncated_nifti")


def test_bundle_inference_refuses_a_nii_cut_within_its_header_size_and_keeps_the_earlier_output(
    bundle_data, bundle_model, tmp_path, record_property
):
    out = tmp_path / "inference"
    _inference(bundle_data, bundle_model, bundle_data / "images" / "normal_20.png", out)  # the earlier output
    before = snapshot(out)
    data = nifti_bytes(np.random.rand(20, 24, 3), tmp_path / "v.nii")
    source = tmp_path / "cut.nii"
    source.write_bytes(data[:-352])
    with pytest.raises(Exception) as info:
        _inference(bundle_data, bundle_model, source, out)
    assert_clear(info.value, ValueError, "cut.nii' is truncated")
    assert snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".inference.")]
    record_property("bad_input_kind", "truncated_nifti")


def _labelled(root: Path, bundle_data: Path, key: str, change: dict[str, Any]) -> Path:
    """A copy of the tiny dataset whose ``key`` list has its second item changed (``None``: the key removed)."""
    data = root / "data"
    shutil.copytree(bundle_data, data)
    content = json.loads((data / "datalist.json").read_text())
    item = content[key][1]
    for field, value in change.items():
        if value is None:
            item.pop(field, None)
        else:
            item[field] = value
    (data / "datalist.json").write_text(json.dumps(content))
    return data / "datalist.json"


UNLABELLED = {  # the change to the second item, the message
    "missing_label": ({"label": None}, r"'test' \(8 items\) holds 1 item\(s\) without a label: item 1 \(normal_21"),
    "label_not_0_or_1": ({"label": 2}, r"1 item\(s\) with a label other than 0 or 1: item 1 \(normal_21.png: 2\)"),
}


@pytest.mark.parametrize("kind", list(UNLABELLED))
def test_evaluation_refuses_a_test_list_with_unlabelled_items_and_keeps_the_earlier_report(
    kind, detector, bundle_data, tmp_path, record_property
):
    """An item without a label in a list the metrics are computed from would count as normal: refused, naming it,
    before any image is read; the earlier report stays as it was."""
    from monai_hqanogan.workflows import evaluate_detector

    change, message = UNLABELLED[kind]
    datalist = _labelled(tmp_path, bundle_data, "test", change)
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "report.md").write_text("the earlier report")
    before = snapshot(out)
    with pytest.raises(ValueError, match=message):
        evaluate_detector(detector, datalist, TINY_SETTINGS["resolution"], out, localisation_key=None)
    assert snapshot(out) == before
    record_property("bad_input_kind", "unlabelled_item")


def test_labelled_validation_calibration_refuses_unlabelled_items_and_keeps_the_model(
    detector, bundle_data, tmp_path, record_property
):
    from monai_hqanogan.workflows import calibrate_detector

    datalist = _labelled(tmp_path, bundle_data, "validation", {"label": None})
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"the earlier model")
    before = snapshot(model.parent)
    with pytest.raises(ValueError, match=r"'validation' \(8 items\) holds 1 item\(s\) without a label: item 1"):
        calibrate_detector(
            detector, datalist, TINY_SETTINGS["resolution"], model, protocol="labelled-validation", pixel_key=None
        )
    assert snapshot(model.parent) == before
    record_property("bad_input_kind", "unlabelled_item")


def test_a_missing_label_means_normal_where_labels_are_optional_and_a_bad_one_is_named(
    bundle_data, tmp_path, record_property
):
    from monai_hqanogan.workflows import load_split
    from monai_hqanogan.workflows.stages import is_normal_item

    assert is_normal_item({"image": "a.png"}) and is_normal_item({"image": "a.png", "label": None})
    assert not is_normal_item({"image": "a.png", "label": 1})
    with pytest.raises(ValueError, match="'a.png' has label 'tumour'; expected 0 \\(normal\\) or 1"):
        is_normal_item({"image": "a.png", "label": "tumour"})
    datalist = _labelled(tmp_path, bundle_data, "validation", {"label": None})
    split = load_split(datalist, "validation", TINY_SETTINGS["resolution"])  # the validation list's normal images
    assert split["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"'validation' \(8 items\) holds 1 item\(s\) without a label"):
        load_split(datalist, "validation", TINY_SETTINGS["resolution"], require_labels=True)
    bad = _labelled(tmp_path / "bad", bundle_data, "validation", {"label": "tumour"})
    with pytest.raises(ValueError, match=r"item 1 of 'validation' \('images/normal_17.png'\) has label 'tumour'"):
        load_split(bad, "validation", TINY_SETTINGS["resolution"])  # was a bare int() ValueError on a path
    record_property("bad_input_kind", "unlabelled_item")


def test_prepare_br35h_skips_decompression_bombs_with_a_warning(tmp_path, record_property):
    """An image beyond Pillow's limit inside a Br35H source is skipped and listed, like any unreadable image; the
    one over MAX_IMAGE_PIXELS (a warning in Pillow) is refused before decoding too."""
    from monai_hqanogan.data import prepare_br35h
    from tests.test_data_prepare import fake_br35h_files

    source = tmp_path / "br35h"
    for name, data in fake_br35h_files().items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / "no" / "bomb.png").write_bytes(bomb_png(40000))  # 1.6 G pixels: DecompressionBombError
    (source / "yes" / "big.png").write_bytes(bomb_png(10000))  # 100 M pixels: DecompressionBombWarning
    rss = maxrss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as under python -W error
        with pytest.warns(UserWarning, match="skipped 2 unreadable image.*no/bomb.png, yes/big.png"):
            path = prepare_br35h(tmp_path / "out", source=source, max_size=48, progress=False)
    assert maxrss_mb() - rss < 400  # neither was decoded
    skipped = {s["file"]: s["reason"] for s in json.loads(path.read_text())["info"]["skipped"]}
    assert set(skipped) == {"no/bomb.png", "yes/big.png"}
    assert skipped["no/bomb.png"].startswith("DecompressionBombError: ")
    assert skipped["yes/big.png"].startswith("DecompressionBombWarning: ")
    record_property("bad_input_kind", "huge_image")


def test_monailabel_heat_map_names_are_unique_per_image_and_stay_in_their_folder(tmp_path, record_property):
    """Two studies whose base names collide (case.nii.gz, case.png, sub/case.nii.gz) never share a heat map; an id
    that climbs out of the studies folder is written inside the heat-map folder all the same. The helper imports
    nothing from monailabel, so this runs everywhere."""
    from monai_hqanogan.apps.monailabel import heatmap_file_name, heatmap_path

    studies = tmp_path / "studies"
    heatmaps = studies / "anomaly_heatmaps"
    ids = ["case.nii.gz", "case.png", "case.nii", "sub/case.nii.gz", "sub__case.nii.gz", "Case.png", "séries/1"]
    paths = [heatmap_path(heatmaps, studies / i, studies) for i in ids]
    assert len({p.name.lower() for p in paths}) == len(ids)  # unique even on a case-insensitive disk
    assert all(p.parent == heatmaps and p.name.endswith(".nii.gz") for p in paths)
    assert paths[0].name.startswith("case_nii_gz-") and paths[1].name.startswith("case_png-")
    assert paths[3].name.startswith("sub__case_nii_gz-")
    assert heatmap_path(heatmaps, str(studies / "case.png"), studies) == paths[1]  # the same image: the same file
    dicom = [studies / "séries" / "1" / f"{k}.dcm" for k in range(3)]
    assert heatmap_file_name(dicom, studies) == paths[-1].name  # a series is named by its folder
    for hostile in ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../../b.png", "x\0y/..\\..\\z.png"]:
        path = heatmap_path(heatmaps, studies / hostile if hostile else hostile, studies)
        assert path.parent == heatmaps and not path.name.startswith(".") and "/" not in path.name
        assert path not in paths
    outside = heatmap_path(heatmaps, tmp_path / "elsewhere" / "case.png", studies)  # a request may name any file
    assert outside.name.startswith("case_png-") and outside != paths[1]
    record_property("bad_input_kind", "heatmap_name_collision")
