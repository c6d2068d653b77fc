from __future__ import annotations

from .grid import make_image_grid, save_image_grid
