"""The MONAI Label app: ``monailabel start_server --app <this folder> --studies <folder> --conf bundle <bundle>``.

``--conf`` keys: ``bundle`` (the HQ-AnoGAN bundle folder, required), ``model`` (weights, default
``<bundle>/models/model.pt``, the shipped weights), ``setting`` (a name of the bundle's ``settings.json``, default
the shipped weights' ``cpu``), ``settings`` (a JSON object of
all settings, for weights trained with overrides), ``heatmaps`` (folder of the saved heat maps, default
``<studies>/anomaly_heatmaps``; ``none`` to save none).
"""

from __future__ import annotations

import os
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from monai_hqanogan.apps.monailabel.infer import HQAnoGANInferTask
from monai_hqanogan.workflows import SHIPPED_SETTING

#: the model name in MONAI Label's /info and /infer/<model>
MODEL_NAME = "hqanogan_anomaly"


class HQAnoGANLabelApp(MONAILabelApp):
    """MONAI Label app with one infer task, :class:`HQAnoGANInferTask` (labels: ``anomaly``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundle = conf.get("bundle")
        if not bundle:
            raise ValueError("give the bundle: monailabel start_server ... --conf bundle <the HQ-AnoGAN bundle folder>")
        heatmaps = conf.get("heatmaps", os.path.join(studies, "anomaly_heatmaps"))
        self.task = HQAnoGANInferTask(
            bundle_root=bundle, model_file=conf.get("model"), setting=conf.get("setting", SHIPPED_SETTING),
            settings=conf.get("settings"), heatmap_dir=None if str(heatmaps).lower() == "none" else Path(heatmaps),
            studies_dir=studies,
        )  # fmt: skip
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="HQ-AnoGAN anomaly detection",
            description="Anomaly candidates and heat maps from HQ-AnoGAN (StyleGAN2-ADA + pSp encoder)",
            labels={"anomaly": 1},
        )  # fmt: skip

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: self.task}
