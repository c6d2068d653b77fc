from __future__ import annotations

from .stylegan2_trainer import NonFiniteLossError, StyleGAN2Trainer, auto_r1_gamma, stylegan2_adam
