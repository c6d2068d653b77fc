from __future__ import annotations

from .stylegan2_losses import PathLengthPenalty, discriminator_logistic_loss, generator_logistic_loss, r1_penalty
