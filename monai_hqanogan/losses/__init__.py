from __future__ import annotations

from .encoder_losses import DiscriminatorFeatureLoss, discriminator_feature_distance, image_losses, w_norm_loss
from .stylegan2_losses import PathLengthPenalty, discriminator_logistic_loss, generator_logistic_loss, r1_penalty
from .wgan_losses import wgan_gradient_penalty
