"""HQ-AnoGAN anomaly detection for medical images, as a MONAI plugin.

Sato et al., "Anomaly detection with high-quality pseudo-normal images" (HQ-AnoGAN), Int J CARS 2023,
https://doi.org/10.1007/s11548-023-03031-9
"""

from __future__ import annotations

__version__ = "0.1.0"
