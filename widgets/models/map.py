"""The embedding map's model: points, filters, selection, click, hover (:class:`MapModel`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from deeplesion_lab.lesion_types import SPLITS, TYPE_COLORS

from ..data import LabData, WidgetDataError
from .labels import LabelState
from .signal import Signal


class MapModel:
    """The embedding map: points, filters, selection, click and hover.

    Map point ``i`` is lesion row ``data.point_rows[i]``.
    """

    NOISY = ("all", "only", "exclude")

    def __init__(self, data: LabData, labels: LabelState):
        self.data = data
        self.labels = labels
        self.filters: dict = {
            "splits": None, "labels": None, "patients": None, "size_mm": None, "noisy": "all",
            "confidence": None, "tags": None, "types": None,
        }
        #: The run's tags (:class:`widgets.models.TagModel`), for the ``tags`` filter.
        self.tags = None
        self.selection = np.empty(0, dtype=np.int64)
        self.current = -1
        self.selection_changed = Signal()
        self.filter_changed = Signal()
        self.clicked = Signal()
        self.current_changed = Signal()
        self.colors_changed = Signal()
        labels.changed.connect(self.colors_changed.emit)
        les = data.lesions.iloc[data.point_rows]
        self._split = les["split_name"].astype(str).to_numpy() if "split_name" in les else None
        self._patient = les["patient_index"].to_numpy() if "patient_index" in les else None
        self._type = (les["coarse_type_name"].astype(str).to_numpy()
                      if "coarse_type_name" in les else None)
        self._noisy = (
            les["possibly_noisy"].fillna(False).to_numpy(dtype=bool)
            if "possibly_noisy" in les
            else np.zeros(len(les), bool)
        )
        sp = les["spacing_x"].to_numpy(dtype=float) if "spacing_x" in les else np.ones(len(les))
        self._size_mm = les["long_diameter_px"].to_numpy(dtype=float) * sp if (
            "long_diameter_px" in les
        ) else np.full(len(les), np.nan)
        self._mask = np.ones(len(les), dtype=bool)

    @property
    def n_points(self) -> int:
        return self.data.n_points

    def codes(self) -> np.ndarray:
        """Class index of every point (see :attr:`LabelState.classes`)."""
        return self.labels.codes(self.data.point_rows)

    def point_labels(self) -> np.ndarray:
        return self.labels.labels[self.data.point_rows]

    # filters -----------------------------------------------------------------------------------
    def filter_options(self) -> dict:
        """Values the filters can take (for the front end's controls)."""
        size = self._size_mm[np.isfinite(self._size_mm)]
        return {
            "splits": [s for s in SPLITS.values() if self._split is not None and (self._split == s).any()],
            "labels": [c["name"] for c in self.labels.classes],
            "n_patients": int(len(pd.unique(self._patient))) if self._patient is not None else 0,
            "size_mm": [float(size.min()), float(size.max())] if len(size) else [0.0, 0.0],
            "noisy": list(self.NOISY),
            "confidence": [0.0, 1.0],
            "tags": self.tags.names() if self.tags is not None else [],
            "types": sorted(pd.unique(self._type)) if self._type is not None else [],
        }

    def set_filters(self, **filters) -> np.ndarray:
        """Change filters; returns the visibility mask. ``None`` (or empty) clears a filter.

        Parameters
        ----------
        splits : list of str, optional
            Splits shown (train, val, test).
        labels : list of str, optional
            Current labels shown.
        patients : list of int, optional
            Patients shown.
        size_mm : (float, float), optional
            Long diameter range in mm.
        noisy : {"all", "only", "exclude"}
            The possibly-noisy flag.
        confidence : (float, float), optional
            Pseudo-label confidence range (lesions without one are hidden; corrected: 1.0).
        tags : list of str, optional
            Lesions carrying any of these tags (needs :attr:`tags`).
        types : list of str, optional
            Annotated (official) coarse types shown (``unlabeled``: the hidden train types).
        """
        for k, v in filters.items():
            if k not in self.filters:
                raise WidgetDataError(f"unknown filter {k!r}; known: {', '.join(self.filters)}")
            if k == "noisy":
                v = v or "all"
                if v not in self.NOISY:
                    raise WidgetDataError(f"noisy filter must be one of {self.NOISY}, got {v!r}")
            elif k in ("size_mm", "confidence"):
                v = None if v is None or len(v) == 0 else (float(v[0]), float(v[1]))
                if v is not None and not v[0] <= v[1]:
                    raise WidgetDataError(f"{k} filter: the range {v[0]} to {v[1]} is empty")
            elif k == "tags" and v and self.tags is None:
                raise WidgetDataError("the tag filter needs the run's label store (no tags here)")
            else:
                v = None if v is None or len(v) == 0 else list(v)
            self.filters[k] = v
        self._mask = self._compute_mask()
        self.filter_changed.emit()
        if len(self.selection) and not self._mask[self.selection].all():
            self.select(self.selection, "replace")
        return self._mask

    def _compute_mask(self) -> np.ndarray:
        f = self.filters
        m = np.ones(self.n_points, dtype=bool)
        if f["splits"] is not None and self._split is not None:
            m &= np.isin(self._split, f["splits"])
        if f["labels"] is not None:
            m &= np.isin(self.point_labels(), f["labels"])
        if f["patients"] is not None and self._patient is not None:
            m &= np.isin(self._patient, [int(p) for p in f["patients"]])
        if f["size_mm"] is not None:
            lo, hi = f["size_mm"]
            m &= (self._size_mm >= lo) & (self._size_mm <= hi)
        if f["types"] is not None and self._type is not None:
            m &= np.isin(self._type, f["types"])
        if f["confidence"] is not None:
            lo, hi = f["confidence"]
            conf = self.labels.confidence[self.data.point_rows]
            m &= (conf >= lo) & (conf <= hi)
        if f["tags"] is not None and self.tags is not None:
            m &= self.tags.mask(self.data.lesion_ids[self.data.point_rows], f["tags"])
        if f["noisy"] == "only":
            m &= self._noisy
        elif f["noisy"] == "exclude":
            m &= ~self._noisy
        return m

    def visible(self) -> np.ndarray:
        """Boolean mask of the points that pass the filters (label, confidence and tag filters
        follow corrections and tagging)."""
        if any(self.filters[k] is not None for k in ("labels", "confidence", "tags")):
            self._mask = self._compute_mask()
        return self._mask

    # selection ---------------------------------------------------------------------------------
    def select(self, points: Iterable[int], mode: str = "replace") -> np.ndarray:
        """Select map points (lasso, box); hidden points are never selected.

        ``mode`` is ``replace``, ``add`` or ``subtract``. Returns the new selection.
        """
        arr = points if isinstance(points, np.ndarray) else np.asarray(list(points))
        if arr.size and arr.dtype.kind not in "iu":
            raise WidgetDataError(f"point indices are integers, got {arr.dtype}")
        pts = _sorted_unique(arr.astype(np.int64))
        if len(pts) and (pts.min() < 0 or pts.max() >= self.n_points):
            raise WidgetDataError(f"point index out of range 0-{self.n_points - 1}")
        pts = pts[self.visible()[pts]] if len(pts) else pts
        if mode == "add":
            pts = _sorted_unique(np.concatenate([self.selection, pts]))
        elif mode == "subtract":
            pts = self.selection[~np.isin(self.selection, pts)]
        elif mode != "replace":
            raise WidgetDataError(f"selection mode must be replace, add or subtract, got {mode!r}")
        self.selection = pts.astype(np.int64)
        self.selection_changed.emit(self.selection)
        return self.selection

    def select_lesions(self, lesion_ids: Iterable[str], mode: str = "replace") -> np.ndarray:
        rows = [self.data.row_of.get(str(x), -1) for x in lesion_ids]
        pts = [int(self.data.point_of_row[r]) for r in rows if r >= 0]
        return self.select([p for p in pts if p >= 0], mode)

    def select_cluster(self, cluster: int) -> np.ndarray:
        pts = np.flatnonzero(self.labels.clusters[self.data.point_rows] == int(cluster))
        return self.select(pts)

    def clear_selection(self) -> None:
        self.select([])

    def selected_lesion_ids(self) -> list[str]:
        return [str(x) for x in self.data.lesion_ids[self.data.point_rows[self.selection]]]

    # click / hover -----------------------------------------------------------------------------
    def lesion_at(self, point: int) -> str:
        if not 0 <= int(point) < self.n_points:
            raise WidgetDataError(f"point index {point} out of range 0-{self.n_points - 1}")
        return str(self.data.lesion_ids[self.data.point_rows[int(point)]])

    def click(self, point: int) -> str:
        """A click on a point: it becomes current and :attr:`clicked` fires with its id."""
        lid = self.lesion_at(point)
        self.set_current(lid)
        self.clicked.emit(lid)
        return lid

    def set_current(self, lesion_id: str | None) -> None:
        p = -1
        if lesion_id is not None:
            r = self.data.row_of.get(str(lesion_id), -1)
            p = int(self.data.point_of_row[r]) if r >= 0 else -1
        if p != self.current:
            self.current = p
            self.current_changed.emit(p)

    def hover(self, point: int) -> dict:
        """What the tooltip shows for a point."""
        lid = self.lesion_at(point)
        return lesion_summary(self.data, self.labels, lid)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int array by sorting (numpy's hashing unique took 0.4 s for a lasso
    of 350k points; a sort of the already sorted indices a lasso sends takes milliseconds)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) > 1 else a


def lesion_summary(data: LabData, labels: LabelState | None, lesion_id: str) -> dict:
    """A short description of a lesion for tooltips and captions (JSON-ready)."""
    row = data.row(lesion_id)
    r = data.row_of[str(lesion_id)]
    sp = float(row.get("spacing_x", float("nan")))
    long_px = float(row.get("long_diameter_px", float("nan")))
    short_px = float(row.get("short_diameter_px", float("nan")))
    label = str(labels.labels[r]) if labels is not None else str(row.get("coarse_type_name", ""))
    cluster = int(labels.clusters[r]) if labels is not None else -1
    conf = float(labels.confidence[r]) if labels is not None else float("nan")

    def num(v, nd=1):
        return round(v, nd) if math.isfinite(v) else None

    return {
        "lesion_id": str(lesion_id),
        "label": label,
        "color": labels.color_of(label) if labels is not None else TYPE_COLORS.get(label, "#bbb"),
        "type": str(row.get("coarse_type_name", "")),
        "cluster": cluster,
        "confidence": num(conf, 2),
        "long_mm": num(long_px * sp),
        "short_mm": num(short_px * sp),
        "patient": int(row["patient_index"]) if "patient_index" in row else None,
        "study": int(row["study_index"]) if "study_index" in row else None,
        "split": str(row.get("split_name", "")),
        "noisy": bool(row.get("possibly_noisy", False)),
        "file_name": str(row.get("file_name", "")),
    }


