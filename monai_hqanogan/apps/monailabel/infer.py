"""MONAI Label infer task for the HQ-AnoGAN bundle: the thresholded anomaly label and the continuous heat map.

MONAI Label's generic ``BundleInferTask`` runs a network on a batch and post-processes one output; the anomaly
detector needs the bundle's slice-by-slice inferer (2D images and 3D volumes, the training preprocessing per
slice, the map back on the input grid) and returns two outputs: the label map (``anomaly`` = 1 where the heat map
reaches the calibrated pixel threshold) for the viewer, and the heat map itself, which this task saves as NIfTI
next to the studies (``<studies>/anomaly_heatmaps/<safe image id>-<hash>.nii.gz``, one file per image id, never
outside that folder; see :func:`~monai_hqanogan.apps.monailabel.heatmap_file_name`) and names in the result JSON
with the image score. Weights load through the bundle's ``load_model_file`` (``weights_only=True``; MONAI Label's
default loader unpickles arbitrary objects).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_hqanogan.apps.monailabel import heatmap_path
from monai_hqanogan.apps.monailabel.transforms import save_heatmap
from monai_hqanogan.transforms import resolve_pixel_threshold
from monai_hqanogan.workflows import SHIPPED_SETTING, load_model_file

__all__ = ["HQAnoGANInferTask"]

logger = logging.getLogger(__name__)


def _settings_override(settings: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``settings`` as given on the command line (``--conf settings '{...}'``) or as a dict; None if absent."""
    if settings is None or settings == "":
        return None
    if isinstance(settings, Mapping):
        return dict(settings)
    try:
        value = json.loads(settings)
    except json.JSONDecodeError as err:
        raise ValueError(f"settings must be a JSON object of the bundle's settings, got {settings!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"settings must be a JSON object, got {type(value).__name__}.")
    return value


class HQAnoGANInferTask(BasicInferTask):
    """Serve the bundle's ``inference.json`` detector through MONAI Label.

    Args:
        bundle_root: the bundle folder (holds ``configs/inference.json``).
        model_file: the detector weights (default ``<bundle_root>/models/model.pt``).
        setting: the bundle setting the weights were trained with (default: the shipped weights' setting).
        settings: a full settings dict (or its JSON) instead of ``setting``, e.g. for weights trained with overrides.
        heatmap_dir: where heat maps are written (one per image id, named by
            :func:`~monai_hqanogan.apps.monailabel.heatmap_file_name`); None: only the label is returned.
        studies_dir: the studies folder; heat maps of images inside it are named by their path relative to it.
        description: shown by MONAI Label's ``/info``.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        model_file: str | os.PathLike | None = None,
        setting: str = SHIPPED_SETTING,
        settings: str | Mapping[str, Any] | None = None,
        heatmap_dir: str | os.PathLike | None = None,
        studies_dir: str | os.PathLike | None = None,
        description: str = "HQ-AnoGAN anomaly candidates (label) and heat map of a brain MR image or volume",
    ) -> None:
        self.bundle_root = Path(bundle_root).expanduser().resolve()
        config = self.bundle_root / "configs" / "inference.json"
        if not config.is_file():
            raise FileNotFoundError(f"{str(config)!r} does not exist: bundle_root must be the HQ-AnoGAN bundle.")
        model_file = Path(model_file or self.bundle_root / "models" / "model.pt").expanduser().resolve()
        self.parser = ConfigParser()
        self.parser.read_config(str(config))
        self.parser["bundle_root"] = str(self.bundle_root)
        self.parser["setting"] = setting
        override = _settings_override(settings)
        if override is not None:
            self.parser["settings"] = override
        self.parser["model_file"] = str(model_file)
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir is not None else None
        self.studies_dir = Path(studies_dir) if studies_dir is not None else None
        super().__init__(
            path=str(model_file),
            network=None,
            type=InferType.SEGMENTATION,
            labels={"anomaly": 1},
            dimension=3,
            description=description,
            config={"pixel_threshold": "calibrated", "save_heatmap": self.heatmap_dir is not None},
        )
        self._detector: tuple[torch.nn.Module, str, float] | None = None

    # ------------------------------------------------------------------ MONAI Label hooks
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        """The bundle's preprocessing: load (any format MONAI reads), channel first, float32."""
        return [self.parser.get_parsed_content("preprocessing", instantiate=True)]

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def inferer(self, data: Any = None) -> Any:
        return self.parser.get_parsed_content("inferer", instantiate=True)

    def detector_network(self, device: str | torch.device) -> torch.nn.Module:
        """The calibrated detector on ``device``, built from ``network_def`` and loaded safely; rebuilt when the
        weights file changes."""
        path = self.get_path()
        if path is None:
            raise FileNotFoundError(f"the model file {self.path[-1]!r} does not exist: train and calibrate first.")
        stamp = os.stat(path).st_mtime
        if self._detector is not None and self._detector[1] == str(device) and self._detector[2] == stamp:
            return self._detector[0]
        net = self.parser.get_parsed_content("network_def", instantiate=True)
        net = load_model_file(net, path, "the bundle's calibrate.json").to(device).eval()
        self._detector = (net, str(device), stamp)
        return net

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: Any = "cuda") -> dict[str, Any]:
        if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        detector = self.detector_network(device)
        image = data["image"]
        record = self.inferer(data)(image[None], detector)
        heat = record["pred"][0]  # [1, H, W(, D)] on the input grid
        threshold = resolve_pixel_threshold(data.get("pixel_threshold"), float(record["pixel_threshold"][0]))
        label = (heat >= threshold)[0].to(torch.uint8)
        affine = image.affine if isinstance(image, MetaTensor) else None
        # MONAI Label's writer takes the affine from the label when it is a MetaTensor
        data["pred"] = MetaTensor(label.cpu(), affine=affine) if affine is not None else label.cpu().numpy()
        result = {
            "anomaly_score": float(record["pred_score"][0]),
            "anomalous": bool(record["pred_image_label"][0]),
            "image_threshold": float(record["image_threshold"][0]),
            "pixel_threshold": threshold,
            "anomalous_voxels": int(label.sum()),
            # per slice along the slice axis (one entry for a 2D image); None where a slice was not scored
            "slice_scores": [None if np.isnan(v) else float(v) for v in record["slice_scores"][0].tolist()],
            "top_slice": int(record["panel_slice"][0]),
        }
        if self.heatmap_dir is not None:
            result["heatmap"] = str(self._save_heatmap(heat[0], affine, data))
        data["result"] = result
        return data

    def _save_heatmap(self, heat: torch.Tensor, affine: Any, data: Mapping[str, Any]) -> Path:
        # one file per image id (its path relative to the studies, suffix included), always inside heatmap_dir
        return save_heatmap(
            heat, affine, heatmap_path(self.heatmap_dir, data.get("image_path") or "image", self.studies_dir)
        )
