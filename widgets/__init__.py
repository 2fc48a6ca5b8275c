"""deeplesion-lab's Jupyter widgets (anywidget; front ends are self-contained ESM files).

- :class:`SliceViewer`: a lesion's CT series with windows, boxes, RECIST, predictions.
- :class:`EmbeddingMap`: the UMAP of the lesion embeddings, coloured by current label.
- :class:`CorrectionPanel`: corrections through the label store, suggestions, history.
- :class:`SimilarGallery`: the most similar lesions of the one in the viewer.
- :class:`LesionLab`: all four, linked, in one cell.

The headless state and events live in :mod:`widgets.models` (no widget imports), so every
interaction can be tested and scripted without a browser. The ESM files beside each class
(``ESM_FILES``) can be reused as they are by Panel's ``AnyWidgetComponent``.
"""

from __future__ import annotations

from pathlib import Path

from .correction_panel import CorrectionPanel
from .data import LabData
from .embedding_map import EmbeddingMap
from .lesion_lab import LesionLab
from .models import (
    CorrectionModel,
    GalleryModel,
    LabelState,
    LabModel,
    MapModel,
    ViewerModel,
)
from .similar_gallery import SimilarGallery
from .slice_viewer import SliceViewer

_HERE = Path(__file__).parent

#: The front end of each widget, by class name (for Panel's AnyWidgetComponent).
ESM_FILES: dict[str, Path] = {
    "SliceViewer": _HERE / "slice_viewer.js",
    "EmbeddingMap": _HERE / "embedding_map.js",
    "CorrectionPanel": _HERE / "correction_panel.js",
    "SimilarGallery": _HERE / "similar_gallery.js",
}

__all__ = [
    "CorrectionModel",
    "CorrectionPanel",
    "ESM_FILES",
    "EmbeddingMap",
    "GalleryModel",
    "LabData",
    "LabModel",
    "LabelState",
    "LesionLab",
    "MapModel",
    "SimilarGallery",
    "SliceViewer",
    "ViewerModel",
]
