"""Real DICOM MR data through ``prepare`` and the bundle's inference (the ``dicom`` extra: pydicom).

The MR slice is pydicom's own test file ``MR_small.dcm`` (64 x 64, 16-bit, explicit VR little endian), which ships
with pydicom and is read offline. Series of several slices are made from it (non-square, so that a transposed map
would show). The detector is the tiny randomly initialised one of the other inference tests: the scores mean
nothing, but every DICOM input must give a finite score and a map on the input's own grid. CI installs the ``dicom``
extra, so the module skips only where pydicom is missing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image

from monai_hqanogan.data.prepare import main as prepare_main
from monai_hqanogan.workflows import list_inference_inputs
from tests.bundle_utils import run_tiny_inference, tiny_model_runs

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402  (after the skip: pydicom is optional)
from pydicom.uid import generate_uid  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

#: rows and columns of the slices of :func:`write_series` (MR_small.dcm is 64 x 64)
ROWS, COLUMNS = 64, 48


def mr_small() -> Path:
    """pydicom's MR test slice, from its installed test files (no download)."""
    return Path(get_testdata_file("MR_small.dcm"))


def write_series(folder: Path, slices: int = 3) -> Path:
    """``slices`` DICOM files of one series in ``folder``: MR_small.dcm's pixels cut to ``ROWS`` x ``COLUMNS`` and
    shifted a little from slice to slice, stacked 0.8 mm apart along the slice normal."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for k in range(slices):
        ds = pydicom.dcmread(mr_small())
        pixels = np.roll(ds.pixel_array, 2 * k, axis=0)[:ROWS, :COLUMNS]
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.8 * k]
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"slice_{k}.dcm")
    return folder


def grey_png(path: Path, seed: int) -> Path:
    """A small grey PNG: a noisy block whose place and size follow ``seed`` (distinct images, not near-duplicates)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((40, 36), np.uint8)
    top, left, height, width = rng.integers(0, 12), rng.integers(0, 10), rng.integers(12, 28), rng.integers(10, 26)
    image[top : top + height, left : left + width] = 120 + rng.integers(0, 80, (height, width))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tiny_model_runs(tmp_path_factory.mktemp("dicom_model"))


def scores_of(out: Path) -> dict[str, dict]:
    """The rows of ``scores.json`` by the name of their input."""
    return {Path(r["image"]).name: r for r in json.loads((out / "scores.json").read_text())["rows"]}


def assert_map_on_the_input_grid(map_path: Path, source: Path) -> None:
    """The map has the shape and affine that MONAI's ``LoadImage`` gives the input, and finite values."""
    image = LoadImage(image_only=True)(str(source))
    written = nib.load(map_path)
    assert written.shape == tuple(image.shape)
    np.testing.assert_allclose(written.affine, np.asarray(image.affine), atol=1e-4)
    assert np.isfinite(written.get_fdata()).all()


def test_inference_on_a_real_dicom_mr_file(runs, tmp_path):
    source = tmp_path / "in" / "MR_small.dcm"
    source.parent.mkdir()
    shutil.copy(mr_small(), source)
    run_tiny_inference(runs, source, tmp_path / "out")
    row = scores_of(tmp_path / "out")["MR_small.dcm"]
    assert math.isfinite(row["score"]) and row["label"] in (0, 1)
    map_path = tmp_path / "out" / "MR_small_anomaly_map.nii.gz"  # NIfTI for DICOM inputs (--output_ext auto)
    assert_map_on_the_input_grid(map_path, source)
    assert nib.load(map_path).shape == (64, 64)
    label = nib.load(tmp_path / "out" / "MR_small_anomaly_label.nii.gz")
    assert set(np.unique(label.get_fdata())) <= {0.0, 1.0}


def test_a_folder_of_dcm_files_is_one_series_and_one_volume(runs, tmp_path):
    series = write_series(tmp_path / "series")
    assert list_inference_inputs(series) == [{"image": str(series)}]  # one input, not three
    run_tiny_inference(runs, series, tmp_path / "out")
    row = scores_of(tmp_path / "out")["series"]
    assert math.isfinite(row["score"]) and len(row["slice_scores"]) == 3
    assert all(math.isfinite(s) for s in row["slice_scores"])
    map_path = tmp_path / "out" / "series_anomaly_map.nii.gz"
    assert_map_on_the_input_grid(map_path, series)
    # MONAI's layout of a DICOM series: (columns, rows, slices); a transposed map would be (64, 48, 3)
    assert nib.load(map_path).shape == (COLUMNS, ROWS, 3)


def test_series_sub_folders_next_to_other_images(runs, tmp_path):
    folder = tmp_path / "in"
    write_series(folder / "patient_a", slices=2)
    grey_png(folder / "photo.png", seed=0)
    assert [Path(i["image"]).name for i in list_inference_inputs(folder)] == ["photo.png", "patient_a"]
    run_tiny_inference(runs, folder, tmp_path / "out")
    rows = scores_of(tmp_path / "out")
    assert set(rows) == {"photo.png", "patient_a"} and all(math.isfinite(r["score"]) for r in rows.values())
    assert (tmp_path / "out" / "patient_a_anomaly_map.nii.gz").is_file()
    assert (tmp_path / "out" / "photo_anomaly_map.png").is_file()


@pytest.mark.parametrize("neighbour", ["image", "series"])
def test_loose_dcm_files_next_to_other_images_are_refused_by_name(neighbour, tmp_path):
    """Loose .dcm files in a folder that also held other images or series sub-folders were dropped without a word
    (they were read only when they were all the folder had)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(mr_small(), folder / "MR_small.dcm")
    if neighbour == "image":
        grey_png(folder / "photo.png", seed=0)
    else:
        write_series(folder / "mr_series")
    message = r"holds loose DICOM files \(MR_small.dcm\) next to .*put the \.dcm files of one series in a sub-folder"
    with pytest.raises(ValueError, match=message):
        list_inference_inputs(folder)
    (folder / "one_series").mkdir()
    shutil.move(folder / "MR_small.dcm", folder / "one_series" / "MR_small.dcm")  # as the message says
    names = sorted(Path(i["image"]).name for i in list_inference_inputs(folder))
    assert names == sorted(["one_series", "photo.png" if neighbour == "image" else "mr_series"])


def test_prepare_reads_a_dicom_series_into_slices(tmp_path):
    normal = tmp_path / "normal"
    for i in range(8):
        grey_png(normal / f"n{i}.png", seed=i)
    write_series(normal / "mr_series")
    assert prepare_main(["folder", "--normal", str(normal), "--output", str(tmp_path / "out"), "--max-size", "32",
                         "--no-progress"]) == 0  # fmt: skip
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    items = [i for k in ("training", "validation", "test") for i in datalist[k]]
    from_dicom = [i for i in items if i["source"].startswith("mr_series")]
    assert len(from_dicom) == 3 and datalist["info"]["skipped"] == []
    assert len({i["group"] for i in from_dicom}) == 1  # one volume: one group, never split
    for item in from_dicom:
        stored = np.asarray(Image.open(tmp_path / "out" / item["image"]))
        # the slice as a viewer shows it: rows x columns, the longest side at --max-size
        assert stored.shape == (32, 24) and stored.dtype == np.uint8 and np.ptp(stored) > 100
    # the stored slice is the DICOM slice, not a transposed or flipped copy
    first = next(i for i in from_dicom if i["source"] == "mr_series#0")  # slice 0 of the volume
    first = torch.as_tensor(np.asarray(Image.open(tmp_path / "out" / first["image"]), np.float32))
    original = torch.as_tensor(pydicom.dcmread(normal / "mr_series" / "slice_0.dcm").pixel_array.astype(np.float32))
    small = torch.nn.functional.interpolate(original[None, None], size=(32, 24), mode="area")[0, 0]
    assert torch.corrcoef(torch.stack([first.flatten(), small.flatten()]))[0, 1] > 0.9
