"""Light constants of the detector (importable without torch, e.g. for ``--help``)."""

from __future__ import annotations

__all__ = ["BACKBONES", "NORMS"]

#: Backbone names accepted by :func:`deeplesion_lab.detection.model.build_detector`.
BACKBONES: tuple[str, ...] = (
    "mobilenet_v3_large_fpn",
    "mobilenet_v3_small_fpn",
    "resnet18_fpn",
    "resnet50_fpn",
)

#: Normalisation layers the backbones can be built with (``build_detector(norm=...)``).
NORMS: tuple[str, ...] = ("batch", "group")
