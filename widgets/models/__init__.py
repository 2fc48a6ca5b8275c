"""Headless models of the lab's views: state plus events, no widget imports (napari style).

Every interaction of the widgets is a method call on one of these models, so it can be tested
(and scripted) without a browser. The anywidget classes beside this module only translate
between these models and synced traits.

- :class:`Signal`: a tiny event (``connect``, ``disconnect``, ``emit``).
- :class:`LabelState`: current labels and classes from the label store; every change goes
  through the store with the user's name.
- :class:`ViewerModel`: the slice viewer (lesion, slice, window, overlays).
- :class:`MapModel`: the embedding map (points, filters, selection, click, hover).
- :class:`CorrectionModel`: relabel, clusters, merge, split, classes, undo/redo, history,
  suggestions.
- :class:`GalleryModel`: the most similar lesions to the one in the viewer.
- :class:`GridModel`: the lesion thumbnail grid (sort, the map's filters and selection) and the
  FROC cases of a model (misses, false positives) at an operating point.
- :class:`TagModel`: tags on lesions (label-store events, undoable), the map's tag filter.
- :class:`ViewsModel`: saved views (filters, sort, selection) per user, readable by all.
- :class:`ReviewModel`: reviewing the lesion graph's proposals (accept, accept as a type,
  reject, undo) in the viewer.
- :class:`FinetuneModel`: fine-tuning the detector on the current labels as a background job.
- :class:`LabModel`: all of them, linked as in :class:`widgets.LesionLab`.
"""

from __future__ import annotations

from .corrections import SIMULATED_TOOLS, CorrectionModel
from .finetune import FinetuneModel
from .gallery import GalleryModel
from .grid import GridModel, froc_cases, froc_class_table
from .lab import LabModel
from .labels import LabelState, open_label_store
from .map import MapModel, lesion_summary
from .review import ReviewModel
from .signal import CorrectionError, Signal
from .tags import TagModel
from .viewer import ViewerModel
from .views import ViewsModel

__all__ = [
    "Signal",
    "LabelState",
    "ViewerModel",
    "MapModel",
    "CorrectionModel",
    "GalleryModel",
    "GridModel",
    "LabModel",
    "ReviewModel",
    "TagModel",
    "FinetuneModel",
    "ViewsModel",
    "froc_class_table",
    "froc_cases",
    "lesion_summary",
    "CorrectionError",
    "open_label_store",
    "SIMULATED_TOOLS",
]

