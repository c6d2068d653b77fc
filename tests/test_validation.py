"""The shared argument checks live in ``monai_hqanogan.utils.validation``, below the networks (issue 19).

The transforms, engines, workflows and the other networks import them from there, not from a network module; the old
import paths (``monai_hqanogan.networks.nets.stylegan2``, ``monai_hqanogan.networks.nets``) still give the same
objects, and ``monai_hqanogan.utils`` imports nothing from the other packages (so none of them can form a cycle
through it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import monai_hqanogan.utils.validation as validation
from monai_hqanogan.utils import MAX_RESOLUTION, MIN_RESOLUTION, check_image_batch, check_resolution

PACKAGE = Path(validation.__file__).resolve().parents[1]
NAMES = {"check_resolution", "check_image_batch", "MIN_RESOLUTION", "MAX_RESOLUTION"}
#: module (relative to the package) -> the validation names it uses
USERS = {
    "transforms/presets.py": {"check_resolution"},
    "engines/base.py": {"check_image_batch"},
    "workflows/checks.py": {"check_resolution"},
    "networks/nets/detector.py": {"check_image_batch"},
    "networks/nets/psp_encoder.py": {"check_image_batch", "check_resolution"},
    "networks/nets/stylegan2_discriminator.py": {"check_image_batch", "check_resolution"},
}


def _from_imports(path: Path) -> list[tuple[str, set[str]]]:
    """(module, imported names) of every absolute ``from ... import ...`` in the file at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module or "", {a.name for a in node.names})
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    ]


@pytest.mark.parametrize("module", sorted(USERS))
def test_users_import_the_checks_from_utils_not_from_a_network(module):
    imports = _from_imports(PACKAGE / module)
    from_networks = {n for m, names in imports if m.startswith("monai_hqanogan.networks") for n in names & NAMES}
    assert not from_networks, f"{module} imports {sorted(from_networks)} from a network module"
    from_utils = {n for m, names in imports if m == "monai_hqanogan.utils.validation" for n in names}
    assert USERS[module] <= from_utils


def test_utils_imports_no_other_package_of_the_plugin():
    for path in sorted((PACKAGE / "utils").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue  # relative imports stay inside monai_hqanogan.utils
            for name in modules:
                assert name.split(".")[0] != "monai_hqanogan" or name.startswith("monai_hqanogan.utils"), (
                    f"utils/{path.name} imports {name}"
                )


def test_old_import_paths_give_the_same_objects():
    import monai_hqanogan.networks.nets as nets
    import monai_hqanogan.networks.nets.stylegan2 as stylegan2

    assert nets.check_resolution is stylegan2.check_resolution is validation.check_resolution is check_resolution
    assert stylegan2.check_image_batch is validation.check_image_batch is check_image_batch
    assert (stylegan2.MIN_RESOLUTION, stylegan2.MAX_RESOLUTION) == (MIN_RESOLUTION, MAX_RESOLUTION) == (8, 1024)


def test_check_resolution_and_image_batch():
    assert check_resolution(MIN_RESOLUTION) == 3 and check_resolution(MAX_RESOLUTION) == 10
    with pytest.raises(ValueError, match="power of two between 8 and 1024, got 2048"):
        check_resolution(2048)
    check_image_batch(torch.zeros(2, 1, 8, 8), 1, 8, "Owner")
    with pytest.raises(ValueError, match=r"Owner expects images of shape \[batch, 1, 8, 8\].*got \(2, 3, 8, 8\)"):
        check_image_batch(torch.zeros(2, 3, 8, 8), 1, 8, "Owner")
    with pytest.raises(ValueError, match="got list"):
        check_image_batch([], 1, 8, "Owner")


def test_as_bool_lives_in_utils_and_the_workflows_name_is_the_same_object():
    import monai_hqanogan.workflows as workflows
    import monai_hqanogan.workflows.checks as checks

    # the bundle configs call monai_hqanogan.workflows.as_bool
    assert workflows.as_bool is checks.as_bool is validation.as_bool
    assert validation.as_bool(" False ") is False and validation.as_bool(True) is True
    assert validation.as_bool("yes", None) is None
    with pytest.raises(ValueError, match=r"amp must be true or false, got 'yes' \(str\)"):
        validation.as_bool("yes", "amp")


def test_the_baselines_converting_batch_check_is_as_image_batch_with_the_old_name_kept():
    import monai_hqanogan.baselines as baselines
    from monai_hqanogan.baselines.base import as_image_batch

    assert baselines.as_image_batch is as_image_batch and baselines.check_image_batch is as_image_batch
    assert baselines.check_image_batch is not check_image_batch  # the raising check of the networks is another one
    out = as_image_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "images", channels=1, size=8)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="images must be square"):
        as_image_batch(torch.zeros(2, 1, 8, 4))


def test_the_preparation_settings_check_is_not_named_like_the_bundle_settings_check(tmp_path):
    import monai_hqanogan.data.datalists as datalists
    import monai_hqanogan.workflows as workflows

    assert datalists.check_settings is datalists.check_preparation_settings  # the deprecated alias
    assert "check_settings" not in datalists.__all__ and "check_preparation_settings" in datalists.__all__
    assert workflows.check_settings is not datalists.check_preparation_settings
    with pytest.raises(ValueError, match="max_size must be at least 8, got 4"):
        datalists.check_preparation_settings(4, 0.9, (0.6, 0.2, 0.2), (0.5, 0.5), tmp_path)


def test_positive_int_number_and_time_limit_checks():
    import numpy as np

    validation.check_positive_int("epochs", 3)
    for bad in (0, -1, True, 2.0, "3", np.int64(3)):  # a Python int only, as the baselines always required
        with pytest.raises(ValueError, match=r"epochs must be a positive integer, got"):
            validation.check_positive_int("epochs", bad)
    for good in (1e-3, 2, np.float32(0.5)):
        validation.check_positive_number("lr", good)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match=r"lr must be a positive number, got"):
            validation.check_positive_number("lr", bad)
    for good in (None, 0.5, 60):
        validation.check_time_limit("time_limit_s", good)
    for bad in (0, -5.0, float("nan")):
        with pytest.raises(ValueError, match=r"time_limit_s must be None or > 0, got"):
            validation.check_time_limit("time_limit_s", bad)


@pytest.mark.parametrize("module", ["baselines/autoencoder.py", "baselines/fanogan.py", "baselines/anogan.py"])
def test_the_baselines_use_the_shared_positive_checks(module):
    imports = _from_imports(PACKAGE / module)
    imported = {n for m, names in imports if m == "monai_hqanogan.utils.validation" for n in names}
    assert "check_positive_number" in imported
    text = (PACKAGE / module).read_text(encoding="utf-8")
    assert "must be a positive number" not in text and "must be None or > 0" not in text
