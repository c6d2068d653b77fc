"""Reference anomaly detectors to report next to HQ-AnoGAN: mean intensity (the shortcut), PCA and an autoencoder."""

from __future__ import annotations

from .autoencoder import ConvAutoencoderBaseline
from .base import ImageBatches, ReferenceBaseline, check_image_batch, iterate_image_batches
from .reference import MeanIntensityBaseline, PCABaseline
