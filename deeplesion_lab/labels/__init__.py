"""The label store: pseudo-labels plus every human correction, with history, undo and exports.

>>> from deeplesion_lab.labels import LabelStore
>>> store = LabelStore.for_run("runs/demo")          # doctest: +SKIP
>>> store.relabel(ids, "liver", user="alice")        # doctest: +SKIP

SQLite (a file in the run directory, ``RunDir.label_db``) by default; the same interface on
PostgreSQL with a ``postgresql://`` URL. See :mod:`deeplesion_lab.labels.store` for the
semantics, :mod:`~deeplesion_lab.labels.schema` for the tables and
:mod:`~deeplesion_lab.labels.export` for the export formats.
"""

from __future__ import annotations

from .errors import (
    EmptySelectionError,
    LabelStoreError,
    NothingToUndo,
    NotInitialisedError,
    StoreFormatError,
    StoreWriteError,
    UndoConflict,
    UnknownClassError,
    UnknownLesionError,
)
from .lesions import ADDED_COLUMNS, manifest_with_added
from .store import CURRENT_COLUMNS, ChangeEvent, InitReport, LabelStore, UndoResult
from .taxonomy import NOT_A_LESION, UNSURE, ClassDef

__all__ = [
    "LabelStore",
    "ChangeEvent",
    "InitReport",
    "UndoResult",
    "ClassDef",
    "CURRENT_COLUMNS",
    "ADDED_COLUMNS",
    "manifest_with_added",
    "NOT_A_LESION",
    "UNSURE",
    "LabelStoreError",
    "StoreFormatError",
    "StoreWriteError",
    "UnknownLesionError",
    "UnknownClassError",
    "EmptySelectionError",
    "NotInitialisedError",
    "NothingToUndo",
    "UndoConflict",
]
