from __future__ import annotations

from .synthetic import make_ellipse_images
