"""Reference anomaly detectors to report next to HQ-AnoGAN: mean intensity (the shortcut), PCA, a conv autoencoder,
f-AnoGAN, AnoGAN latent-optimisation scoring, and anomalib's GANomaly (optional: needs anomalib)."""

from __future__ import annotations

from .anogan import AnoGANScorer
from .autoencoder import ConvAutoencoderBaseline
from .base import ImageBatches, ReconstructionBaseline, ReferenceBaseline, as_image_batch, iterate_image_batches
from .fanogan import FAnoGANBaseline, FAnoGANCritic, FAnoGANEncoder, FAnoGANGenerator, wgan_gradient_penalty
from .ganomaly import AnomalibGANomalyBaseline, anomalib_available
from .reference import MeanIntensityBaseline, PCABaseline

# deprecated alias (the name clashed with the raising monai_hqanogan.utils.check_image_batch): use as_image_batch
check_image_batch = as_image_batch
