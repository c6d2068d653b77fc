from __future__ import annotations

from .base import KimgTrainer, NonFiniteLossError
from .distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    any_rank,
    broadcast_module,
    check_same_on_all_ranks,
    distributed_world,
    is_main_process,
    split_rng_streams,
)
from .encoder_trainer import EncoderTrainer
from .stylegan2_trainer import StyleGAN2Trainer, auto_r1_gamma, stylegan2_adam
