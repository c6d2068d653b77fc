from __future__ import annotations

from .synthetic import add_synthetic_lesions, make_ellipse_images
