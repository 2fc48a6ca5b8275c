"""Light constants of the detector (importable without torch, e.g. for ``--help``)."""

from __future__ import annotations

__all__ = ["ARCHS", "BACKBONES", "NORMS"]

#: Detector architectures (``LesionDetector(arch=...)``, ``train-detector --arch``):
#: a CenterNet-style heatmap detector on a small U-Net (:mod:`.centernet`), torchvision's
#: Faster R-CNN (:mod:`.model`) and torchvision's FCOS.
ARCHS: tuple[str, ...] = ("centernet", "fasterrcnn", "fcos")

#: Backbone names accepted by :func:`deeplesion_lab.detection.model.build_detector`.
BACKBONES: tuple[str, ...] = (
    "mobilenet_v3_large_fpn",
    "mobilenet_v3_small_fpn",
    "resnet18_fpn",
    "resnet50_fpn",
)

#: Normalisation layers the backbones can be built with (``build_detector(norm=...)``).
NORMS: tuple[str, ...] = ("batch", "group")
