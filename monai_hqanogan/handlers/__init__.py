from __future__ import annotations

from .checkpoint import TrainingCheckpointHandler
from .progress import EngineProgressBar, KimgProgressBar
from .reconstructions import ReconstructionSampleHandler
from .samples import GeneratorSampleHandler
