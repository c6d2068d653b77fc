from __future__ import annotations

from .checkpoint import TrainingCheckpointHandler
from .progress import KimgProgressBar
from .samples import GeneratorSampleHandler
