from __future__ import annotations

from .base import KimgTrainer, NonFiniteLossError
from .encoder_trainer import EncoderTrainer
from .stylegan2_trainer import StyleGAN2Trainer, auto_r1_gamma, stylegan2_adam
