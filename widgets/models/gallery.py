"""The most similar lesions to the one in the viewer (:class:`GalleryModel`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import LabData, WidgetDataError
from .labels import LabelState
from .signal import Signal


class GalleryModel:
    """The ``k`` lesions most similar to the query lesion (embedding distance), found with
    :class:`deeplesion_lab.retrieval.LesionIndex`.

    Parameters
    ----------
    data : LabData
        Lesions with embeddings.
    labels : LabelState, optional
        For captions.
    k : int, default 8
        Gallery size.
    scope : {"all", "other patients", "same patient"}
        Which lesions may be shown.
    """

    SCOPES = ("all", "other patients", "same patient")

    def __init__(self, data: LabData, labels: LabelState | None = None, k: int = 8, scope: str = "all"):
        self.data = data
        self.labels = labels
        self.k = int(k)
        self.scope = scope
        self.query: str | None = None
        self.results = pd.DataFrame(columns=["lesion_id", "distance"])
        self.changed = Signal()
        self._retriever = None

    def set_scope(self, scope: str) -> None:
        if scope not in self.SCOPES:
            raise WidgetDataError(f"scope must be one of {', '.join(self.SCOPES)}, got {scope!r}")
        self.scope = scope
        if self.query is not None:
            self.set_query(self.query)

    def _index(self):
        """The retrieval index (:class:`deeplesion_lab.retrieval.LesionIndex`), built once."""
        if self._retriever is None:
            from deeplesion_lab.retrieval import LesionIndex

            emb = self.data.embeddings
            ok = np.flatnonzero(np.isfinite(emb).all(axis=1))
            les = self.data.lesions
            patients = les["patient_index"].to_numpy()[ok] if "patient_index" in les else None
            self._retriever = LesionIndex().fit(emb[ok], self.data.lesion_ids[ok], patients)
        return self._retriever

    def set_query(self, lesion_id: str | None) -> pd.DataFrame:
        """Find the lesions most similar to ``lesion_id`` (itself excluded)."""
        self.query = None if lesion_id is None else str(lesion_id)
        cols = ["lesion_id", "distance", "patient", "study", "label"]
        empty = pd.DataFrame(columns=cols)
        if lesion_id is None or self.data.embeddings is None:
            self.results = empty
            self.changed.emit(self.results)
            return self.results
        r = self.data.row_of.get(str(lesion_id))
        if r is None:
            raise WidgetDataError(f"unknown lesion id {lesion_id!r}")
        if not np.isfinite(self.data.embeddings[r]).all():
            self.results = empty
            self.changed.emit(self.results)
            return self.results
        les = self.data.lesions
        restrict = {"all": None, "other patients": "other_patients",
                    "same patient": "same_patient"}[self.scope]
        if "patient_index" not in les:
            restrict = None
        found = self._index().query(str(lesion_id), k=self.k, restrict=restrict)
        rows = np.array([self.data.row_of[i] for i in found["lesion_id"]], dtype=np.int64)
        self.results = pd.DataFrame(
            {
                "lesion_id": found["lesion_id"].astype(str).to_numpy(),
                "distance": found["distance"].astype(float).to_numpy(),
                "patient": les["patient_index"].to_numpy()[rows].astype(int)
                if "patient_index" in les else -1,
                "study": les["study_index"].to_numpy()[rows].astype(int)
                if "study_index" in les else -1,
                "label": (
                    self.labels.labels[rows].astype(str) if self.labels is not None
                    else les["coarse_type_name"].astype(str).to_numpy()[rows]
                ),
            }
        )
        self.changed.emit(self.results)
        return self.results


