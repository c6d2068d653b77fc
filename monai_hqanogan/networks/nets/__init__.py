from __future__ import annotations

from .detector import HQAnoGANDetector
from .fanogan import FANOGAN_NORMS, FAnoGANCritic, FAnoGANEncoder, FAnoGANGenerator
from .psp_encoder import PSPEncoder, style_groups
from .stylegan2 import (
    StyleGAN2Generator,
    StyleGAN2MappingNetwork,
    StyleGAN2SynthesisNetwork,
    check_resolution,
    feature_channels,
)
from .stylegan2_discriminator import StyleGAN2Discriminator, minibatch_stddev
