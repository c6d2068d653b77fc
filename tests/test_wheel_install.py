"""The package installs from its own built wheel, and the bundle runs from a copy outside the repository (issue 18).

A user of ``python -m monai.bundle download`` gets the bundle folder only; its configs call ``monai_hqanogan``, which
they install from a wheel or an sdist (``python -m build``). This module builds both from a copy of the sources (the
repository is not written to), installs the wheel into a fresh venv, copies the bundle without ``data/`` and
``runs/`` to a folder outside the repository, and runs ``inference.json`` from there on a PNG.

The venv must not see this checkout. The environment that runs the tests has ``monai_hqanogan`` installed in
editable mode, which setuptools does with a ``.pth`` file that puts a finder on ``sys.meta_path``. In a venv made
with ``--system-site-packages`` that ``.pth`` file runs too: the venv's copy is found first, but a module missing
from the wheel would still be imported from the checkout, and the test would pass. So the venv is made without
system site packages, and a ``.pth`` file of plain path lines adds the running environment's site-packages folders
(torch, MONAI, ignite, ... without a download): a path line adds a folder to ``sys.path`` without running the
``.pth`` files inside it, so no editable finder is installed. The venv's own ``site-packages`` comes first.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brain_mri_anomaly_hqanogan"
PACKAGE = "monai_hqanogan"
DIST_NAME = "monai-hqanogan"
#: the files next to the package that the build reads (setup.py reads README.md for the long description)
BUILD_FILES = ("setup.py", "pyproject.toml", "README.md", "LICENSE")
#: folders MONAI Label writes into the app folder at run time (ignored by git, not part of the package)
RUNTIME_DIRS = ("bin", "lib", "logs", "model")
#: the bundle folders a user's copy does not have (datasets, training runs)
LOCAL_BUNDLE_DIRS = ("data", "runs")
#: the test image: height x width, different so that a transposed map would show
IMAGE_SHAPE = (48, 40)

#: run in the venv: where each module of the source tree resolves, and whether anything could reach the checkout
PROBE = """
import importlib.metadata, importlib.util, json, sys
def origin(name):
    try:
        return importlib.util.find_spec(name).origin
    except (ModuleNotFoundError, AttributeError):  # a parent package or the module itself is missing
        return None
origins = {name: origin(name) for name in json.loads(sys.argv[1])}
dist = importlib.metadata.distribution(sys.argv[2])
print(json.dumps({
    "origins": origins,
    "meta_path": [getattr(f, "__module__", "") or type(f).__module__ for f in sys.meta_path],
    "sys_path": sys.path,
    "dist_version": dist.version,
    "dist_files": str(dist.locate_file("")),
    "direct_url": dist.read_text("direct_url.json"),
}))
"""


def _package_files() -> list[Path]:
    """The package's files, relative to the repository root (no caches, no MONAI Label run-time folders): its
    modules and any data file it would read at run time, all of which the wheel must hold."""
    out = []
    for path in sorted((REPO / PACKAGE).rglob("*")):
        rel = path.relative_to(REPO)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        if rel.parts[:3] == (PACKAGE, "apps", "monailabel") and len(rel.parts) > 4 and rel.parts[3] in RUNTIME_DIRS:
            continue
        out.append(rel)
    return out


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _clean_env() -> dict[str, str]:
    """The environment for the venv's commands: no PYTHONPATH (it could name the checkout), no user site, no pip
    configuration of this machine (every install here is --no-index)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    shown = " ".join(command)[:300]
    assert result.returncode == 0, (
        f"{shown} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory) -> Path:
    """A wheel and an sdist built by ``python -m build --no-isolation`` (the sdist first, the wheel from it) from a
    copy of the sources: building in the checkout would write ``build/`` and ``*.egg-info`` into it."""
    pytest.importorskip("build", reason="the dev and test extras install 'build' (python -m build)")
    root = tmp_path_factory.mktemp("wheel_build")
    src = root / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(REPO / name, src / name)
    for rel in _package_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    out = root / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=root)
    return out


def _wheel(dist_dir: Path) -> Path:
    (wheel,) = dist_dir.glob("*.whl")
    return wheel


def _required_version() -> str:
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    return meta["required_packages_version"][DIST_NAME]


def test_wheel_and_sdist_hold_every_file_of_the_package(dist_dir):
    expected = {rel.as_posix() for rel in _package_files()}
    assert f"{PACKAGE}/inferers/__init__.py" in expected and f"{PACKAGE}/utils/strict_json.py" in expected
    with zipfile.ZipFile(_wheel(dist_dir)) as whl:
        names = whl.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(metadata_name).decode()
    assert {n for n in names if n.startswith(f"{PACKAGE}/")} == expected
    # nothing else at the top of the wheel: no tests/, no bundles/
    assert {n.split("/")[0] for n in names} == {PACKAGE, metadata_name.split("/")[0]}
    headers = dict(line.split(": ", 1) for line in metadata.split("\n\n")[0].splitlines() if ": " in line)
    # the bundle's metadata.json names the distribution as pip does, at the version the wheel installs
    assert headers["Name"] == DIST_NAME and headers["Version"] == _required_version()

    (sdist,) = dist_dir.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
    assert expected <= members
    assert set(BUILD_FILES) <= members


def test_a_copy_of_the_bundle_runs_inference_with_the_wheel_in_a_fresh_venv(dist_dir, tmp_path):
    env = _clean_env()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    venv_site = Path(_run([str(python), "-c", purelib], tmp_path, env).stdout.strip()).resolve()
    # the requirement as MONAI's model zoo CI writes it from required_packages_version: name==version; installed
    # before the running environment's folders join the venv, where pip would find the editable install's metadata
    # and call the requirement satisfied
    requirement = f"{DIST_NAME}=={_required_version()}"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--find-links", str(dist_dir), requirement],
         cwd=tmp_path, env=env)  # fmt: skip
    # torch, MONAI, ignite, ... from the running environment, as plain paths after the venv's own (see the docstring)
    sites = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        sites.insert(0, site.getusersitepackages())
    (venv_site / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sites if Path(p).is_dir()))

    modules = [_module_name(rel) for rel in _package_files() if rel.suffix == ".py"]
    probe = json.loads(_run([str(python), "-c", PROBE, json.dumps(modules), DIST_NAME], tmp_path, env).stdout)
    outside = {m: o for m, o in probe["origins"].items() if not (o and Path(o).resolve().is_relative_to(venv_site))}
    assert not outside, f"modules not from the venv's wheel install: {outside}"
    assert not [m for m in probe["meta_path"] if m.startswith("__editable__")], probe["meta_path"]
    assert str(REPO) not in [str(Path(p).resolve()) for p in probe["sys_path"] if p], probe["sys_path"]
    assert Path(probe["dist_files"]).resolve() == venv_site and probe["dist_version"] == _required_version()
    assert probe["direct_url"] is None or '"editable": true' not in probe["direct_url"]

    # the bundle as a user gets it: configs, docs, models; no data/ or runs/
    bundle = tmp_path / "elsewhere" / BUNDLE.name
    shutil.copytree(
        BUNDLE,
        bundle,
        ignore=lambda d, names: [
            n for n in names if (Path(d) == BUNDLE and n in LOCAL_BUNDLE_DIRS) or n == "__pycache__"
        ],
    )
    assert (bundle / "models" / "model.pt").is_file() and not (bundle / "runs").exists()
    before = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*"))

    work = tmp_path / "work"
    work.mkdir()
    rows, cols = np.mgrid[: IMAGE_SHAPE[0], : IMAGE_SHAPE[1]]
    picture = 120 * np.exp(-((rows - 24) ** 2) / 200 - (cols - 20) ** 2 / 150)
    picture[10:18, 25:33] = 255
    image = work / "slice.png"
    Image.fromarray(picture.astype(np.uint8)).save(image)
    out = tmp_path / "out"
    configs = bundle / "configs"
    result = _run(
        [str(python), "-m", "monai.bundle", "run",
         "--config_file", str(configs / "inference.json"), "--meta_file", str(configs / "metadata.json"),
         "--logging_file", str(configs / "logging.conf"),
         "--bundle_root", str(bundle), "--input", str(image), "--output_dir", str(out)],
        cwd=work,
        env=env,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert str(bundle / "models" / "model.pt") in log, log[-3000:]

    scores = json.loads((out / "scores.json").read_text())
    (row,) = scores["rows"]
    assert row["image"] == str(image) and math.isfinite(row["score"]) and row["label"] in (0, 1)
    with open(out / "scores.csv", newline="") as f:
        (csv_row,) = list(csv.DictReader(f))
    assert math.isclose(float(csv_row["score"]), row["score"], rel_tol=1e-5)
    for kind in ("map", "label"):
        written = np.asarray(Image.open(out / f"slice_anomaly_{kind}.png"))
        assert written.shape == IMAGE_SHAPE, (kind, written.shape)
    # the run wrote nothing into the bundle folder (a downloaded bundle may be read-only)
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")) == before
