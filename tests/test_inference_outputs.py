"""One inference run writes one consistent set (issue 17, "never mix two runs"), through the bundle's inference.json.

Inputs with one file name in different folders keep their own map, label and panel; inputs that would still share an
output name are refused before any work; a run failing partway leaves the output folder as it was; an output folder
holding anything but an unchanged set of an earlier run is refused, and so is one that is, contains or lies inside an
input folder; ``scores.json`` and ``manifest.json`` are standard JSON. Every refusal and failure is checked against a
hash of every file under the output folder before and after. Issue 18: PNG inputs get PNG maps in their own
orientation (an asymmetric, non-square image), NIfTI inputs NIfTI maps, one run mixing both.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.utils.run_dir_lock import process_start_token
from monai_hqanogan.utils.staging import STAGING_OWNER
from monai_hqanogan.workflows import (
    OUTPUT_MANIFEST,
    PNG_THRESHOLD_LEVEL,
    AnomalyScoreSaver,
    InferenceOutputFolder,
    SaveAnomalyMapsd,
)
from tests.bundle_utils import assert_clear, tiny_model_runs
from tests.bundle_utils import file_hashes as hashes
from tests.bundle_utils import run_tiny_inference as infer

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------------- helpers
def png(path: Path, seed: int = 0, height: int = 24, width: int = 20) -> Path:
    """A grey uint8 ellipse image, not square."""
    image = make_ellipse_images(1, max(height, width), seed=seed)[0, 0, :height, :width].numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((image + 1) * 127.5).clip(0, 255).astype(np.uint8)).save(path)
    return path


def leftovers(out: Path) -> list[str]:
    """Hidden staging or replaced folders of ``out`` left next to it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path.name} holds the non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory) -> Path:
    """A run folder whose ``models/model.pt`` is a tiny calibrated detector built from the bundle's inference config."""
    return tiny_model_runs(tmp_path_factory.mktemp("runs"))


def assert_one_set(out: Path, inputs: int) -> dict:
    """``out`` holds exactly the files its manifest lists, unchanged, and the score files of ``inputs`` images."""
    manifest = strict_json(out / OUTPUT_MANIFEST)
    files = hashes(out)
    assert set(files) == set(manifest["files"]) | {OUTPUT_MANIFEST}
    assert all(files[name] == info["sha256"] for name, info in manifest["files"].items())
    assert len(strict_json(out / "scores.json")["rows"]) == inputs == len(manifest["inputs"])
    assert len(list(out.rglob("*_anomaly_map.*"))) == inputs == len(list(out.rglob("*_anomaly_label.*")))
    return manifest


@pytest.fixture(scope="module")
def earlier_set(model_runs, tmp_path_factory) -> Path:
    """The complete output of an earlier run on two images (copy it before use)."""
    root = tmp_path_factory.mktemp("earlier")
    for i in range(2):
        png(root / "inputs" / f"earlier_{i}.png", seed=10 + i)
    infer(model_runs, root / "inputs", root / "out")
    assert_one_set(root / "out", 2)
    return root / "out"


# ---------------------------------------------------------------------------------------------------- 1. names
def test_same_file_name_in_two_folders_gets_its_own_map_label_and_panel(model_runs, tmp_path):
    for seed, folder in enumerate(("site_a/t1", "site_b/t1")):
        png(tmp_path / "data" / folder / "case.png", seed=seed)
    datalist = tmp_path / "data" / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": "site_a/t1/case.png"}, {"image": "site_b/t1/case.png"}]}))
    out = tmp_path / "out"
    infer(model_runs, datalist, out)
    manifest = assert_one_set(out, 2)
    for site in ("site_a", "site_b"):  # the inputs' sub-folders below their common folder, as SaveImage keeps them
        for name in ("case_anomaly_map.png", "case_anomaly_label.png"):  # PNG maps for PNG inputs
            assert (out / site / "t1" / name).is_file()
        assert (out / "panels" / site / "t1" / "case_panel.png").is_file()
    maps = [np.asarray(Image.open(out / s / "t1" / "case_anomaly_map.png")) for s in ("site_a", "site_b")]
    assert not np.array_equal(*maps)  # two inputs, two maps: the second did not overwrite the first
    rows = strict_json(out / "scores.json")["rows"]
    assert sorted(Path(r["image"]).parent.parent.name for r in rows) == ["site_a", "site_b"]
    assert manifest["data_root"] == str((tmp_path / "data").resolve())
    assert leftovers(out) == []


@pytest.mark.parametrize("kind", ["extension", "letter_case", "listed_twice"])
def test_inputs_that_would_share_an_output_name_are_refused_before_any_work(kind, model_runs, earlier_set, tmp_path):
    data = tmp_path / "data"
    if kind == "extension":  # one folder, x.png and x.nii.gz: both would be x_panel.png (maps x_anomaly_map.*)
        png(data / "x.png")
        nib.save(nib.Nifti1Image(np.random.rand(20, 24).astype(np.float32), np.eye(4)), str(data / "x.nii.gz"))
        source, message = data, r"inputs '.*x\.nii\.gz' and '.*x\.png' would both be written as"
    elif kind == "letter_case":  # one file on a case-insensitive file system
        png(data / "Scan.png", seed=1)
        png(data / "scan.png", seed=2)
        source, message = data, r"inputs '.*Scan\.png' and '.*scan\.png' would both be written as"
    else:
        png(data / "x.png")
        source, message = data / "list.json", r"input '.*x\.png' is listed twice"
        source.write_text(json.dumps({"test": [{"image": "x.png"}, {"image": "x.png"}]}))
    out = tmp_path / "out"
    shutil.copytree(earlier_set, out)
    before = hashes(out)
    with pytest.raises(Exception) as info:
        infer(model_runs, source, out)
    assert_clear(info.value, ValueError, message)
    assert hashes(out) == before and leftovers(out) == []


# ---------------------------------------------------------------------------------------------------- 2. one set
@pytest.mark.parametrize("earlier", [True, False])
def test_a_run_failing_partway_leaves_the_output_folder_as_it_was(
    earlier, model_runs, earlier_set, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    png(data / "a.png", seed=1)
    png(data / "b.png", seed=2)
    Image.fromarray(np.full((24, 20), 7, np.uint8)).save(data / "c_constant.png")  # fails in the inferer, last
    out = tmp_path / "out"
    if earlier:
        shutil.copytree(earlier_set, out)
    before = hashes(out)
    staged = []
    discard = InferenceOutputFolder.discard

    def spy(self):
        staged.extend(sorted(hashes(self.staging_dir)))
        discard(self)

    monkeypatch.setattr(InferenceOutputFolder, "discard", spy)
    with pytest.raises(Exception) as info:
        infer(model_runs, data, out)
    assert_clear(info.value, ValueError, "c_constant.png'.*is constant")
    assert "a_anomaly_map.png" in staged and "b_anomaly_label.png" in staged  # it failed partway
    assert hashes(out) == before and out.exists() == earlier and leftovers(out) == []
    if earlier:
        assert_one_set(out, 2)


def test_a_completed_run_replaces_an_unchanged_earlier_set_it_wrote(model_runs, earlier_set, tmp_path):
    out = tmp_path / "runs" / "out"
    shutil.copytree(earlier_set, out)
    neighbour = png(tmp_path / "runs" / "keep.png", seed=3)  # next to the output folder: never touched
    kept = neighbour.read_bytes()
    png(tmp_path / "data" / "new.png", seed=4)
    infer(model_runs, tmp_path / "data", out)
    manifest = assert_one_set(out, 1)
    assert sorted(manifest["files"]) == [
        "new_anomaly_label.png", "new_anomaly_map.png", "panels/new_panel.png", "scores.csv", "scores.json"
    ]  # fmt: skip
    assert leftovers(out) == [] and neighbour.read_bytes() == kept


OCCUPIED = {  # kind: (what the output folder holds besides / instead of an earlier set, the message)
    "foreign_file": ("notes only", r"is not empty \(notes\.txt\) and holds no manifest\.json"),
    "old_scores": ("hand-written scores", r"is not empty \(scores\.csv, scores\.json\) and holds no manifest\.json"),
    "extra_file": ("set + notes", r"also files that set did not write \(notes\.txt\)"),
    "extra_folder": ("set + empty folder", r"also files that set did not write \(mine\)"),
    "changed_map": ("set, one map edited", r"files changed since it was written \(earlier_0_anomaly_map\.png\)"),
    "not_a_folder": ("a file", "is a file"),
}


@pytest.mark.parametrize("kind", list(OCCUPIED))
def test_an_output_folder_holding_anything_but_an_earlier_set_is_refused_before_any_work(
    kind, model_runs, earlier_set, tmp_path
):
    png(tmp_path / "data" / "new.png")
    out = tmp_path / "out"
    if kind in ("extra_file", "extra_folder", "changed_map"):
        shutil.copytree(earlier_set, out)
    if kind == "not_a_folder":
        out.write_text("a file")
    elif kind == "old_scores":
        out.mkdir()
        (out / "scores.csv").write_text("image,score\n")
        (out / "scores.json").write_text('{"images": 3}')
    elif kind == "extra_folder":
        (out / "mine").mkdir()
    elif kind == "changed_map":
        with open(out / "earlier_0_anomaly_map.png", "ab") as f:
            f.write(b"\0")
    else:
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("my notes")
    before = hashes(out) if out.is_dir() else out.read_bytes()
    with pytest.raises(Exception) as info:
        infer(model_runs, tmp_path / "data", out)
    assert_clear(info.value, FileExistsError, re.escape(str(out.resolve())) + ".*" + OCCUPIED[kind][1])
    if kind != "not_a_folder":
        assert_clear(info.value, FileExistsError, "choose a new or empty --output_dir, or move those files away")
    assert (hashes(out) if out.is_dir() else out.read_bytes()) == before and leftovers(out) == []
    if kind == "extra_folder":
        assert (out / "mine").is_dir()


# ---------------------------------------------------------------------------------------------------- 3. in/out
@pytest.mark.parametrize("kind", ["is_input", "inside_input", "contains_input", "next_to_listed_images"])
def test_an_output_folder_that_is_in_or_around_an_input_folder_is_refused_before_any_work(kind, model_runs, tmp_path):
    """The output folder is, lies inside or contains the input folder (or the folder of listed images): a later run on
    that folder would score this run's maps as images. Refused, naming both paths; nothing is written."""
    data = tmp_path / "data"
    png(data / "images" / "a.png", seed=1)
    png(data / "images" / "b.png", seed=2)
    source, images = data / "images", (data / "images").resolve()
    if kind == "is_input":
        out, message = data / "images", f"the output folder {images} is the input folder {images}:"
    elif kind == "inside_input":
        out, message = (
            data / "images" / "out",
            f"the output folder {images / 'out'} lies inside the input folder {images}:",
        )
    elif kind == "contains_input":
        out, message = data, f"the input folder {images} lies inside the output folder {data.resolve()}:"
    else:  # a datalist whose images lie in the output folder: their maps would be written next to them
        source = data / "list.json"
        source.write_text(json.dumps({"test": [{"image": "images/a.png"}, {"image": "images/b.png"}]}))
        out, message = data / "images", f"the output folder {images} is the folder of the input '{images / 'a.png'}':"
    before = hashes(tmp_path)
    with pytest.raises(Exception) as info:
        infer(model_runs, source, out)
    assert_clear(info.value, ValueError, re.escape(message))
    assert_clear(info.value, ValueError, "choose an output folder outside every input folder")
    assert hashes(tmp_path) == before and leftovers(out) == []


def test_the_output_of_an_earlier_run_is_not_scored_as_images(model_runs, earlier_set, tmp_path):
    before = hashes(earlier_set)
    with pytest.raises(Exception) as info:
        infer(model_runs, earlier_set, tmp_path / "out")
    assert_clear(info.value, ValueError, re.escape(str(earlier_set)) + "' holds the outputs of an inference run")
    assert hashes(earlier_set) == before and not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_an_output_folder_next_to_a_single_input_file_is_accepted(model_runs, tmp_path):
    """``--input scan.nii.gz --output_dir out`` in one folder: the output lies beside the input, not around it."""
    volume = np.zeros((20, 24, 3), dtype=np.float32)
    volume[4:16, 6:18, :] = 50.0 + np.random.default_rng(0).random((12, 12, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    infer(model_runs, tmp_path / "scan.nii.gz", tmp_path / "out")
    assert_one_set(tmp_path / "out", 1)
    assert nib.load(str(tmp_path / "out" / "scan_anomaly_map.nii.gz")).shape[:3] == (20, 24, 3)


# ---------------------------------------------------------------------------------------------------- 4. JSON
def test_scores_json_is_standard_json_when_scores_are_not_finite(tmp_path):
    saver = AnomalyScoreSaver(tmp_path)
    saver.rows = [
        {"image": "a.png", "score": float("nan"), "label": 0, "threshold": float("inf"), "slice": None,
         "slice_scores": None},
        {"image": "v.nii.gz", "score": float("-inf"), "label": 1, "threshold": 1.5, "slice": 0,
         "slice_scores": [float("nan"), 2.0, float("inf")]},
    ]  # fmt: skip
    csv_path, json_path = saver.write()
    rows = strict_json(json_path)["rows"]
    assert rows[0]["score"] is None and rows[0]["threshold"] is None and rows[1]["score"] is None
    assert rows[1]["slice_scores"] == [None, 2.0, None] and rows[1]["threshold"] == 1.5
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert table[0]["score"] == "" and table[0]["threshold"] == "" and table[1]["threshold"] == "1.5"


def test_files_written_into_the_output_folder_during_a_run_are_kept_and_so_is_the_new_set(tmp_path):
    """Something else writes into the output folder while the run works: the run neither mixes nor deletes; it keeps
    its complete set in the staging folder and says where."""
    image = png(tmp_path / "data" / "a.png")
    out = tmp_path / "out"
    folder = InferenceOutputFolder(out, [{"image": str(image)}], source=tmp_path / "data").check()
    staging = folder.begin()
    (staging / "scores.csv").write_text("image,score\n")
    out.mkdir()
    (out / "other.txt").write_text("written meanwhile")
    before = hashes(out)
    with pytest.raises(FileExistsError, match=re.escape(f"This run's complete set is kept in {staging}")):
        folder.commit()
    folder.discard()  # what the engine's failure handler calls: the complete set stays
    assert hashes(out) == before and sorted(hashes(staging)) == [OUTPUT_MANIFEST, "scores.csv"]


def test_a_killed_runs_staging_folder_is_removed_and_nothing_else(tmp_path):
    """A run killed with SIGKILL left ``.<out>.incomplete-*`` next to the output folder for good. The next run removes
    such a folder when its owner file names a process that has ended, and leaves a live run's folder and a look-alike
    without the owner file (the tool cannot prove it wrote that) alone; its own staging folder carries the owner
    file, which never reaches the output set."""
    image = png(tmp_path / "data" / "a.png")
    out = tmp_path / "out"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # a process that has ended: a killed run's
    ended.wait()
    runs = {"killed": ended.pid, "live": os.getppid(), "look_alike": None}
    folders = {}
    for name, pid in runs.items():
        folder = folders[name] = tmp_path / f".out.incomplete-{name}"
        (folder / "maps").mkdir(parents=True)
        (folder / "maps" / "a_anomaly_map.png").write_bytes(b"written by " + name.encode())
        if pid is not None:
            owner = {"pid": pid, "host": socket.gethostname(), "process_start": process_start_token(pid)}
            (folder / STAGING_OWNER).write_text(json.dumps(owner))
    kept = {name: hashes(folders[name]) for name in ("live", "look_alike")}
    folder = InferenceOutputFolder(out, [{"image": str(image)}], source=tmp_path / "data").check()
    assert folders["killed"].is_dir()  # check() changes nothing
    with pytest.warns(UserWarning, match=f"removed .*incomplete-killed, left by .*PID {ended.pid}"):
        staging = folder.begin()
    assert not folders["killed"].exists()
    assert {name: hashes(folders[name]) for name in kept} == kept  # byte for byte
    owner = json.loads((staging / STAGING_OWNER).read_text())
    assert owner["pid"] == os.getpid() and owner["purpose"] == "an inference run"
    (staging / "scores.csv").write_text("image,score\n")
    folder.commit()
    assert sorted(hashes(out)) == [OUTPUT_MANIFEST, "scores.csv"]  # the owner file stays behind
    assert sorted(leftovers(out)) == [".out.incomplete-live", ".out.incomplete-look_alike"]


def test_a_run_killed_between_the_two_renames_is_recovered_by_the_next(tmp_path):
    """A kill -9 between moving the earlier set aside and moving the new one into place left ``.<out>.replaced-*``
    for good. The next run restores it when the output folder is missing, removes the files its manifest lists when a
    complete set is in place, and leaves a live run's leftover and one without the tool's manifest alone."""
    image = png(tmp_path / "data" / "a.png")
    out = tmp_path / "out"

    def a_set(text: str) -> None:
        folder = InferenceOutputFolder(out, [{"image": str(image)}], source=tmp_path / "data").check()
        (folder.begin() / "scores.csv").write_text(text)
        folder.commit()

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    a_set("image,score\nearlier\n")
    killed = tmp_path / f".out.replaced-20261202-101010-{ended.pid}-abcdef"
    os.rename(out, killed)  # where the kill left it: out is missing
    live = tmp_path / f".out.replaced-20261202-101010-{os.getppid()}-abcdef"
    foreign = tmp_path / f".out.replaced-20261202-101010-{ended.pid}-123456"
    for folder in (live, foreign):
        folder.mkdir()
        (folder / "scores.csv").write_text("not this run's")
    shutil.copy(killed / OUTPUT_MANIFEST, live / OUTPUT_MANIFEST)
    kept = {live: hashes(live), foreign: hashes(foreign)}
    with pytest.warns(UserWarning, match=f"left the earlier set in {re.escape(str(killed))}: restored it"):
        a_set("image,score\nnew\n")  # restored, then replaced by the new set as usual
    assert not killed.exists() and (out / "scores.csv").read_text() == "image,score\nnew\n"
    a_set("image,score\nlater\n")
    os.rename(out, killed)
    shutil.copytree(killed, out)  # a complete set is in place again and the moved-aside copy stayed
    (killed / "mine.txt").write_text("the user's")  # not listed in its manifest: never deleted
    with pytest.warns(UserWarning, match=f"removed {re.escape(str(killed))}, an earlier set"):
        a_set("image,score\nlast\n")
    assert sorted(hashes(killed)) == ["mine.txt"]
    assert {folder: hashes(folder) for folder in kept} == kept


# ---------------------------------------------------------------------------------------------------- 5. formats
def block_png(path: Path, height: int = 24, width: int = 32) -> Path:
    """A dark, non-square grey image with one bright block at rows 6-10, columns 15-20 (as Pillow reads it): a
    transposed map would put the block at rows 15-20, columns 6-10, in a 32 x 24 array."""
    image = np.zeros((height, width), np.uint8)
    image[6:11, 15:21] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_png_inputs_get_png_maps_in_their_own_orientation(model_runs, tmp_path):
    """Issue 18: with the defaults, a PNG input's map and label are PNG files of the input's (rows, columns), the
    map's mass on the input's block (the foreground rule zeroes the map away from it); the PNG values are the map
    relative to the pixel threshold in scores.json (128 = threshold, label 255 exactly where the map is >= 128),
    and the same run with ``output_ext=".nii.gz"`` gives the raw map in MONAI's (width, height) layout."""
    image = block_png(tmp_path / "data" / "block.png")
    out = tmp_path / "out"
    infer(model_runs, image, out)
    manifest = assert_one_set(out, 1)
    assert sorted(manifest["files"]) == [
        "block_anomaly_label.png", "block_anomaly_map.png", "panels/block_panel.png", "scores.csv", "scores.json"
    ]  # fmt: skip
    amap = np.asarray(Image.open(out / "block_anomaly_map.png"))
    label = np.asarray(Image.open(out / "block_anomaly_label.png"))
    assert amap.shape == label.shape == (24, 32) and amap.dtype == label.dtype == np.uint8
    assert amap.max() > 0 and set(np.unique(label)) <= {0, 255}
    rows, cols = np.nonzero(amap)
    weights = amap[rows, cols].astype(np.float64)
    centre = (np.average(rows, weights=weights), np.average(cols, weights=weights))
    assert 6 <= centre[0] <= 10 and 15 <= centre[1] <= 20, centre  # on the block, not at rows 15-20 / cols 6-10
    # the map's support (the block's foreground, dilated) covers the block and keeps off the far rows and columns
    assert rows.min() <= 6 and rows.max() >= 10 and cols.min() <= 15 and cols.max() >= 20
    assert rows.max() < 18 and 6 < cols.min() and cols.max() < 29, (rows.max(), cols.min(), cols.max())
    assert np.array_equal(label == 255, amap >= 128)
    scores = strict_json(out / "scores.json")
    threshold = scores["pixel_threshold"]
    assert threshold > 0 and np.isfinite(scores["rows"][0]["score"])

    raw = tmp_path / "raw"
    infer(model_runs, image, raw, output_ext=".nii.gz")
    raw_map = np.asarray(nib.load(str(raw / "block_anomaly_map.nii.gz")).dataobj)
    assert raw_map.shape == (32, 24)  # MONAI's (width, height): the transpose of the image as Pillow reads it
    expected = np.clip(np.floor(raw_map.T * 128 / threshold), 0, 255)
    np.testing.assert_allclose(amap.astype(np.float64), expected, atol=1)


def test_a_folder_of_png_and_nifti_inputs_gets_maps_of_each_inputs_format(model_runs, tmp_path):
    """``output_ext="auto"``: PNG maps for the PNG, NIfTI maps with the input's affine for the NIfTI volume, in one
    run and one manifest; a NIfTI input's maps are unchanged by the PNG rule."""
    data = tmp_path / "data"
    block_png(data / "slice.png")
    volume = np.zeros((20, 24, 3), dtype=np.float32)
    volume[4:16, 6:18, :] = 50.0 + np.random.default_rng(0).random((12, 12, 3), dtype=np.float32)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), str(data / "volume.nii.gz"))
    out = tmp_path / "out"
    infer(model_runs, data, out)
    manifest = assert_one_set(out, 2)
    assert {name for name in manifest["files"] if "_anomaly_" in name} == {
        "slice_anomaly_map.png", "slice_anomaly_label.png", "volume_anomaly_map.nii.gz", "volume_anomaly_label.nii.gz"
    }  # fmt: skip
    written = nib.load(str(out / "volume_anomaly_map.nii.gz"))
    assert written.shape == (20, 24, 3) and np.allclose(written.affine, affine)
    assert np.asarray(written.dataobj).dtype == np.float32
    label = np.asarray(nib.load(str(out / "volume_anomaly_label.nii.gz")).dataobj)
    assert label.shape == (20, 24, 3) and set(np.unique(label)) <= {0, 1}
    assert np.asarray(Image.open(out / "slice_anomaly_map.png")).shape == (24, 32)


@pytest.mark.parametrize("kind", ["unknown", "png_of_a_volume"])
def test_an_output_format_that_cannot_hold_the_maps_is_refused_before_any_work(kind, model_runs, tmp_path):
    data = tmp_path / "data"
    block_png(data / "slice.png")
    if kind == "unknown":
        ext, message = ".jpg", r"output_ext must be one of 'auto', '\.nii\.gz', '\.nii', '\.png', got '\.jpg'"
    else:
        nib.save(nib.Nifti1Image(np.random.rand(20, 24, 3).astype(np.float32), np.eye(4)), str(data / "v.nii.gz"))
        ext, message = ".png", r"output_ext '\.png' cannot hold the map of the 3D input '.*v\.nii\.gz'"
    before = hashes(tmp_path)
    with pytest.raises(Exception) as info:
        infer(model_runs, data, tmp_path / "out", output_ext=ext)
    assert_clear(info.value, ValueError, message)
    assert hashes(tmp_path) == before and not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_png_map_levels_are_relative_to_the_pixel_threshold():
    threshold = 0.3  # not a power of two: 0.3 * (128 / 0.3) rounds below 128 in float32
    values = torch.tensor([[-1.0, 0.0, np.nextafter(np.float32(0.3), np.float32(0)), 0.3, 0.46, 0.6, 5.0, np.nan]])
    levels = SaveAnomalyMapsd.png_levels(values, threshold)
    assert levels.dtype == torch.uint8
    assert levels.tolist() == [[0, 0, 127, 128, 196, 255, 255, 0]]
    assert PNG_THRESHOLD_LEVEL == 128
