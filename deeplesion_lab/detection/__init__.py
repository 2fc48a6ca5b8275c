"""Lesion detection: CenterNet / Faster R-CNN / FCOS detectors, FROC evaluation, fine-tuning.

- :mod:`.froc`: the official evaluation (sensitivity at 0.5-16 FPs per image), predictions CSV;
- :mod:`.dataset`: key slices with 3-slice context, spacing-normalised, windowed, augmented,
  with ignore regions for unannotated lesions;
- :mod:`.centernet`: the commands' default detector, a CenterNet-style heatmap detector on a
  small U-Net (several times more training windows per CPU-second than the Faster R-CNN);
- :mod:`.model`: torchvision Faster R-CNN (MobileNetV3-FPN) with ignore regions and a
  class-agnostic lesion score (``--arch fasterrcnn``), torchvision FCOS (``--arch fcos``);
- :mod:`.train`: :class:`LesionDetector` (fit, predict, save, load, resume, lineage);
- :mod:`.labels_table`: labels tables, label-store snapshots, class maps;
- :mod:`.plots`: FROC PNG and interactive HTML.

The torch-based names (:class:`LesionDetector`, :func:`build_detector`,
:class:`KeySliceDataset`) are imported on first use, so that the evaluator stays light.

Commands (see :mod:`.workflow` for what each writes)::

    deeplesion-lab train-detector --run RUN [--classes single|pseudo|labels] [--arch NAME]
                                  [--epochs N]
    deeplesion-lab detect --run RUN --out PRED.csv [--split test|val|train|all] [--model NAME]
    deeplesion-lab evaluate-detector PRED.csv --manifest MANIFEST [--split test] [--run RUN]
    deeplesion-lab finetune --run RUN [--labels LABELS | --snapshot ID] [--epochs N]

Choices worth knowing: the evaluation follows the DeepLesion authors' released code, with
possibly-noisy lesions as ignore regions (:mod:`.froc`); unannotated lesions known from nearby
slices, noisy, unlabelled and "unsure" lesions are ignore regions in training, "not a lesion"
ones background (:mod:`.dataset`); on a CPU the commands default to a 256 px canvas at 1.6 mm
per pixel and a 256-wide box head, on ``--device cuda`` to DeepLesion's usual 512 px at 0.8 mm.
"""

from __future__ import annotations

from typing import Any

from .froc import (
    FP_RATES,
    PREDICTION_COLUMNS,
    FROCCurve,
    FROCError,
    FROCResult,
    evaluate_predictions,
    froc,
    read_predictions,
)
from .labels_table import LabelsError, class_indices, read_labels_table

__all__ = [
    "FP_RATES",
    "PREDICTION_COLUMNS",
    "FROCCurve",
    "FROCError",
    "FROCResult",
    "LabelsError",
    "LesionDetector",
    "KeySliceDataset",
    "build_detector",
    "class_indices",
    "evaluate_predictions",
    "froc",
    "read_labels_table",
    "read_predictions",
]

_LAZY = {
    "LesionDetector": ("train", "LesionDetector"),
    "KeySliceDataset": ("dataset", "KeySliceDataset"),
    "build_detector": ("model", "build_detector"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
