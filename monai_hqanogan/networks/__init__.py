from __future__ import annotations

from .nets import StyleGAN2Discriminator, StyleGAN2Generator
