"""Dictionary-sample transforms (MONAI style) for models that read DeepLesion slices.

A sample is a ``dict``: ``"row"`` (the manifest row as a dict), ``"image"`` (``(C, H, W)``
float32), ``"boxes"`` (``(N, 4)`` float32, x1 y1 x2 y2), ``"labels"`` (``(N,)`` int64),
``"spacing"`` (mm per pixel); :class:`LoadContext` adds ``"substituted_slices"`` (the
``(missing, used)`` slice pairs where a neighbour was missing on disk). Each transform takes a
sample and returns it; :class:`Compose` chains them.

Examples
--------
>>> pipeline = Compose([
...     LoadContext(images_root, n_slices=3, target_spacing_mm=2.0),
...     ResampleSpacing(target_mm=0.8),
...     Window("wide"),
... ])                                                       # doctest: +SKIP
>>> sample = pipeline(sample_from_row(row))                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .images import (
    apply_window,
    crop_patch,
    load_context,
    resample_spacing,
    window_bounds,
)

Sample = dict[str, Any]

__all__ = [
    "Sample",
    "sample_from_row",
    "Compose",
    "LoadContext",
    "Window",
    "ResampleSpacing",
    "CropLesion",
    "RandomFlip",
    "IntensityJitter",
    "flip_boxes_lr",
    "jitter_intensity",
]


def flip_boxes_lr(boxes, width: float):
    """``(N, 4)`` boxes ``x1, y1, x2, y2`` mirrored left-right in an image ``width`` wide.

    Works on numpy arrays and torch tensors alike (a copy; the input is kept), so that the
    per-sample :class:`RandomFlip` and the embedder's batched flips share one geometry.
    """
    out = boxes.clone() if hasattr(boxes, "clone") else boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def jitter_intensity(image, contrast, brightness):
    """``image * contrast + brightness`` clipped to [0, 1] (numpy or torch; scalars or arrays
    that broadcast, e.g. one factor per image of a batch)."""
    return (image * contrast + brightness).clip(0.0, 1.0)


def sample_from_row(row: Mapping[str, Any], label: int | None = None) -> Sample:
    """Start a sample from a manifest row: its box as ``boxes`` and an optional label."""
    r = dict(row)
    box = np.array([[r["bbox_x1"], r["bbox_y1"], r["bbox_x2"], r["bbox_y2"]]], dtype=np.float32)
    lab = np.array([label if label is not None else int(r.get("coarse_type", -1))], dtype=np.int64)
    return {"row": r, "boxes": box, "labels": lab, "spacing": float(r["spacing_x"])}


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class LoadContext:
    """Load the key slice and neighbours as channels (HU), see :func:`load_context`."""

    def __init__(self, images_root: str | Path, n_slices: int = 3,
                 target_spacing_mm: float | None = 2.0, warn: bool = False):
        self.images_root = Path(images_root)
        self.n_slices = n_slices
        self.target_spacing_mm = target_spacing_mm
        self.warn = warn

    def __call__(self, sample: Sample) -> Sample:
        missing: list[tuple[int, int]] = []
        sample["image"] = load_context(
            self.images_root, sample["row"], self.n_slices, self.target_spacing_mm,
            warn=self.warn, substituted=missing,
        )
        sample["substituted_slices"] = missing
        return sample

    def __repr__(self) -> str:
        return f"LoadContext(n_slices={self.n_slices}, target_spacing_mm={self.target_spacing_mm})"


class ResampleSpacing:
    """Resample image and boxes to ``target_mm`` per pixel."""

    def __init__(self, target_mm: float = 0.8):
        self.target_mm = target_mm

    def __call__(self, sample: Sample) -> Sample:
        img, boxes, _ = resample_spacing(
            sample["image"], sample["spacing"], self.target_mm, sample.get("boxes")
        )
        sample["image"], sample["spacing"] = img, self.target_mm
        if boxes is not None:
            sample["boxes"] = boxes
        return sample

    def __repr__(self) -> str:
        return f"ResampleSpacing(target_mm={self.target_mm})"


class Window:
    """Window HU to [0, 1] float32: a preset name, ``(low, high)``, or ``"row"`` (the row's own
    DICOM window)."""

    def __init__(self, window: str | tuple[float, float] = "wide"):
        if window != "row" and isinstance(window, str):
            window_bounds(window)  # validate the name early
        self.window = window

    def __call__(self, sample: Sample) -> Sample:
        w = self.window
        if w == "row":
            w = (float(sample["row"]["window_low"]), float(sample["row"]["window_high"]))
        sample["image"] = apply_window(sample["image"], w, dtype=np.float32)
        return sample

    def __repr__(self) -> str:
        return f"Window({self.window!r})"


class CropLesion:
    """Replace the image with a square patch around the first box (see :func:`crop_patch`)."""

    def __init__(self, margin: float = 0.5, out_size: int = 64, fill: float = -1024.0):
        self.margin, self.out_size, self.fill = margin, out_size, fill

    def __call__(self, sample: Sample) -> Sample:
        sample["image"] = crop_patch(
            sample["image"], sample["boxes"][0], margin=self.margin, out_size=self.out_size,
            fill=self.fill,
        )
        return sample

    def __repr__(self) -> str:
        return f"CropLesion(margin={self.margin}, out_size={self.out_size})"


class RandomFlip:
    """Flip image and boxes left-right (and optionally up-down) with probability ``p``."""

    def __init__(self, p: float = 0.5, vertical: bool = False, seed: int | None = None):
        self.p, self.vertical = p, vertical
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> Sample:
        img = sample["image"]
        h, w = img.shape[-2:]
        if self.rng.random() < self.p:
            img = img[..., ::-1].copy()
            sample["boxes"] = flip_boxes_lr(sample["boxes"], w)
        if self.vertical and self.rng.random() < self.p:
            img = img[..., ::-1, :].copy()
            b = sample["boxes"].copy()
            b[:, [1, 3]] = h - sample["boxes"][:, [3, 1]]
            sample["boxes"] = b
        sample["image"] = img
        return sample


class IntensityJitter:
    """Random contrast and brightness on a windowed [0, 1] image."""

    def __init__(self, contrast: float = 0.1, brightness: float = 0.05, seed: int | None = None):
        self.contrast, self.brightness = contrast, brightness
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> Sample:
        c = 1.0 + self.rng.uniform(-self.contrast, self.contrast)
        b = self.rng.uniform(-self.brightness, self.brightness)
        sample["image"] = jitter_intensity(sample["image"], c, b).astype(np.float32)
        return sample
