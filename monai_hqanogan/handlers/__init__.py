from __future__ import annotations

from .checkpoint import TrainingCheckpointHandler
from .map_saver import (
    OUTPUT_EXTS,
    PNG_THRESHOLD_LEVEL,
    SaveAnomalyMapsd,
    anomaly_map_ext,
    check_output_ext,
)
from .panel_saver import AnomalyPanelSaver
from .progress import EngineProgressBar, KimgProgressBar
from .reconstructions import ReconstructionSampleHandler
from .samples import GeneratorSampleHandler
from .score_saver import AnomalyScoreSaver
