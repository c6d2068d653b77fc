"""Inferers, MONAI style: run a network on whole images (:class:`SliceAnomalyInferer`)."""

from __future__ import annotations

from .slice_inferer import SliceAnomalyInferer

__all__ = ["SliceAnomalyInferer"]
