from __future__ import annotations

from .synthetic import TOY_LESIONS, TOY_SHAPES, add_synthetic_lesions, make_ellipse_images, make_toy_lesion_set
