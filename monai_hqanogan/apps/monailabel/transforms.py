"""Post-processing for MONAI Label requests: the anomaly heat map written next to the label that MONAI Label returns.

MONAI Label's stock ``BundleInferTask`` runs the bundle's ``postprocessing`` with every ``SaveImaged`` removed, writes
``pred`` as the label and returns the ``result`` dict as JSON. :class:`SaveRequestHeatmapd` is not a ``SaveImaged``:
it writes the float map of the request's image as NIfTI (one file per image, named by
:func:`~monai_hqanogan.apps.monailabel.heatmap_file_name`) and names it in ``result["heatmap"]``. This module imports
nothing from MONAI Label.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_hqanogan.apps.monailabel import heatmap_path

__all__ = ["SaveRequestHeatmapd", "SaveRequestHeatmapD", "SaveRequestHeatmapDict", "save_heatmap"]

logger = logging.getLogger(__name__)


def save_heatmap(heat: torch.Tensor | np.ndarray, affine: Any, path: str | os.PathLike) -> Path:
    """Write ``heat`` (spatial dimensions only) as a float32 NIfTI file with ``affine`` (identity when None),
    atomically: a fresh partial file next to ``path``, renamed onto it, so that two requests never write into one
    file and a reader never sees half of one."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = heat.detach().cpu().float().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float32)
    matrix = np.asarray(affine if affine is not None else np.eye(4), dtype=np.float64)
    fd, tmp = tempfile.mkstemp(prefix=".heatmap-", suffix=".partial.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(values, matrix), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info(f"heat map -> {path}")
    return path


class SaveRequestHeatmapd(MapTransform):
    """Write the anomaly map of a MONAI Label request as NIfTI and name the file in the request's result JSON.

    The file is ``output_dir / heatmap_file_name(image_path)``: one per image id, never outside ``output_dir``. It
    holds the map's spatial dimensions (the channel dropped) with the affine of the request's loaded image (the map
    is on its grid), so a volume's map lies on the volume; a 2D raster image's map is in MONAI's (width, height)
    layout, the transpose of the image as Pillow shows it. Items without ``image_path`` (MONAI Label's key for the
    request's image; the bundle's own inference run, whose maps ``SaveAnomalyMapsd`` writes, has none) and requests
    whose ``save_heatmap`` option is false are left as they are.

    Args:
        keys: key of the anomaly map (``anomaly_map``, as :class:`~monai_hqanogan.transforms.AnomalyLabeld`
            leaves it).
        output_dir: the folder of the heat maps; None writes none.
        save_heatmap: whether to write when the data dict has no ``option_key`` entry.
        option_key: a key of the data dict whose value, when present, replaces ``save_heatmap`` (a per-request
            option, which the bundle's ``displayable_configs`` expose in MONAI Label); read as a flag, never parsed
            as config.
        image_path_key: the key of the request's image path.
        ref_image_key: the key of the loaded image (a MetaTensor) whose affine the file gets; identity without one.
        result_key: the result dict that gets ``heatmap`` (the file's path).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection = "anomaly_map",
        output_dir: str | os.PathLike | None = None,
        save_heatmap: bool = True,
        option_key: str | None = "save_heatmap",
        image_path_key: str = "image_path",
        ref_image_key: str = "image",
        result_key: str = "result",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.save_heatmap, self.option_key = save_heatmap, option_key
        self.image_path_key, self.ref_image_key, self.result_key = image_path_key, ref_image_key, result_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        image = d.get(self.image_path_key)
        if self.output_dir is None or not image or not _enabled(d.get(self.option_key, self.save_heatmap)):
            return d
        ref = d.get(self.ref_image_key)
        affine = ref.affine if isinstance(ref, MetaTensor) else None
        for key in self.key_iterator(d):
            path = save_heatmap(d[key][0], affine, heatmap_path(self.output_dir, image))  # channel first
            previous = d.get(self.result_key)
            d[self.result_key] = {**(dict(previous) if isinstance(previous, Mapping) else {}), "heatmap": str(path)}
        return d


SaveRequestHeatmapD = SaveRequestHeatmapDict = SaveRequestHeatmapd


def _enabled(flag: Any) -> bool:
    """A request's on/off option: False, 0 and the texts "false", "0", "no", "off" (any case) turn it off."""
    return str(flag).strip().lower() not in ("false", "0", "no", "off", "none", "")
