"""A MONAI Label app that serves the brain MRI anomaly bundle: ``monailabel start_server --app <this folder> ...``.

Importing :mod:`.infer` needs MONAI Label (``pip install -e ".[monailabel]"`` in an environment whose torchvision
matches torch; see the bundle README). This package itself imports nothing from it.
"""

from __future__ import annotations

from pathlib import Path

#: the folder to give ``monailabel start_server --app``
APP_DIR = Path(__file__).resolve().parent
