from __future__ import annotations

from .checkpoint import TrainingCheckpointHandler
from .panel_saver import AnomalyPanelSaver
from .progress import EngineProgressBar, KimgProgressBar
from .reconstructions import ReconstructionSampleHandler
from .samples import GeneratorSampleHandler
from .score_saver import AnomalyScoreSaver
