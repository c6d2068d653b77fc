"""``workflows/`` holds only the bundle glue (issue 19, step 1).

The inferer lives in ``monai_hqanogan.inferers``, the record transform in ``transforms/dictionary.py``, the score and
panel writers in ``handlers/`` and the image-file checks in ``data/image_files.py``; the old import paths
(``monai_hqanogan.workflows``, ``.workflows.inference``, ``.workflows.checks``) give the same objects, and no module
of the lower packages imports from ``workflows`` or ``apps``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import monai_hqanogan.data.image_files as image_files
import monai_hqanogan.handlers.map_saver as map_saver
import monai_hqanogan.workflows as workflows
import monai_hqanogan.workflows.checks as checks
import monai_hqanogan.workflows.inference as inference
from monai_hqanogan.handlers import AnomalyPanelSaver, AnomalyScoreSaver
from monai_hqanogan.inferers import SliceAnomalyInferer
from monai_hqanogan.transforms import FlattenAnomalyRecordd

PACKAGE = Path(image_files.__file__).resolve().parents[1]
#: the packages below the bundle glue: none of their modules may import ``workflows`` or ``apps``
LOWER = ("data", "handlers", "inferers", "transforms", "utils")

MOVED = {
    "SliceAnomalyInferer": SliceAnomalyInferer,
    "FlattenAnomalyRecordd": FlattenAnomalyRecordd,
    "AnomalyScoreSaver": AnomalyScoreSaver,
    "AnomalyPanelSaver": AnomalyPanelSaver,
    "SaveAnomalyMapsd": map_saver.SaveAnomalyMapsd,
    "check_output_ext": map_saver.check_output_ext,
    "anomaly_map_ext": map_saver.anomaly_map_ext,
    "OUTPUT_EXTS": map_saver.OUTPUT_EXTS,
    "PNG_THRESHOLD_LEVEL": map_saver.PNG_THRESHOLD_LEVEL,
    "IMAGE_SUFFIXES": image_files.IMAGE_SUFFIXES,
    "output_stem": image_files.output_stem,
}
CHECKS = (
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "SLICE_AXES",
    "verify_image_file",
    "image_header_shape",
    "check_image_shape",
    "check_size_caps",
    "check_slice_axis",
)


def _imported_modules(path: Path) -> list[str]:
    """The absolute modules imported by the file at ``path`` (``import x`` and ``from x import ...``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append(node.module or "")
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_keep_their_old_import_paths(name):
    assert getattr(inference, name) is MOVED[name]
    assert getattr(workflows, name) is MOVED[name]


@pytest.mark.parametrize("name", CHECKS)
def test_image_file_checks_keep_their_old_import_path(name):
    assert getattr(checks, name) is getattr(image_files, name)


@pytest.mark.parametrize("package", LOWER)
def test_lower_packages_do_not_import_the_bundle_glue(package):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in _imported_modules(path):
            assert not module.startswith(("monai_hqanogan.workflows", "monai_hqanogan.apps")), (
                f"{path.relative_to(PACKAGE)} imports {module}"
            )


def test_utils_modules_share_only_public_names():
    """A helper one ``utils`` module takes from another is a public, documented name of that module (``staging``
    used the run lock's ``_alive``, ``_guard`` and ``_start_token``)."""
    for path in sorted((PACKAGE / "utils").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("monai_hqanogan")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(PACKAGE)} imports private {private} from {node.module}"
                if not node.level:  # and listed in that module's __all__
                    exported = importlib.import_module(node.module).__all__
                    assert all(a.name in exported for a in node.names), (path.name, node.module, exported)


def test_one_suffix_list():
    """``prepare_image_folder``, ``br35h`` and the map writer read the suffixes of ``data/image_files.py``; none defines
    its own."""
    from monai_hqanogan.data import br35h, image_folder

    assert image_files.IMAGE_SUFFIXES[: len(image_files.RASTER_SUFFIXES)] == image_files.RASTER_SUFFIXES
    assert set(image_files.NIFTI_SUFFIXES) <= set(image_files.IMAGE_SUFFIXES)
    for module in (image_folder, br35h, map_saver):
        assert module.RASTER_SUFFIXES is image_files.RASTER_SUFFIXES
        lists = [n for n in vars(module) if n.endswith("_SUFFIXES") and n != "_MASK_SUFFIXES"]
        assert all(getattr(module, n) is getattr(image_files, n, None) for n in lists), lists


def test_data_split_keeps_the_old_import_paths():
    """``data/datalists.py`` and ``data/prepare.py`` give the names that moved to ``grouping``, ``output_folder``,
    ``datalist_writer`` and ``image_folder`` (issue 19, step 3); ``prepare`` keeps only the command line."""
    import monai_hqanogan.data as data
    from monai_hqanogan.data import datalist_writer, datalists, grouping, image_folder, output_folder, prepare

    homes = (grouping, output_folder, datalist_writer)
    for name in datalists.__all__:
        assert [m for m in homes if name in m.__all__ and getattr(m, name) is getattr(datalists, name)], name
    for name in ("prepare_image_folder", "find_image_files", "ImageFile"):
        assert getattr(prepare, name) is getattr(image_folder, name)
    assert data.prepare_image_folder is image_folder.prepare_image_folder
    assert not hasattr(data, "__getattr__")  # no lazy import any more: prepare_image_folder lives below the CLI


def test_image_suffix():
    assert image_files.image_suffix("a/B.NII.GZ") == ".nii.gz"
    assert image_files.image_suffix(Path("x.Png")) == ".png"
    assert image_files.image_suffix("noext") == ""
