"""Size caps and shapes the networks cannot use (issue 17, items 5 and 6), at every entry point: the bundle's folder
inference (``inference.json``: ``list_inference_inputs``, the inferer, the writers), ``python -m
monai_hqanogan.data.prepare folder`` and the training data check (``check_datalist``).

Every image that passes the input check is written back (an RGBA PNG, a NIfTI with channels in its 4th dimension);
shapes the networks cannot use (a 1-px side, an aspect ratio whose short side rounds to 0 or 1 px at the model
resolution) and images beyond the size caps (``MAX_SLICE_PIXELS``, ``MAX_VOLUME_VOXELS``, read from the header: a
NIfTI whose header claims a huge shape over a few bytes of data is never loaded) are refused before any work, naming
the file, its shape and the cap; prepare skips them with its warning and an ``info.skipped`` entry. Each case checks
that nothing earlier changed (a hash of every file under the output and input folders, before and after) and
records its kind (``record_property``; counted in the terminal summary, see ``tests/conftest.py``).
"""

from __future__ import annotations

import gzip
import json
import re
import resource
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.data.prepare import main as prepare_main
from monai_hqanogan.workflows import (
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    SliceAnomalyInferer,
    check_datalist,
    check_image_shape,
    image_header_shape,
    list_inference_inputs,
    verify_image_file,
)
from tests.bundle_utils import BUNDLE, TINY_SETTINGS, assert_clear, tiny_model_runs
from tests.bundle_utils import file_hashes as hashes
from tests.bundle_utils import run_tiny_inference as infer

pytestmark = pytest.mark.usefixtures("single_thread")

RESOLUTION = TINY_SETTINGS["resolution"]  # 16


# ---------------------------------------------------------------------------------------------------- helpers
def grey(seed: int = 0, height: int = 24, width: int = 20) -> np.ndarray:
    """A uint8 [H, W] ellipse image, not square."""
    image = make_ellipse_images(1, max(height, width), seed=seed)[0, 0, :height, :width].numpy()
    return ((image + 1) * 127.5).clip(0, 255).astype(np.uint8)


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def header_only_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI whose header claims ``shape`` (float32) over 64 bytes of data (a few hundred bytes on disk)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 64  # the header, no extension, then almost no data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def leftovers(out: Path) -> list[str]:
    """Hidden staging or replaced folders of ``out`` left next to it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# the refusals, each as (file name, how to write it into a folder, the message's pattern)
THIN = r"a side of 1 px is too thin for the networks, which need at least 2 px"
REFUSED = {
    "too_thin_image": ("dot.png", lambda f: png(f / "dot.png", np.array([[10, 200]], np.uint8)), THIN),
    "extreme_aspect_ratio": (
        "strip.png",
        lambda f: png(f / "strip.png", np.tile(np.arange(0, 250, 5, dtype=np.uint8), (2, 100))),  # 2 x 5000
        r"2D image of 5000 x 2 pixels: with its longest side resized to {R} px .*short side would be 0 px, fewer than "
        r"2: the aspect ratio 5000:2 is too extreme",
    ),
    "huge_nifti_header": (
        "claims.nii.gz",
        lambda f: header_only_nifti(f / "claims.nii.gz", (20000, 20000)),
        rf"2D image of 20000 x 20000 pixels, 400000000 in all, more than {MAX_SLICE_PIXELS} pixels: too large to "
        r"load safely. Downsample or crop it first, or raise the cap max_slice_pixels",
    ),
    "huge_volume": (
        "sparse.nii.gz",
        lambda f: header_only_nifti(f / "sparse.nii.gz", (8192, 8192, 4096)),
        rf"shape \(8192, 8192, 4096\) with 1 channel\(s\): 274877906944 voxels, more than the cap of "
        rf"{MAX_VOLUME_VOXELS} \(max_volume_voxels\): too large to load safely. Downsample or crop it first.*raise "
        r"the cap max_volume_voxels",
    ),
    "wrong_dimensions": (
        "five_d.nii.gz",
        lambda f: nifti(f / "five_d.nii.gz", np.random.rand(24, 20, 1, 2, 3)),
        r"has 4 spatial dimensions \(shape \(24, 20, 1, 2\), 3 channel\(s\)\); expected a 2D image or a 3D volume",
    ),
}


def refused_message(kind: str, resolution: int) -> str:
    return REFUSED[kind][2].replace("{R}", str(resolution))


# ---------------------------------------------------------------------------------------------------- the rules
def test_check_image_shape_names_the_rule_the_shape_and_the_cap():
    assert check_image_shape((20, 24), "x") == (20, 24)
    assert check_image_shape((24, 20, 5), "x", slice_axis=0) == (20, 5)
    assert check_image_shape((40, 5), "x", resolution=16) == (40, 5)  # 5 * 16 / 40 = 2 px at the model resolution
    with pytest.raises(ValueError, match=r"'v' has slices of 20 x 1 pixels \(shape \(24, 20, 1\), sliced along axis "
                       r"0\): a side of 1 px .*or slice it along another axis \(slice_axis\)"):  # fmt: skip
        check_image_shape((24, 20, 1), "'v'", slice_axis=0)
    with pytest.raises(ValueError, match="short side would be 1 px, fewer than 2"):
        check_image_shape((2, 40), "x", resolution=16)  # 0.8 rounds to 1
    with pytest.raises(ValueError, match="short side would be 0 px"):
        check_image_shape((2, 64), "x", resolution=16)  # 0.5 rounds to 0 (MONAI's Resize: round half to even)
    with pytest.raises(ValueError, match=r"more than 1000 pixels: too large"):
        check_image_shape((40, 40), "x", max_slice_pixels=1000)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\) with 3 channel\(s\): 1536 voxels, more than the cap of 1000"):
        check_image_shape((8, 8, 8), "x", channels=3, max_volume_voxels=1000)
    with pytest.raises(ValueError, match="it has no 2D slice to score"):
        check_image_shape((8, 8, 0), "x")
    assert MIN_SIDE == 2 and MAX_VOLUME_VOXELS >= 512**3 and MAX_SLICE_PIXELS == 8192**2


@pytest.mark.parametrize(
    "shape, expected",
    [((24, 20), ((24, 20), 1)), ((24, 20, 5), ((24, 20, 5), 1)), ((24, 24, 1, 3), ((24, 24, 1), 3))],
)
def test_image_header_shape_reads_the_header_alone(shape, expected, tmp_path):
    assert image_header_shape(nifti(tmp_path / "a.nii.gz", np.random.rand(*shape))) == expected
    assert image_header_shape(header_only_nifti(tmp_path / "b.nii.gz", (8192, 8192, 4096))) == ((8192, 8192, 4096), 1)
    rgba = np.dstack([grey()] * 3 + [np.full((24, 20), 255, np.uint8)])
    assert image_header_shape(png(tmp_path / "c.png", rgba, "RGBA")) == ((20, 24), 4)  # MONAI's (W, H) layout


def test_the_inferer_refuses_a_slice_too_thin_at_the_model_resolution_naming_the_file():
    class NeverCalled(torch.nn.Module):
        def detect(self, images):
            raise AssertionError("the shape is refused before the detector runs")

    image = MetaTensor(torch.rand(1, 1, 2, 40), meta={"filename_or_obj": "strip.png"})
    with pytest.raises(ValueError, match=r"image 'strip.png' is a 2D image of 2 x 40 pixels: .*would be 1 px"):
        SliceAnomalyInferer(resolution=RESOLUTION)(image, NeverCalled())


# ---------------------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def model_runs(tmp_path_factory) -> Path:
    """A run folder whose ``models/model.pt`` is a tiny calibrated detector built from the bundle's inference config."""
    return tiny_model_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def earlier_set(model_runs, tmp_path_factory) -> Path:
    """The complete output of an earlier run on two images (copy it before use)."""
    root = tmp_path_factory.mktemp("earlier")
    for i in range(2):
        png(root / "inputs" / f"earlier_{i}.png", grey(10 + i))
    infer(model_runs, root / "inputs", root / "out")
    return root / "out"


def _map(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj) if path.name.endswith(".nii.gz") else np.asarray(Image.open(path))


@pytest.mark.parametrize("ext", [".nii.gz", ".png"])
def test_an_rgba_png_is_scored_and_its_map_written_on_its_spatial_grid(ext, model_runs, tmp_path, record_property):
    """An opaque RGBA PNG of a grey image gets the map of the grey PNG (the channels are averaged to one; a constant
    alpha only shifts the intensities, which each image's own window undoes), written as one channel on its grid;
    it failed in MONAI's NIfTI writer after the work was done."""
    data = tmp_path / "data"
    image = grey(3)
    png(data / "rgba.png", np.dstack([image] * 3 + [np.full(image.shape, 255, np.uint8)]), "RGBA")
    png(data / "grey.png", image)
    before = hashes(data)
    infer(model_runs, data, tmp_path / "out", output_ext=ext)
    out = tmp_path / "out"
    maps = {name: _map(out / f"{name}_anomaly_map{ext}") for name in ("rgba", "grey")}
    labels = {name: _map(out / f"{name}_anomaly_label{ext}") for name in ("rgba", "grey")}
    shape = (24, 20) if ext == ".png" else (20, 24)  # a PNG as (H, W); a NIfTI in MONAI's (W, H) layout
    assert maps["rgba"].shape == labels["rgba"].shape == shape == maps["grey"].shape
    tolerance = 1 if ext == ".png" else 1e-3  # 8-bit maps may round apart by one level
    np.testing.assert_allclose(maps["rgba"].astype(np.float32), maps["grey"].astype(np.float32), atol=tolerance)
    rows = {Path(r["image"]).name: r["score"] for r in json.loads((out / "scores.json").read_text())["rows"]}
    assert rows["rgba.png"] == pytest.approx(rows["grey.png"], rel=1e-4)
    assert hashes(data) == before and leftovers(out) == []
    record_property("bad_input_kind", "rgba_image")


def test_a_nifti_with_channels_in_its_4th_dimension_is_scored_and_written_on_its_spatial_grid(
    model_runs, tmp_path, record_property
):
    """A 24 x 24 x 1 x 3 NIfTI is read as MONAI reads it (a 24 x 24 x 1 grid, 3 channels in the 4th dimension),
    its channels averaged like colour channels; its map keeps the grid and the affine (the singleton slice
    dimension squeezed by the NIfTI writer) and equals the map of the 24 x 24 image of those channels' mean; it
    failed in MONAI's writer after the work was done."""
    data = tmp_path / "data"
    affine = np.diag([0.5, 0.8, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 2.0]
    base = grey(5, 24, 24).astype(np.float32)
    channels = np.stack([base, base + 20, base + 40], axis=-1)[:, :, None, :]  # [24, 24, 1, 3]
    nifti(data / "four_d.nii.gz", channels, affine)
    nifti(data / "mean.nii.gz", channels.mean(axis=-1)[:, :, 0], affine)
    before = hashes(data)
    infer(model_runs, data, tmp_path / "out")
    out = tmp_path / "out"
    written = nib.load(str(out / "four_d_anomaly_map.nii.gz"))
    assert written.shape == (24, 24) and np.allclose(written.affine, affine)
    assert nib.load(str(out / "four_d_anomaly_label.nii.gz")).shape == (24, 24)
    np.testing.assert_allclose(
        np.asarray(written.dataobj), np.asarray(nib.load(str(out / "mean_anomaly_map.nii.gz")).dataobj), atol=1e-4
    )
    assert hashes(data) == before and leftovers(out) == []
    record_property("bad_input_kind", "nifti_with_channels")


@pytest.mark.parametrize("kind", list(REFUSED))
def test_inference_refuses_before_any_work_and_keeps_the_earlier_output(
    kind, model_runs, earlier_set, tmp_path, record_property
):
    """A folder holding good images and one the networks cannot use (or beyond a cap) is refused in
    ``initialize``, naming the file: nothing is scored, the earlier set stays byte-identical, nothing is staged, and
    a NIfTI whose header claims a huge shape is never loaded."""
    name, make, _ = REFUSED[kind]
    data = tmp_path / "data"
    png(data / "a_good.png", grey(1))
    make(data)
    out = tmp_path / "out"
    shutil.copytree(earlier_set, out)
    before, inputs = hashes(out), hashes(data)
    rss = maxrss_mb()
    with pytest.raises(Exception) as info:
        infer(model_runs, data, out)
    where = rf"image listed for inference '[^']*{re.escape(name)}' .*"
    assert_clear(info.value, ValueError, where + refused_message(kind, RESOLUTION))
    assert maxrss_mb() - rss < 400  # the huge headers were never loaded
    assert hashes(out) == before and hashes(data) == inputs and leftovers(out) == []
    record_property("bad_input_kind", kind)


def test_inference_caps_are_arguments_of_the_config(model_runs, earlier_set, tmp_path, record_property):
    """``--max_volume_voxels`` / ``--max_slice_pixels`` lower or raise the caps of one run; a cap that is not a
    positive integer is refused before any work."""
    data = tmp_path / "data"
    nifti(data / "vol.nii.gz", np.random.rand(24, 20, 6) * 100)
    out = tmp_path / "out"
    shutil.copytree(earlier_set, out)
    before = hashes(out)
    for extra, message in [
        ({"max_volume_voxels": 1000}, r"vol.nii.gz' has shape \(24, 20, 6\) with 1 channel\(s\): 2880 voxels, more "
                                      r"than the cap of 1000 \(max_volume_voxels\)"),
        ({"max_slice_pixels": 100}, r"vol.nii.gz' has slices of 24 x 20 pixels .* more than 100 pixels: too large"),
        ({"max_volume_voxels": "lots"}, r"max_volume_voxels must be a positive integer \(a number of pixels\), got "
                                        r"'lots'"),
    ]:  # fmt: skip
        with pytest.raises(Exception) as info:
            infer(model_runs, data, out, **extra)
        assert_clear(info.value, ValueError, message)
        assert hashes(out) == before and leftovers(out) == []
    infer(model_runs, data, out, max_volume_voxels=2880, max_slice_pixels=480)  # exactly at the caps: scored
    assert nib.load(str(out / "vol_anomaly_map.nii.gz")).shape == (24, 20, 6)
    record_property("bad_input_kind", "huge_volume")


def test_list_inference_inputs_checks_the_slices_along_the_slice_axis(tmp_path):
    """A 24 x 20 x 1 volume is one 24 x 20 slice along the last axis, but 20 x 1 slices along the first."""
    path = nifti(tmp_path / "flat.nii.gz", np.random.rand(24, 20, 1))
    assert len(list_inference_inputs(path, resolution=RESOLUTION)) == 1
    with pytest.raises(ValueError, match=r"slices of 20 x 1 pixels \(shape \(24, 20, 1\), sliced along axis 0\)"):
        list_inference_inputs(path, resolution=RESOLUTION, slice_axis=0)
    with pytest.raises(ValueError, match="slice_axis"):
        list_inference_inputs(path, slice_axis=5)


# ---------------------------------------------------------------------------------------------------- prepare
@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("normal")
    for i in range(8):
        png(folder / f"n{i}.png", grey(i))
    return folder


def prepare(folder: Path, out: Path, *extra: str) -> int:
    return prepare_main(
        ["folder", "--normal", str(folder), "--output", str(out), "--max-size", "32", "--no-progress", *extra]
    )


@pytest.mark.parametrize("kind", list(REFUSED))
def test_prepare_skips_what_the_networks_cannot_use_before_reading_it(kind, good_folder, tmp_path, record_property):
    """Skipped with prepare's warning and an ``info.skipped`` entry naming the file, its shape and the rule or cap
    (a 2 x 5000 PNG was stored as 1 x 256 and crashed training later; a NIfTI header claiming 20000 x 20000 took
    5 GB of memory), never loaded; the input folder is unchanged."""
    name, make, _ = REFUSED[kind]
    folder = tmp_path / "normal"
    shutil.copytree(good_folder, folder)
    make(folder)
    inputs = hashes(folder)
    rss = maxrss_mb()
    with pytest.warns(UserWarning, match=rf"skipped 1 unusable file.*too thin.*normal/{re.escape(name)}"):
        assert prepare(folder, tmp_path / "out") == 0
    assert maxrss_mb() - rss < 400
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    (skipped,) = datalist["info"]["skipped"]
    assert skipped["file"] == f"normal/{name}"
    assert re.search(rf"^_UnusableFile: image {re.escape(name)} .*" + refused_message(kind, 32), skipped["reason"])
    sources = {i["source"] for k in ("training", "validation", "test") for i in datalist[k]}
    assert sources == {f"n{i}.png" for i in range(8)} and hashes(folder) == inputs
    record_property("bad_input_kind", kind)


def test_prepare_stores_a_nifti_with_channels_as_one_grey_image(good_folder, tmp_path, record_property):
    folder = tmp_path / "normal"
    shutil.copytree(good_folder, folder)
    base = grey(20, 24, 24).astype(np.float32)
    nifti(folder / "four_d.nii.gz", np.stack([base, base, base], axis=-1)[:, :, None, :])
    inputs = hashes(folder)
    assert prepare(folder, tmp_path / "out") == 0
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    (item,) = [i for k in ("training", "validation", "test") for i in datalist[k] if i["source"] == "four_d.nii.gz"]
    assert np.asarray(Image.open(tmp_path / "out" / item["image"])).shape == (24, 24)
    assert datalist["info"]["skipped"] == [] and hashes(folder) == inputs
    record_property("bad_input_kind", "nifti_with_channels")


def test_prepare_caps_are_command_line_options(good_folder, tmp_path, capsys, record_property):
    """``--max-volume-voxels`` lowers (or raises) the cap: a volume over it is skipped, naming the cap; other caps
    are part of the settings, so a rerun with the default caps prepares again instead of reusing the output."""
    folder = tmp_path / "normal"
    shutil.copytree(good_folder, folder)
    volume = np.zeros((24, 20, 6), np.float32)
    volume[4:20, 4:16] = 50 + np.random.rand(16, 12, 6)
    nifti(folder / "vol.nii.gz", volume)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipped 1 unusable file.*normal/vol.nii.gz"):
        assert prepare(folder, out, "--max-volume-voxels", "1000") == 0
    (skipped,) = json.loads((out / "datalist.json").read_text())["info"]["skipped"]
    assert "2880 voxels, more than the cap of 1000 (max_volume_voxels)" in skipped["reason"]
    first = hashes(out)
    capsys.readouterr()
    assert prepare(folder, out) == 1  # other settings than the earlier preparation: refused, nothing changed
    assert "size_caps" in capsys.readouterr().err and hashes(out) == first
    assert prepare(folder, out, "--overwrite") == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["info"]["skipped"] == [] and any(
        i["source"].startswith("vol.nii.gz#") for k in ("training", "validation", "test") for i in datalist[k]
    )
    capsys.readouterr()
    assert prepare(folder, out, "--max-slice-pixels", "0") == 1
    assert "max_slice_pixels must be a positive integer" in capsys.readouterr().err
    record_property("bad_input_kind", "huge_volume")


# ---------------------------------------------------------------------------------------------------- training data
@pytest.mark.parametrize("kind", ["too_thin_image", "huge_nifti_header", "huge_volume"])
def test_the_training_data_check_uses_the_same_caps_and_names_the_file(kind, tmp_path, record_property):
    """``check_datalist`` (train_generator.json, train_encoder.json) refuses from the header, with the constants of
    ``data/image_files.py``; a 1-px side (what prepare stored for a 2 x 5000 PNG) is named before training."""
    name, make, _ = REFUSED[kind]
    png(tmp_path / "good.png", grey(1))
    make(tmp_path)
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "good.png"}, {"image": name}]}))
    before = hashes(tmp_path)
    rss = maxrss_mb()
    with pytest.raises(ValueError, match=rf"image listed in the datalist '[^']*{re.escape(name)}' .*"
                       + refused_message(kind, RESOLUTION)):  # fmt: skip
        check_datalist(tmp_path / "datalist.json", ["training"])
    assert maxrss_mb() - rss < 400 and hashes(tmp_path) == before
    record_property("bad_input_kind", kind)


def test_the_training_data_check_refuses_a_side_that_rounds_away_at_the_model_resolution(tmp_path):
    """A 2 x 256 image passes the 2-px rule in the file but its short side rounds to 0 px at resolution 64, which
    would crash the resize in training: the train configs pass their resolution, so it is named before any work."""
    png(tmp_path / "good.png", grey(1))
    png(tmp_path / "strip.png", np.full((2, 256), 128, np.uint8))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "good.png"}, {"image": "strip.png"}]}))
    check_datalist(tmp_path / "datalist.json", ["training"])  # no resolution: only the file's own sides count
    with pytest.raises(ValueError, match=r"strip\.png"):
        check_datalist(tmp_path / "datalist.json", ["training"], resolution=64)
    for name in ("train_generator", "train_encoder"):
        config = json.loads((BUNDLE / "configs" / f"{name}.json").read_text())
        assert "resolution=@resolution" in config["training_items"], name


# ---------------------------------------------------------------------------------------------------- NRRD, MHA, DICOM
def nrrd_file(path: Path, sizes: tuple[int, ...], kinds: str | None = None, data: bytes = b"\0" * 64) -> Path:
    """An NRRD file whose text header claims ``sizes`` (uint8, raw) over ``data``."""
    lines = ["NRRD0004", "# a comment: with a colon", "type: uint8", f"dimension: {len(sizes)}"]
    lines += [f"sizes: {' '.join(map(str, sizes))}", "encoding: raw", "key:=value: of a pair"]
    lines += [f"kinds: {kinds}"] if kinds else []
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + data)
    return path


def mha_file(path: Path, sizes: tuple[int, ...], channels: int = 1, data: bytes = b"\0" * 64) -> Path:
    """A MetaImage file whose header claims ``sizes`` (uint8) with ``channels`` over ``data``."""
    lines = ["ObjectType = Image", f"NDims = {len(sizes)}", f"DimSize = {' '.join(map(str, sizes))}"]
    lines += [f"ElementNumberOfChannels = {channels}"] if channels != 1 else []
    lines += ["ElementType = MET_UCHAR", "ElementDataFile = LOCAL"]
    path.write_bytes(("\n".join(lines) + "\n").encode() + data)
    return path


HUGE_SLICE = rf"2D image of 20000 x 20000 pixels, 400000000 in all, more than {MAX_SLICE_PIXELS} pixels: too large"
HUGE_VOLUME = (
    rf"shape \(8192, 8192, 4096\) with 1 channel\(s\): 274877906944 voxels, more than the cap of {MAX_VOLUME_VOXELS} "
    r"\(max_volume_voxels\): too large to load safely"
)
HEADER_REFUSED = {
    "huge_nrrd_header": ("claims.nrrd", lambda f: nrrd_file(f / "claims.nrrd", (20000, 20000)), HUGE_SLICE),
    "huge_nrrd_volume": ("sparse.nrrd", lambda f: nrrd_file(f / "sparse.nrrd", (8192, 8192, 4096)), HUGE_VOLUME),
    "huge_mha_header": ("claims.mha", lambda f: mha_file(f / "claims.mha", (20000, 20000)), HUGE_SLICE),
    "huge_mha_volume": ("sparse.mha", lambda f: mha_file(f / "sparse.mha", (8192, 8192, 4096)), HUGE_VOLUME),
}


@pytest.mark.parametrize("kind", list(HEADER_REFUSED))
def test_nrrd_and_mha_headers_are_capped_before_any_read(kind, tmp_path, record_property):
    """An NRRD or MHA file whose text header claims a huge shape over 64 bytes of data is refused from its header
    by the caps NIfTI has, at inference's input check and at the training data check, naming the file."""
    name, make, message = HEADER_REFUSED[kind]
    data = tmp_path / "data"
    data.mkdir()
    png(data / "a_good.png", grey(1))
    make(data)
    before = hashes(data)
    rss = maxrss_mb()
    with pytest.raises(ValueError, match=rf"image listed for inference '[^']*{re.escape(name)}' .*" + message):
        list_inference_inputs(data, resolution=RESOLUTION)
    (data / "datalist.json").write_text(json.dumps({"training": [{"image": "a_good.png"}, {"image": name}]}))
    with pytest.raises(ValueError, match=rf"image listed in the datalist '[^']*{re.escape(name)}' .*" + message):
        check_datalist(data / "datalist.json", ["training"])
    assert maxrss_mb() - rss < 400 and {k: v for k, v in hashes(data).items() if k != "datalist.json"} == before
    record_property("bad_input_kind", kind)


def test_nrrd_and_mha_header_shapes_follow_monais_layout(tmp_path):
    """Sizes in file order (as MONAI's ITKReader reads them); non-spatial NRRD kinds and MHA channels are channels;
    a small file that is within the caps passes (a 3D volume only where volumes are allowed)."""
    assert image_header_shape(nrrd_file(tmp_path / "a.nrrd", (5, 7, 3))) == ((5, 7, 3), 1)
    rgb = nrrd_file(tmp_path / "rgb.nrrd", (3, 24, 20), kinds="RGB-color domain domain", data=b"\0" * 1440)
    assert image_header_shape(rgb) == ((24, 20), 3)
    assert image_header_shape(mha_file(tmp_path / "b.mha", (24, 20), channels=3)) == ((24, 20), 3)
    volume = mha_file(tmp_path / "v.mha", (24, 20, 4), data=b"\0" * 1920)
    for path in (rgb, volume):
        assert verify_image_file(path, resolution=RESOLUTION) == path
    with pytest.raises(ValueError, match=r"v\.mha' is a 3D volume \(shape \(24, 20, 4\)\), but this step needs 2D"):
        verify_image_file(volume, spatial_2d=True)
    with pytest.raises(ValueError, match=r"has slices of 24 x 20 pixels .* more than 100 pixels"):
        verify_image_file(volume, max_slice_pixels=100)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("magic.nrrd", b"NRRX0004\nsizes: 4 4\n\n", "does not start with the NRRD magic"),
        ("nosizes.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\n\n", "has no 'sizes' field"),
        ("twice.nrrd", b"NRRD0004\nsizes: 4 4\nsizes: 99999 99999\n\n", "gives 'sizes' twice"),
        ("words.nrrd", b"NRRD0004\nsizes: 4 lots\n\n", "its sizes is '4 lots'"),
        ("dimension.nrrd", b"NRRD0004\ndimension: 3\nsizes: 4 4\n\n", "dimension '3' does not match its 2 sizes"),
        ("endless.nrrd", b"NRRD0004\nsizes: 4 4\n" + b"# padding\n" * 7000, "does not end within its first 65536"),
        ("nodims.mha", b"ObjectType = Image\nElementDataFile = LOCAL\n", "has no 'DimSize' field"),
        ("negative.mha", b"DimSize = 4 -4\nElementDataFile = LOCAL\n", "its DimSize is '4 -4'"),
        ("ndims.mha", b"NDims = 3\nDimSize = 4 4\nElementDataFile = LOCAL\n", "NDims '3' does not match"),
    ],
)
def test_unreadable_nrrd_and_mha_headers_are_named(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"image '[^']*{re.escape(name)}' is not a readable .*{message}"):
        verify_image_file(path)


def dicom_file(path: Path, rows: int, columns: int, frames: int | None = None, series: str = "1.2.3.4") -> Path:
    """A DICOM MR file whose header claims ``rows`` x ``columns`` (x ``frames``) over 64 bytes of pixel data."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.Rows, ds.Columns = series, "MR", rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 8, 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 64
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)
    return path


def test_dicom_headers_are_capped_before_any_read(tmp_path, record_property):
    """With pydicom installed, Rows x Columns (x NumberOfFrames, summed over a series folder) are read with
    ``stop_before_pixels`` and held to the caps NIfTI has, as MONAI's PydicomReader lays them out."""
    small = dicom_file(tmp_path / "small.dcm", 5, 7)
    assert image_header_shape(small) == ((7, 5), 1)  # MONAI's PydicomReader swaps rows and columns
    assert image_header_shape(dicom_file(tmp_path / "multi.dcm", 5, 7, frames=3)) == ((5, 3, 7), 1)
    for k in range(4):
        dicom_file(tmp_path / "series" / f"{k}.dcm", 24, 20)
    assert image_header_shape(tmp_path / "series") == ((20, 24, 4), 1)
    assert verify_image_file(tmp_path / "series", resolution=RESOLUTION) == tmp_path / "series"
    huge = dicom_file(tmp_path / "huge" / "claims.dcm", 20000, 20000)
    for k in range(2):  # two files of 8192 x 8192 x 2048 frames: a series of 8192 x 8192 x 4096
        dicom_file(tmp_path / "sparse" / f"{k}.dcm", 8192, 8192, frames=2048)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"not DICOM at all")
    before = hashes(tmp_path)
    rss = maxrss_mb()
    with pytest.raises(ValueError, match=rf"image listed for inference '[^']*claims\.dcm' .*{HUGE_SLICE}"):
        list_inference_inputs(huge)
    with pytest.raises(ValueError, match=r"image '[^']*huge' .*2D image of 20000 x 20000 pixels"):
        verify_image_file(tmp_path / "huge")  # the series folder
    with pytest.raises(ValueError, match=r"image '[^']*sparse' has shape \(8192, 8192, 4096\) with 1 channel\(s\)"):
        verify_image_file(tmp_path / "sparse")
    with pytest.raises(ValueError, match=r"image '[^']*bad' \(its file 'x\.dcm'\) is not a readable DICOM image"):
        verify_image_file(tmp_path / "bad")
    assert maxrss_mb() - rss < 400 and hashes(tmp_path) == before
    record_property("bad_input_kind", "huge_dicom_header")


# ---------------------------------------------------------------------------------------------------- MONAI Label
def _bundle_preprocessing(**overrides):
    """``inference.json``'s ``preprocessing``, which MONAI Label runs on each request's image (the project's app and
    the stock ``monaibundle`` app both take it from the bundle)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("preprocessing")


def _refusal(preprocessing, path: Path) -> BaseException:
    """The error ``preprocessing`` raises on ``path``, unwrapped from MONAI's ``applying transform`` RuntimeError."""
    with pytest.raises(Exception) as info:
        preprocessing({"image": str(path)})
    error = info.value
    while error.__cause__ is not None and not isinstance(error, ValueError):
        error = error.__cause__
    return error


@pytest.mark.parametrize(
    "kind, shape, message",
    [("huge_nifti_header", (20000, 20000), HUGE_SLICE), ("huge_volume", (8192, 8192, 4096), HUGE_VOLUME)],
)
def test_the_bundle_preprocessing_checks_the_header_before_loading(kind, shape, message, tmp_path, record_property):
    """The MONAI Label path (issue 17): a request's image went straight to the loader, with no size cap. The bundle's
    ``preprocessing`` now starts with ``CheckImageFiled``: a NIfTI whose header claims a huge shape over a few bytes
    is refused from its header, naming the file and the cap, and is never loaded."""
    path = header_only_nifti(tmp_path / "claims.nii.gz", shape)
    before = hashes(tmp_path)
    rss = maxrss_mb()
    error = _refusal(_bundle_preprocessing(), path)
    assert isinstance(error, ValueError) and re.search(rf"image 'image' '[^']*claims\.nii\.gz' .*{message}", str(error))
    assert maxrss_mb() - rss < 400 and hashes(tmp_path) == before
    record_property("bad_input_kind", kind)


def test_the_bundle_preprocessing_takes_the_configs_caps_and_passes_loaded_images(tmp_path):
    """The caps are the config's ``max_slice_pixels`` / ``max_volume_voxels``; an image within them loads as before;
    an image already loaded (not a path: MONAI Label's ``LoadImageTensord`` may hand one over) passes unchecked."""
    from monai_hqanogan.transforms import CheckImageFiled

    path = nifti(tmp_path / "vol.nii.gz", np.random.rand(24, 20, 6) * 100)
    loaded = _bundle_preprocessing()({"image": str(path)})["image"]
    assert tuple(loaded.shape) == (1, 24, 20, 6)
    error = _refusal(_bundle_preprocessing(max_volume_voxels=1000), path)
    assert re.search(r"2880 voxels, more than the cap of 1000 \(max_volume_voxels\)", str(error))
    error = _refusal(_bundle_preprocessing(max_slice_pixels=100, slice_axis=0), path)
    assert re.search(r"slices of 20 x 6 pixels .* more than 100 pixels", str(error))
    check = CheckImageFiled("image", max_volume_voxels=1000)
    assert check({"image": loaded})["image"] is loaded
    with pytest.raises(ValueError, match="max_slice_pixels must be a positive integer"):
        CheckImageFiled("image", max_slice_pixels=0)
