"""Errors of the label store: each one names what is wrong, and nothing was written."""

from __future__ import annotations

from ..errors import LabError

__all__ = [
    "LabelStoreError",
    "StoreFormatError",
    "StoreWriteError",
    "UnknownLesionError",
    "UnknownClassError",
    "EmptySelectionError",
    "NotInitialisedError",
    "UndoConflict",
    "NothingToUndo",
]


class LabelStoreError(LabError, ValueError):
    """A label-store operation was refused; the store is unchanged."""


class StoreWriteError(LabelStoreError):
    """The database refused a write (disk full, read-only, I/O error); it was rolled back."""


class StoreFormatError(LabelStoreError):
    """The file or database is not a label store (foreign, corrupted or from a newer version)."""


class UnknownLesionError(LabelStoreError):
    """Lesion ids that are not part of the store's dataset.

    Attributes
    ----------
    lesion_ids : list of str
        Every unknown id given.
    """

    def __init__(self, message: str, lesion_ids: list[str]):
        super().__init__(message)
        self.lesion_ids = lesion_ids


class UnknownClassError(LabelStoreError):
    """A label that is not in the taxonomy (add it first with ``add_class``)."""


class EmptySelectionError(LabelStoreError):
    """An operation on no lesions at all."""


class NotInitialisedError(LabelStoreError):
    """The store has no dataset / pseudo-labels yet."""


class NothingToUndo(LabelStoreError):
    """The user has no batch left to undo (or redo)."""


class UndoConflict(LabelStoreError):
    """Undo/redo refused: other annotators changed some of the lesions later.

    Attributes
    ----------
    event_id : int
        The batch that could not be undone (or the undo that could not be redone).
    conflicts : pandas.DataFrame
        One row per conflicting lesion: ``lesion_id``, ``label`` (its current label),
        ``changed_by``, ``changed_in`` (the later event id that set it).
    """

    def __init__(self, message: str, event_id: int, conflicts):
        super().__init__(message)
        self.event_id = event_id
        self.conflicts = conflicts
