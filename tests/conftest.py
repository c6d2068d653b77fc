from __future__ import annotations

import os

import pytest
import torch

from monai_hqanogan.data import TOY_SHAPES, make_ellipse_images, make_toy_lesion_set

# with pytest-xdist each worker takes one core: two intra-op threads per worker would oversubscribe the CPU
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-tensor tests (serial runs too), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: the image size of the shared toy fixtures below (the baseline tests use it)
TOY_SIZE = 16


@pytest.fixture(scope="module")
def train_images(single_thread):
    """256 normal 16 px toy images (ellipses of the toy shapes) to fit the reference baselines on."""
    return make_ellipse_images(256, TOY_SIZE, seed=10, **TOY_SHAPES)


@pytest.fixture(scope="module")
def toy_set():
    """(images, labels, masks) at 16 px: 32 normal toy images, then 32 with a lesion."""
    return make_toy_lesion_set(32, TOY_SIZE, seed=3)


def pytest_terminal_summary(terminalreporter):
    """Report the reliability counts that passing tests record with ``record_property`` (works under xdist too):
    kill -9 faults injected and survived (tests/test_crash_resume.py) and bad-input kinds (tests/test_bad_inputs.py)."""
    totals = {"faults_injected": 0, "faults_survived": 0, "faults_mid_save": 0}
    kinds: set[str] = set()
    cases = 0
    for report in terminalreporter.stats.get("passed", []):
        if getattr(report, "when", "call") != "call":
            continue
        for name, value in getattr(report, "user_properties", ()):
            if name in totals:
                totals[name] += int(value)
            elif name == "bad_input_kind":
                kinds.add(str(value))
                cases += 1
    if totals["faults_injected"] or kinds:
        terminalreporter.write_sep("-", "reliability")
    if totals["faults_injected"]:
        terminalreporter.write_line(
            f"kill -9 faults injected: {totals['faults_injected']}, survived: {totals['faults_survived']} "
            f"({totals['faults_mid_save']} hit a checkpoint save)"
        )
    if kinds:
        terminalreporter.write_line(
            f"bad-input kinds handled: {len(kinds)} ({cases} cases): {', '.join(sorted(kinds))}"
        )
