"""Untrusted files: every path that loads weights, checkpoints or calibrations refuses a pickle that would run code.

The payload is a real one: unpickling it opens (creates) a file, which the control test shows. Each entry point must
refuse it with a clear message (``CheckpointError``, "refused for safety", "nothing in the file was run") before
anything in it runs, so the file is never created. A static scan checks that every ``torch.load`` in the package and
the bundle configs passes ``weights_only=True`` and that nothing else unpickles. NVlabs ``.pkl`` files are refused
the same way, with a note that no importer is offered.
"""

from __future__ import annotations

import ast
import logging
import pickle
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.handlers import CheckpointLoader
from torch.utils.data import DataLoader, TensorDataset

from monai_hqanogan.data import make_ellipse_images
from monai_hqanogan.engines import StyleGAN2Trainer, stylegan2_adam
from monai_hqanogan.handlers import TrainingCheckpointHandler
from monai_hqanogan.networks.nets import PSPEncoder, StyleGAN2Discriminator, StyleGAN2Generator
from monai_hqanogan.scoring import AnomalyCalibration, load_calibration
from monai_hqanogan.utils import CheckpointError, list_checkpoints, load_checkpoint
from monai_hqanogan.workflows import check_model_file, load_model_file, load_stage
from tests.bundle_utils import BUNDLE, config_files, make_tiny_dataset, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
REFUSED = r"refused for safety \(nothing in the file was run\)"
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class _WritesAFile:
    """A pickle payload that creates ``target`` when it is unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_evil(path: Path, target: Path, fmt: str) -> Path:
    """A checkpoint-like dict whose unpickling would create ``target``: torch's zip format or a plain pickle."""
    payload = {"generator": _WritesAFile(str(target)), "trainer": {"iteration": 1}}
    if fmt == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_control_the_payload_really_writes_a_file_when_loaded_unsafely(tmp_path, fmt):
    target = tmp_path / "written.txt"
    evil = write_evil(tmp_path / "evil.pt", target, fmt)
    if fmt == "torch":
        torch.load(evil, weights_only=False)
    else:
        with open(evil, "rb") as f:
            pickle.load(f)
    assert target.exists()  # so the refusals below do prevent something real


def _tiny_g() -> StyleGAN2Generator:
    return StyleGAN2Generator(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)


ENTRY_POINTS = {
    "load_checkpoint": lambda p: load_checkpoint(p),
    "load_calibration": lambda p: load_calibration(p, AnomalyCalibration(2, 4), "fingerprint"),
    "load_stage": lambda p: load_stage(p, "train_generator.json", generator=_tiny_g()),
    "check_model_file": lambda p: check_model_file(p, "calibrate.json"),
    "load_model_file": lambda p: load_model_file(torch.nn.Linear(1, 1), p, "calibrate.json"),
    "psp_backbone_weights": lambda p: PSPEncoder(
        resolution=32, w_dim=8, num_ws=2, backbone="resnet18", backbone_weights=p
    ),
}


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_loaders_refuse_a_pickle_that_runs_code(tmp_path, entry, fmt):
    target = tmp_path / "written.txt"
    evil = write_evil(tmp_path / "model.pt", target, fmt)
    before = evil.read_bytes()
    with pytest.raises(CheckpointError, match=REFUSED) as info:
        ENTRY_POINTS[entry](evil)
    assert "model.pt" in str(info.value) and "Underlying error: UnpicklingError: Unsupported" in str(info.value)
    assert "weights_only=False" not in str(info.value)  # no advice to load it unsafely
    assert not target.exists()
    assert evil.read_bytes() == before  # refused, not deleted or changed


def _trainer(seed: int = 0) -> StyleGAN2Trainer:
    torch.manual_seed(seed)
    g = _tiny_g()
    d = StyleGAN2Discriminator(resolution=8, channel_base=32, channel_max=8)
    loader = DataLoader(TensorDataset(make_ellipse_images(8, 8, seed=1)), batch_size=4, shuffle=True)
    return StyleGAN2Trainer(
        "cpu", 1, loader, g, d, stylegan2_adam(g.parameters()), stylegan2_adam(d.parameters()), r1_interval=2
    )


def test_resuming_refuses_a_planted_newest_checkpoint(tmp_path):
    """Someone drops a code-running file as the newest checkpoint: the run stops with a clear error that names the
    intact previous checkpoint, nothing runs, and the good checkpoint is untouched."""
    trainer = _trainer()
    TrainingCheckpointHandler(save_dir=tmp_path / "ckpt").attach(trainer)
    trainer.run()
    ((_, good),) = list_checkpoints(tmp_path / "ckpt")
    good_bytes = good.read_bytes()
    target = tmp_path / "written.txt"
    write_evil(tmp_path / "ckpt" / "checkpoint_iteration=99.pt", target, "torch")
    again = _trainer(seed=1)
    TrainingCheckpointHandler(save_dir=tmp_path / "ckpt").attach(again)
    with pytest.raises(
        CheckpointError, match=REFUSED + r".*previous checkpoint 'checkpoint_iteration=2\.pt' is intact"
    ):
        again.run()
    assert not target.exists()
    assert good.read_bytes() == good_bytes and again.state.iteration == 0


def test_monai_checkpoint_loader_refuses_it_too(tmp_path):
    """The inference config's MONAI ``CheckpointLoader`` (after our own check) loads with ``weights_only=True``."""
    target = tmp_path / "written.txt"
    evil = write_evil(tmp_path / "model.pt", target, "torch")
    loader = CheckpointLoader(load_path=str(evil), load_dict={"model": torch.nn.Linear(1, 1)})
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        loader(type("E", (), {"state": type("S", (), {"epoch": 0, "max_epochs": 1})()})())
    assert not target.exists()


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


@pytest.mark.parametrize(
    "config, planted",
    [
        ("inference.json", "models/model.pt"),
        ("evaluate.json", "models/model.pt"),
        ("calibrate.json", "generator.pt"),
        ("train_encoder.json", "generator.pt"),
    ],
)
def test_bundle_configs_refuse_a_planted_model_file(tmp_path, config, planted):
    logging.disable(logging.WARNING)  # MONAI's config warnings
    make_tiny_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    (runs / planted).parent.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "written.txt"
    write_evil(runs / planted, target, "torch")
    try:
        with pytest.raises(Exception) as info:
            w = ConfigWorkflow(
                config_file=config_files(config),
                workflow_type="infer" if config != "train_encoder.json" else "train",
                bundle_root=str(BUNDLE),
                **tiny_overrides(tmp_path / "data", runs),
            )
            w.initialize()
            w.run()
    finally:
        logging.disable(logging.NOTSET)
    errors = list(_chain(info.value))
    assert any(isinstance(e, CheckpointError) and re.search(REFUSED, str(e)) for e in errors), errors[-1]
    assert not target.exists()


def test_an_nvlabs_pickle_is_refused_with_a_note_that_no_importer_exists(tmp_path):
    """NVlabs StyleGAN2-ADA ``.pkl`` files pickle their classes (``torch_utils.persistence``, ``dnnlib``)."""
    # GLOBAL torch_utils.persistence._reconstruct_persistent_obj, called on {}: what such a file starts with
    body = b"\x80\x02}q\x00X\x05\x00\x00\x00G_emaq\x01ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
    body += b"q\x02}q\x03\x85q\x04Rq\x05s."
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(body)
    with pytest.raises(CheckpointError, match=REFUSED + ".*NVlabs StyleGAN2-ADA pickle.*no importer"):
        load_checkpoint(path)


def _unsafe_calls(tree: ast.AST) -> tuple[int, list[int]]:
    """(number of torch.load calls, lines of calls that could unpickle code): torch.load without
    ``weights_only=True``, any ``weights_only=False`` or ``allow_pickle=True``, pickle/dill/joblib loads."""
    loads, bad = 0, []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        flags = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else None
        if owner == "torch" and name == "load":
            loads += 1
            if flags.get("weights_only") is not True:
                bad.append(node.lineno)
        elif flags.get("weights_only") is False or flags.get("allow_pickle") is True:
            bad.append(node.lineno)
        elif owner in ("pickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
            bad.append(node.lineno)
    return loads, bad


def test_every_torch_load_in_the_package_and_the_bundle_is_weights_only():
    for code, expected in (
        ("torch.load(p)", [1]),
        ("torch.load(p, weights_only=False)", [1]),
        ("np.load(p, allow_pickle=True)", [1]),
        ("pickle.loads(b)", [1]),
        ("torch.load(p, map_location='cpu', weights_only=True)", []),
    ):
        assert _unsafe_calls(ast.parse(code))[1] == expected, code  # the scanner itself
    unsafe, loads = [], 0
    for path in sorted((REPO / "monai_hqanogan").rglob("*.py")):
        n, bad = _unsafe_calls(ast.parse(path.read_text()))
        loads += n
        unsafe += [f"{path.relative_to(REPO)}:{line}" for line in bad]
    for path in sorted(BUNDLE.rglob("*.json")):
        for text in re.findall(r'"\$([^"]*)"', path.read_text()):  # the configs' Python expressions
            python = re.sub(r"@([\w#]+)", lambda m: "_ref_" + m.group(1).replace("#", "_"), text)
            n, bad = _unsafe_calls(ast.parse(python))
            loads += n
            unsafe += [f"{path.relative_to(REPO)}: {text}" for _ in bad]
    assert loads >= 1 and unsafe == []
