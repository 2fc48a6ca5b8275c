"""deeplesion-lab's Jupyter widgets (anywidget; front ends are self-contained ESM files).

- :class:`SliceViewer`: a lesion's CT series with windows, boxes, RECIST, predictions.
- :class:`EmbeddingMap`: the UMAP of the lesion embeddings, coloured by current label.
- :class:`CorrectionPanel`: corrections through the label store, suggestions, history.
- :class:`SimilarGallery`: the most similar lesions of the one in the viewer.
- :class:`LesionGrid`: lesion thumbnails, sorted and filtered, sharing the selection; tags,
  saved views, per-class FROC cases.
- :class:`FinetunePanel`: fine-tune the detector on the current labels as a background job.
- :class:`ProposalReview` / :class:`ProposalReviewPanel`: walk the lesion graph's proposals
  (mined, unannotated lesions) in the viewer; accept, accept as a type, reject, undo.
- :class:`VolumeView`: the lesion's series in three planes and 3-D (offline, WebGL2 or CPU).
- :class:`LesionLab`: all of them, linked, in one cell.

The headless state and events live in :mod:`widgets.models` (no widget imports), so every
interaction can be tested and scripted without a browser. The ESM files beside each class
(``ESM_FILES``) share one copy of their helpers, ``_helpers.js``, which
:func:`widgets.lab_widget.esm_source` puts in front of them (anywidget loads an ESM from a
``blob:`` URL, where a relative import cannot resolve); the resulting module (each class's
``_esm``) is what Panel's ``AnyWidgetComponent`` twins of the dashboard use too.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# Imported on first use (PEP 562): `deeplesion-lab` loads `widgets.dashboard.cli` for its `serve`
# command on every call, and that must not pay for anywidget, ipywidgets and the models.
_LAZY: dict[str, str] = {
    "CorrectionPanel": ".correction_panel",
    "LabData": ".data",
    "EmbeddingMap": ".embedding_map",
    "LesionLab": ".lesion_lab",
    "CorrectionModel": ".models",
    "GalleryModel": ".models",
    "LabelState": ".models",
    "LabModel": ".models",
    "MapModel": ".models",
    "ViewerModel": ".models",
    "SimilarGallery": ".similar_gallery",
    "SliceViewer": ".slice_viewer",
    "LesionGrid": ".lesion_grid",
    "FinetunePanel": ".finetune_panel",
    "ProposalReview": ".proposal_review",
    "ProposalReviewPanel": ".proposal_review",
    "ReviewModel": ".models",
    "VolumeView": ".volume_view",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HERE = Path(__file__).parent

#: The front-end file of each widget, by class name (its module: ``lab_widget.esm_source``).
ESM_FILES: dict[str, Path] = {
    "SliceViewer": _HERE / "slice_viewer.js",
    "EmbeddingMap": _HERE / "embedding_map.js",
    "CorrectionPanel": _HERE / "correction_panel.js",
    "SimilarGallery": _HERE / "similar_gallery.js",
    "LesionGrid": _HERE / "lesion_grid.js",
    "FinetunePanel": _HERE / "finetune_panel.js",
    "VolumeView": _HERE / "volume_view.js",
    "ProposalReviewPanel": _HERE / "proposal_review.js",
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
    "FinetunePanel",
    "LesionGrid",
    "LesionLab",
    "MapModel",
    "ProposalReview",
    "ProposalReviewPanel",
    "ReviewModel",
    "SimilarGallery",
    "SliceViewer",
    "ViewerModel",
    "VolumeView",
]
