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
- :class:`LabModel`: all of them, linked as in :class:`widgets.LesionLab`.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from deeplesion_lab.errors import LabError
from deeplesion_lab.images import WINDOW_PRESETS, ImageError, recist_diameters
from deeplesion_lab.lesion_types import SPLITS, TYPE_COLORS, UNLABELED_NAME
from deeplesion_lab.run import RunDir

from .data import LabData, WidgetDataError

__all__ = [
    "Signal",
    "LabelState",
    "ViewerModel",
    "MapModel",
    "CorrectionModel",
    "GalleryModel",
    "GridModel",
    "LabModel",
    "froc_cases",
    "CorrectionError",
    "open_label_store",
    "SIMULATED_TOOLS",
]

#: Tools whose events are not a person's work: the pipeline's simulated annotator (demo runs
#: with a truth file, ``deeplesion_lab.pipeline.simulate_corrections``).
SIMULATED_TOOLS = ("pipeline-simulated",)

_FALLBACK_COLORS = (
    "#1B9E77", "#D95F02", "#7570B3", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#17BECF",
)  # fmt: skip


class CorrectionError(LabError, ValueError):
    """A correction cannot be made (empty selection, unknown class or cluster, no store)."""


class Signal:
    """A minimal event: callbacks connected to it are called, in order, by :meth:`emit`."""

    def __init__(self) -> None:
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> Callable:
        """Call ``callback(*args)`` on every :meth:`emit`; returns it (usable as a decorator)."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable) -> None:
        """Stop calling ``callback`` (no error if it was not connected)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args) -> None:
        for cb in list(self._callbacks):
            cb(*args)


# label store ----------------------------------------------------------------------------------
def open_label_store(run: RunDir):
    """The run's label store (``RUN_DIR/labels.sqlite``), bound to its manifest and filled
    with the mined pseudo-labels the first time (:meth:`LabelStore.for_run`)."""
    from deeplesion_lab.labels import LabelStore

    return LabelStore.for_run(run)


class LabelState:
    """Current label, cluster and confidence of every lesion, and the class list.

    Reads and writes go through the label store; the state follows the store's events (its
    own and, on :meth:`refresh` / :meth:`poll`, other processes'), and :attr:`changed` fires
    after each update so that the views recolour.

    Parameters
    ----------
    data : LabData
        The lesions.
    store : LabelStore or None
        The label store. Without one, labels are the mined pseudo-labels (or the official type)
        and corrections raise :class:`CorrectionError`.
    user : str, optional
        Recorded with every change (default: the login name).

    Attributes
    ----------
    labels : numpy.ndarray
        Current label of each lesion row (``"unlabeled"`` where none).
    clusters : numpy.ndarray
        Mined cluster of each row (-1 where none).
    confidence : numpy.ndarray
        Pseudo-label confidence (1.0 once corrected; NaN where unknown).
    corrected : numpy.ndarray
        True where a person has set the label.
    classes : list of dict
        ``{name, color, kind}`` of the taxonomy (plus ``unlabeled``).
    """

    def __init__(self, data: LabData, store=None, user: str | None = None):
        self.data = data
        self.store = store
        self.user = str(user if user is not None else getpass.getuser()).strip()
        if not self.user:
            raise CorrectionError("a user name is needed to record corrections")
        self.changed = Signal()
        n = len(data)
        les = data.lesions
        self.labels = np.full(n, UNLABELED_NAME, dtype=object)
        self.clusters = (
            les["cluster"].to_numpy(dtype=np.int64).copy() if "cluster" in les else np.full(n, -1)
        )
        self.confidence = (
            les["confidence"].to_numpy(dtype=float).copy() if "confidence" in les
            else np.full(n, np.nan)
        )  # fmt: skip
        self.corrected = np.zeros(n, dtype=bool)
        self.classes: list[dict] = []
        self._index: dict[str, int] = {}
        self._version: int | None = None
        self._codes: np.ndarray | None = None
        self._unsubscribe = None
        if store is not None:
            self._unsubscribe = store.subscribe(lambda event: self.refresh())
        self.refresh(full=True)

    # reading -----------------------------------------------------------------------------------
    def refresh(self, full: bool = False) -> None:
        """Bring labels and classes up to date with the store, then emit :attr:`changed`.

        Only the lesions changed since the last refresh are read, unless ``full`` (or the store
        was re-initialised meanwhile).
        """
        if self.store is None:
            self._from_pseudo_labels()
        else:
            if full or self._version is None:
                cur = self.store.current_labels()
                self._version = int(self.store.version())
            else:
                cur = self.store.changes_since(self._version)
                self._version = int(cur.attrs.get("version", self.store.version()))
            self._apply(cur)
            self._set_classes(self.store.classes().to_dict("records"))
        self._codes = None
        self.changed.emit()

    def poll(self) -> bool:
        """Refresh if someone changed the store since the last refresh; returns whether so."""
        if self.store is None:
            return False
        if int(self.store.version()) == self._version:
            return False
        self.refresh()
        return True

    def _apply(self, cur: pd.DataFrame) -> None:
        if not len(cur):
            return
        rows = np.fromiter(
            (self.data.row_of.get(str(x), -1) for x in cur["lesion_id"]), np.int64, len(cur)
        )
        ok = rows >= 0
        r = rows[ok]
        lab = cur["label"].astype(object).to_numpy()[ok]
        self.labels[r] = [x if isinstance(x, str) and x else UNLABELED_NAME for x in lab]
        cl = pd.to_numeric(cur["cluster"], errors="coerce").fillna(-1).to_numpy()[ok]
        self.clusters[r] = cl.astype(np.int64)
        self.confidence[r] = pd.to_numeric(cur["confidence"], errors="coerce").to_numpy()[ok]
        self.corrected[r] = (cur["source"].astype(object).to_numpy()[ok] == "corrected")

    def _from_pseudo_labels(self) -> None:
        les = self.data.lesions
        n = len(les)
        pseudo = les["pseudo_label"] if "pseudo_label" in les else pd.Series([None] * n)
        typ = les["coarse_type_name"] if "coarse_type_name" in les else pd.Series([None] * n)
        for i, (p, t) in enumerate(zip(pseudo, typ, strict=True)):
            if isinstance(p, str) and p:
                self.labels[i] = p
            elif isinstance(t, str) and t:
                self.labels[i] = t
        self._set_classes([{"name": k, "color": v, "kind": "coarse"} for k, v in TYPE_COLORS.items()
                           if k != UNLABELED_NAME])

    def _set_classes(self, records: list[dict]) -> None:
        classes = [
            {"name": str(c["name"]), "color": str(c.get("color") or "#bbbbbb"),
             "kind": str(c.get("kind") or "")}
            for c in records
        ]  # fmt: skip
        known = {c["name"] for c in classes}
        for name in pd.unique(self.labels):
            if name not in known and name != UNLABELED_NAME:
                classes.append({"name": name, "color": self._spare_color(len(classes)),
                                "kind": "unknown"})
                known.add(name)
        classes.append({"name": UNLABELED_NAME, "color": TYPE_COLORS[UNLABELED_NAME],
                        "kind": "none"})
        self.classes = classes
        self._index = {c["name"]: i for i, c in enumerate(classes)}

    @staticmethod
    def _spare_color(i: int) -> str:
        return _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)]

    def class_names(self, assignable: bool = False) -> list[str]:
        """Class names; ``assignable`` leaves out ``unlabeled`` (not a label one can give)."""
        return [c["name"] for c in self.classes
                if not assignable or c["name"] != UNLABELED_NAME]  # fmt: skip

    def color_of(self, name: str) -> str:
        i = self._index.get(name)
        return self.classes[i]["color"] if i is not None else TYPE_COLORS[UNLABELED_NAME]

    def codes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Class index (into :attr:`classes`) of each lesion row, as uint8 (uint16 if > 255)."""
        if self._codes is None:
            cat = pd.Categorical(self.labels, categories=self.class_names())
            self._codes = cat.codes.astype(np.uint8 if len(self.classes) <= 256 else np.uint16)
        return self._codes if rows is None else self._codes[rows]

    def label_of(self, lesion_id: str) -> str:
        return str(self.labels[self.data.row_of[str(lesion_id)]])

    def need_store(self):
        """The store, or a clear error when the labels are read-only."""
        if self.store is None:
            raise CorrectionError(
                "no label store is open for this run (it has no pseudo-labels yet?); "
                "corrections need `deeplesion-lab mine` first"
            )
        return self.store

    def check_label(self, label: str) -> str:
        """A class of the store's taxonomy, or a clear error."""
        names = self.class_names(assignable=True)
        if label not in names:
            raise CorrectionError(f"unknown class {label!r}; add it first (known: {', '.join(names)})")
        return label

    def history(self, limit: int = 50, **filters) -> pd.DataFrame:
        """The store's event log, newest first (one row per batch)."""
        if self.store is None:
            return pd.DataFrame()
        return self.store.events(limit=limit, **filters)

    def close(self) -> None:
        """Stop following the store."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


# slice viewer ---------------------------------------------------------------------------------
def _series_stem(file_name: str) -> str:
    stem = file_name[:-4] if file_name.endswith(".png") else file_name
    return stem.rpartition("_")[0]


class ViewerModel:
    """State of the slice viewer.

    Attributes
    ----------
    lesion_id : str or None
        The lesion shown.
    slices : list of int
        Slice indices of its series present on disk.
    slice_index : int or None
        The slice shown.
    level, width : float
        The display window in HU.
    preset : str
        The preset name (``"dicom"`` for the lesion's own window, ``"custom"`` after a drag).
    show : dict
        Visibility of ``annotations``, ``predictions`` and ``candidates``.
    score_threshold : float
        Predictions and mined candidates scoring below it are hidden.
    prediction_model : str or None
        The model whose predictions are shown (one of :attr:`prediction_models`).
    """

    OVERLAYS = ("annotations", "predictions", "candidates")

    def __init__(self, data: LabData, labels: LabelState | None = None):
        self.data = data
        self.labels = labels
        self.lesion_id: str | None = None
        self.file_name: str | None = None
        self.slices: list[int] = []
        self.slice_index: int | None = None
        self.key_slice: int | None = None
        self.level, self.width = WINDOW_PRESETS["soft tissue"]
        self.preset = "soft tissue"
        self.show = {k: True for k in self.OVERLAYS}
        self.score_threshold = 0.5
        self.lesion_changed = Signal()
        self.slice_changed = Signal()
        self.window_changed = Signal()
        self.overlays_changed = Signal()
        if labels is not None:
            labels.changed.connect(self.overlays_changed.emit)

    def show_lesion(self, lesion_id: str) -> None:
        """Show a lesion: its series, on its key slice, in its DICOM window."""
        row = self.data.row(lesion_id)
        self.lesion_id = str(lesion_id)
        self.file_name = str(row["file_name"])
        self.key_slice = int(row["key_slice_index"])
        on_disk = self.data.series_slices(self.file_name)
        self.slices = sorted(set(on_disk)) if on_disk else [self.key_slice]
        self.slice_index = self.key_slice if self.key_slice in self.slices else self.slices[0]
        lo, hi = self.data.lesion_window(row)
        self.level, self.width, self.preset = (lo + hi) / 2.0, hi - lo, "dicom"
        self.lesion_changed.emit(self.lesion_id)
        self.window_changed.emit()
        self.slice_changed.emit(self.slice_index)

    def set_slice(self, index: int) -> int:
        """Go to the present slice nearest to ``index``; returns the slice shown."""
        if not self.slices:
            raise WidgetDataError("no lesion is shown")
        arr = np.asarray(self.slices)
        new = int(arr[np.abs(arr - int(index)).argmin()])
        if new != self.slice_index:
            self.slice_index = new
            self.slice_changed.emit(new)
        return new

    def step(self, delta: int) -> int:
        """Move ``delta`` present slices up (+) or down (-)."""
        if not self.slices:
            raise WidgetDataError("no lesion is shown")
        i = self.slices.index(self.slice_index) + int(delta)
        return self.set_slice(self.slices[min(max(i, 0), len(self.slices) - 1)])

    def set_preset(self, name: str) -> None:
        """A named window (:data:`deeplesion_lab.images.WINDOW_PRESETS`) or ``"dicom"``."""
        if name == "dicom":
            if self.lesion_id is None:
                raise WidgetDataError("the dicom window needs a lesion")
            lo, hi = self.data.lesion_window(self.data.row(self.lesion_id))
            level, width = (lo + hi) / 2.0, hi - lo
        else:
            key = name.replace("_", " ").lower()
            if key not in WINDOW_PRESETS:
                raise WidgetDataError(
                    f"unknown window preset {name!r}; known: dicom, {', '.join(WINDOW_PRESETS)}"
                )
            level, width = WINDOW_PRESETS[key]
            name = key
        self.level, self.width, self.preset = float(level), float(width), name
        self.window_changed.emit()

    def set_window(self, level: float, width: float) -> None:
        """A custom window (e.g. from a mouse drag)."""
        if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
            raise WidgetDataError(f"a window needs a finite level and positive width, got {level}, {width}")
        self.level, self.width, self.preset = float(level), float(width), "custom"
        self.window_changed.emit()

    def set_visible(self, overlay: str, visible: bool) -> None:
        if overlay not in self.show:
            raise WidgetDataError(f"unknown overlay {overlay!r}; known: {', '.join(self.OVERLAYS)}")
        self.show[overlay] = bool(visible)
        self.overlays_changed.emit()

    def set_score_threshold(self, value: float) -> None:
        self.score_threshold = float(min(max(value, 0.0), 1.0))
        self.overlays_changed.emit()

    @property
    def prediction_models(self) -> list[str]:
        """Models of the run with predictions (single, pseudo, fine-tuned, ...)."""
        return list(self.data.prediction_sets)

    @property
    def prediction_model(self) -> str | None:
        return self.data.prediction_model

    def set_prediction_model(self, name: str) -> None:
        """Show the predictions of another model of the run."""
        self.data.set_prediction_model(name)
        self.overlays_changed.emit()

    # content -----------------------------------------------------------------------------------
    def slice_file_name(self, index: int | None = None) -> str | None:
        """``File_name``-style name of a slice of the current series (``..._012.png``)."""
        if self.file_name is None:
            return None
        idx = self.slice_index if index is None else index
        return f"{_series_stem(self.file_name)}_{int(idx):03d}.png"

    def current_hu(self) -> np.ndarray | None:
        """The current slice in HU (int16), or None when it is not on disk."""
        if self.file_name is None or self.slice_index is None:
            return None
        try:
            return self.data.slice_hu(self.file_name, self.slice_index)
        except (ImageError, WidgetDataError):
            return None

    def spacing(self) -> float:
        """Pixel spacing (mm) of the current lesion's image."""
        if self.lesion_id is None:
            return float("nan")
        v = self.data.row(self.lesion_id).get("spacing_x")
        return float(v) if v is not None else float("nan")

    def overlays(self) -> dict[str, list[dict]]:
        """Boxes on the current slice: annotated lesions, predictions, mined candidates.

        Visibility and the score threshold are applied by the front end (so that toggling is
        instant); every list holds plain dicts ready for JSON.
        """
        out: dict[str, list[dict]] = {k: [] for k in self.OVERLAYS}
        name = self.slice_file_name()
        if name is None:
            return out
        les = self.data.lesions
        sp = self.spacing()
        for r in self.data.lesions_on_image(name):
            row = les.iloc[int(r)]
            recist = [float(row[f"recist_{a}{i}"]) for i in range(1, 5) for a in "xy"]
            long_px, short_px = recist_diameters(recist)
            lid = str(row["lesion_id"])
            label = self.labels.labels[int(r)] if self.labels is not None else str(
                row.get("coarse_type_name", "")
            )
            color = self.labels.color_of(label) if self.labels is not None else TYPE_COLORS.get(
                label, "#ffffff"
            )
            out["annotations"].append(
                {
                    "lesion_id": lid,
                    "box": [float(row[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")],
                    "recist": recist,
                    "label": label,
                    "color": color,
                    "current": lid == self.lesion_id,
                    "long_mm": round(long_px * sp, 1) if math.isfinite(sp) else None,
                    "short_mm": round(short_px * sp, 1) if math.isfinite(sp) else None,
                    "noisy": bool(row.get("possibly_noisy", False)),
                }
            )
        for key, df in (
            ("predictions", self.data.predictions_on(name)),
            ("candidates", self.data.candidates_on(name)),
        ):
            if df is None:
                continue
            df = df.sort_values("score", ascending=False).head(100)
            for rec in df.itertuples(index=False):
                label = str(rec.label)
                out[key].append(
                    {
                        "box": [float(rec.x1), float(rec.y1), float(rec.x2), float(rec.y2)],
                        "score": float(rec.score),
                        "label": label,
                        "color": (
                            self.labels.color_of(label)
                            if self.labels is not None and label in self.labels._index
                            else TYPE_COLORS.get(label, "#39FF14")
                        ),
                    }
                )
        return out


# embedding map --------------------------------------------------------------------------------
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
        }  # fmt: skip
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
        """
        for k, v in filters.items():
            if k not in self.filters:
                raise WidgetDataError(f"unknown filter {k!r}; known: {', '.join(self.filters)}")
            if k == "noisy":
                v = v or "all"
                if v not in self.NOISY:
                    raise WidgetDataError(f"noisy filter must be one of {self.NOISY}, got {v!r}")
            elif k == "size_mm":
                v = None if not v else (float(v[0]), float(v[1]))
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
        if f["noisy"] == "only":
            m &= self._noisy
        elif f["noisy"] == "exclude":
            m &= ~self._noisy
        return m

    def visible(self) -> np.ndarray:
        """Boolean mask of the points that pass the filters (label filters follow relabels)."""
        if self.filters["labels"] is not None:
            self._mask = self._compute_mask()
        return self._mask

    # selection ---------------------------------------------------------------------------------
    def select(self, points: Iterable[int], mode: str = "replace") -> np.ndarray:
        """Select map points (lasso, box); hidden points are never selected.

        ``mode`` is ``replace``, ``add`` or ``subtract``. Returns the new selection.
        """
        pts = np.unique(np.asarray(list(points), dtype=np.int64))
        if len(pts) and (pts.min() < 0 or pts.max() >= self.n_points):
            raise WidgetDataError(f"point index out of range 0-{self.n_points - 1}")
        pts = pts[self.visible()[pts]] if len(pts) else pts
        if mode == "add":
            pts = np.union1d(self.selection, pts)
        elif mode == "subtract":
            pts = np.setdiff1d(self.selection, pts)
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


# corrections ----------------------------------------------------------------------------------
class CorrectionModel:
    """Corrections of the current labels, always through the label store with the user's name.

    Parameters
    ----------
    labels : LabelState
        Labels and store.
    map_model : MapModel
        Its selection is what "the selection" means.
    tool : str, default "lesion-lab"
        Recorded with every event (which tool made it).
    """

    def __init__(self, labels: LabelState, map_model: MapModel, tool: str = "lesion-lab"):
        self.labels = labels
        self.map = map_model
        self.data = labels.data
        self.tool = tool
        self.done = Signal()  # emits a short message after each successful action
        self._ranker = None
        self._ranker_rows: np.ndarray | None = None

    def _selection(self) -> list[str]:
        ids = self.map.selected_lesion_ids()
        if not ids:
            raise CorrectionError("nothing selected: lasso or box-select lesions on the map first")
        return ids

    # actions -----------------------------------------------------------------------------------
    def relabel_selection(self, label: str, comment: str | None = None) -> int:
        """Give the selected lesions ``label`` (one store event); returns the event id."""
        store = self.labels.need_store()
        ids = self._selection()
        ev = store.relabel(ids, self.labels.check_label(label), self.labels.user,
                           tool=self.tool, comment=comment)  # fmt: skip
        self.done.emit(f"relabelled {len(ids)} lesion(s) as {label}")
        return int(ev)

    def mark_selection(self, what: str, comment: str | None = None) -> int:
        """Mark the selection ``"not a lesion"`` or ``"unsure"``; returns the event id."""
        store = self.labels.need_store()
        ids = self._selection()
        if what == "not a lesion":
            ev = store.mark_not_lesion(ids, self.labels.user, tool=self.tool, comment=comment)
        elif what == "unsure":
            ev = store.mark_unsure(ids, self.labels.user, tool=self.tool, comment=comment)
        else:
            raise CorrectionError(f"mark as 'not a lesion' or 'unsure', not {what!r}")
        self.done.emit(f"{len(ids)} lesion(s) marked {what}")
        return int(ev)

    def _check_cluster(self, cluster: int) -> int:
        if not (self.labels.clusters == int(cluster)).any():
            known = sorted(int(c) for c in np.unique(self.labels.clusters) if c >= 0)
            raise CorrectionError(f"unknown cluster {cluster!r} (clusters: {known})")
        return int(cluster)

    def cluster_label(self, cluster: int) -> str:
        """The most common current label of a cluster (as in :meth:`clusters`)."""
        cluster = self._check_cluster(cluster)
        table = self.clusters()
        return str(table.loc[table["cluster"] == cluster, "label"].iloc[0])

    def relabel_cluster(self, cluster: int, label: str, comment: str | None = None) -> int:
        """Give every lesion of a mined cluster ``label``; returns the event id."""
        store = self.labels.need_store()
        cluster = self._check_cluster(cluster)
        ev = store.relabel_cluster(cluster, self.labels.check_label(label), self.labels.user,
                                   tool=self.tool, comment=comment)  # fmt: skip
        self.done.emit(f"cluster {cluster} relabelled as {label}")
        return int(ev)

    def merge_clusters(self, source: int, target: int, comment: str | None = None) -> int:
        """Merge cluster ``source`` into ``target``: its lesions move there and take the
        target's (most common) label. Returns the event id."""
        store = self.labels.need_store()
        source, target = self._check_cluster(source), self._check_cluster(target)
        if source == target:
            raise CorrectionError("merging a cluster into itself does nothing")
        label = self.cluster_label(target)
        if label not in self.labels.class_names(assignable=True):
            label = None  # an unlabeled target: keep each lesion's label
        ev = store.merge_clusters([source, target], self.labels.user, into=target, label=label,
                                  tool=self.tool, comment=comment)  # fmt: skip
        self.done.emit(f"cluster {source} merged into {target}" + (f" ({label})" if label else ""))
        return int(ev)

    def split_selection(self, new_label: str, color: str | None = None,
                        comment: str | None = None) -> int:
        """Split the selection off its cluster into a new cluster labelled ``new_label``
        (added to the taxonomy first when it is new). Returns the new cluster id.

        The selection must lie in one cluster (select the cluster, then lasso part of it).
        """
        store = self.labels.need_store()
        ids = self._selection()
        name = str(new_label or "").strip()
        if not name:
            raise CorrectionError("give the new class a name to split the selection into")
        rows = [self.data.row_of[i] for i in ids]
        clusters = sorted({int(c) for c in self.labels.clusters[rows]})
        if len(clusters) != 1 or clusters[0] < 0:
            raise CorrectionError(
                f"the selection spans clusters {clusters}: a split works inside one cluster "
                "(use Select on the cluster, then lasso part of it)"
            )
        if name not in self.labels.class_names(assignable=True):
            self.add_class(name, color)
        new = store.split_cluster(clusters[0], ids, self.labels.user, label=name,
                                  tool=self.tool, comment=comment)  # fmt: skip
        self.done.emit(f"split {len(ids)} lesion(s) of cluster {clusters[0]} into {new} ({name})")
        return int(new)

    def add_class(self, name: str, color: str | None = None) -> None:
        """Add a class (name, colour) to the store's taxonomy."""
        store = self.labels.need_store()
        color = color or self.labels._spare_color(len(self.labels.classes))
        store.add_class(str(name), color, self.labels.user, tool=self.tool)
        self.done.emit(f"class {name} added")

    def undo(self):
        """Undo this user's latest change (never another annotator's later work)."""
        res = self.labels.need_store().undo(self.labels.user, tool=self.tool)
        self.done.emit(f"undone: {res.target_op} of {len(res.lesion_ids)} lesion(s)")
        return res

    def redo(self):
        """Redo this user's latest undone change."""
        res = self.labels.need_store().redo(self.labels.user, tool=self.tool)
        self.done.emit(f"redone: {res.target_op} of {len(res.lesion_ids)} lesion(s)")
        return res

    def snapshot(self, name: str | None = None, comment: str | None = None) -> int:
        """Freeze the current labels (a label-store snapshot; fine-tuning can train on it).

        ``name`` defaults to the user and the time. Returns the snapshot id.
        """
        import time

        store = self.labels.need_store()
        name = (name or "").strip() or f"{self.labels.user} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        sid = int(store.snapshot(name, self.labels.user, comment))
        self.done.emit(f"snapshot {name!r} saved (id {sid})")
        return sid

    def export(self, fmt: str = "csv") -> Path:
        """Write the current labels to ``RUN_DIR/exports/labels-<time>.csv`` (``fmt="csv"``) or
        a COCO detection JSON (``fmt="coco"``, key images and boxes with the current labels)."""
        import time

        from deeplesion_lab.labels.export import export_coco, export_labels

        store = self.labels.need_store()
        run = self.data.run
        if run is None:
            raise CorrectionError("exports go to a run directory; this lab has none")
        if fmt not in ("csv", "coco"):
            raise CorrectionError(f"export as csv or coco, not {fmt!r}")
        folder = run.path / "exports"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if fmt == "csv":
            path = export_labels(store, folder / f"labels-{stamp}.csv")
        else:
            path = export_coco(store, folder / f"labels-{stamp}.coco.json", run.load_manifest())
        self.done.emit(f"labels exported to {path}")
        return Path(path)

    # views -------------------------------------------------------------------------------------
    def clusters(self) -> pd.DataFrame:
        """``cluster, label, n`` for every mined cluster (label = most common current label)."""
        cl = self.labels.clusters
        ok = cl >= 0
        if not ok.any():
            return pd.DataFrame(columns=["cluster", "label", "n"])
        ids, inv = np.unique(cl[ok], return_inverse=True)
        codes = self.labels.codes()[ok].astype(np.int64)
        m = len(self.labels.classes)
        counts = np.bincount(inv * m + codes, minlength=len(ids) * m).reshape(len(ids), m)
        names = self.labels.class_names()
        return pd.DataFrame(
            {
                "cluster": ids.astype(int),
                "label": [names[j] for j in counts.argmax(axis=1)],  # ties: the first class
                "n": counts.sum(axis=1).astype(int),
            }
        )

    def history(self, limit: int = 50, simulated: bool = False, **filters) -> pd.DataFrame:
        """The event log, newest first; the simulated annotator's events (:data:`SIMULATED_TOOLS`)
        only with ``simulated`` (they are not the user's work, and nobody's to undo)."""
        if simulated:
            return self.labels.history(limit=limit, **filters)
        ev = self.labels.history(limit=None, **filters)
        if len(ev) and "tool" in ev:
            ev = ev[~ev["tool"].isin(SIMULATED_TOOLS)]
        return ev.head(limit) if limit is not None else ev

    def simulated_summary(self) -> dict:
        """``{events, lesions, users}`` of the simulated annotator's events in the store."""
        ev = self.labels.history(limit=None)
        if not len(ev) or "tool" not in ev:
            return {"events": 0, "lesions": 0, "users": []}
        sim = ev[ev["tool"].isin(SIMULATED_TOOLS)]
        return {"events": int(len(sim)), "lesions": int(sim["n_changes"].fillna(0).sum()),
                "users": sorted(str(u) for u in sim["user"].unique())}

    def suggestions(self, top: int = 20) -> pd.DataFrame:
        """Lesions most likely mislabeled, most suspicious first (see :mod:`deeplesion_lab.suggest`).

        Lesions without an embedding, and those a person has already corrected, are left out.
        """
        from deeplesion_lab.suggest import MislabelRanker

        emb = self.data.embeddings
        if emb is None:
            raise CorrectionError("this run has no embeddings.parquet; suggestions need embeddings")
        ok = np.flatnonzero(np.isfinite(emb).all(axis=1))
        if len(ok) < 2:
            raise CorrectionError("suggestions need at least 2 lesions with embeddings")
        # neighbours and centre distances depend on embeddings and clusters only: fit once
        if self._ranker is None or not np.array_equal(self._ranker_rows, ok) or not np.array_equal(
            self._ranker.clusters_, self.labels.clusters[ok]
        ):
            self._ranker = MislabelRanker(n_neighbors=10).fit(
                self.data.lesion_ids[ok], emb[ok], self.labels.clusters[ok]
            )
            self._ranker_rows = ok
        reviewed = self.data.lesion_ids[ok][self.labels.corrected[ok]]
        ranked = self._ranker.rank(
            self.labels.labels[ok], self.labels.confidence[ok], exclude=list(reviewed), top=top
        )
        rows = ok[ranked["position"].to_numpy()]
        ranked["label"] = self.labels.labels[rows].astype(str)
        ranked["point"] = self.data.point_of_row[rows]
        return ranked


# similar lesions ------------------------------------------------------------------------------
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
                    "same patient": "same_patient"}[self.scope]  # fmt: skip
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


# the lesion grid and FROC cases ----------------------------------------------------------------
def froc_cases(predictions: pd.DataFrame, lesions: pd.DataFrame, split: str = "test",
               fp_rate: float = 4.0) -> tuple[pd.DataFrame, float]:
    """The misses and false positives of a model at ``fp_rate`` false positives per image.

    Scored exactly as the FROC of ``evaluate-detector`` (DeepLesion protocol, IoU >= 0.5, noisy
    lesions as ignore regions): the detections kept are the top ``k`` of the operating point.

    Returns
    -------
    cases : pandas.DataFrame
        ``kind`` ("miss" or "false positive"), ``lesion_id`` (the missed lesion, or the first
        lesion annotated on the false positive's image), ``file_name``, ``x1, y1, x2, y2`` (the
        lesion's box or the false positive's), ``score`` (NaN for a miss), ``label``.
    threshold : float
        The score of the last detection kept (boxes scoring at least this many are shown).
    """
    from deeplesion_lab.detection.froc import evaluate_predictions, ground_truth

    res = evaluate_predictions(predictions, lesions, split)
    curve = res.curve
    k = max(curve.operating_point(float(fp_rate)), 0)
    gt = ground_truth(lesions, split)
    flat_ids = [i for ids in gt.lesion_ids for i in ids]
    flat_boxes = np.concatenate(gt.boxes) if gt.boxes else np.zeros((0, 4))
    flat_cls = [c for cs in gt.classes for c in cs]
    rows = []
    for j in np.flatnonzero(curve.gt_first_hit >= k):
        rows.append(("miss", flat_ids[j], *flat_boxes[j], np.nan, str(flat_cls[j])))
    # the detections in evaluation order, as evaluate_predictions stacks them
    index = {f: i for i, f in enumerate(gt.file_names)}
    pos = predictions["file_name"].map(index)
    inside = predictions[pos.notna().to_numpy()]
    img = pos[pos.notna()].astype(int).to_numpy()
    order_in = np.argsort(img, kind="stable")
    stacked = inside.iloc[order_in]
    order = np.argsort(-stacked["score"].to_numpy(dtype=np.float64), kind="stable")
    stacked = stacked.iloc[order]
    if not np.array_equal(stacked["score"].to_numpy(np.float64), curve.scores):
        raise WidgetDataError("the detections could not be put in the FROC's order")
    les_of = {f: ids[0] for f, ids in zip(gt.file_names, gt.lesion_ids, strict=True) if ids}
    kept = stacked.iloc[:k]
    for rec, outcome in zip(kept.itertuples(index=False), curve.outcome[:k], strict=True):
        if outcome == "fp":
            rows.append(("false positive", les_of.get(rec.file_name, ""), float(rec.x1),
                         float(rec.y1), float(rec.x2), float(rec.y2), float(rec.score),
                         str(getattr(rec, "label", ""))))
    cases = pd.DataFrame(rows, columns=["kind", "lesion_id", "x1", "y1", "x2", "y2", "score",
                                        "label"])
    fname = dict(zip(lesions["lesion_id"].astype(str), lesions["file_name"].astype(str),
                     strict=True))
    cases.insert(2, "file_name", cases["lesion_id"].map(fname))
    threshold = float(curve.scores[k - 1]) if k > 0 else 1.0
    return cases, threshold


class GridModel:
    """A grid of lesion thumbnails sharing the map's filters and selection, or the FROC cases
    of a model (its misses and false positives at an operating point).

    With ``source="map"`` the grid lists the lesions the map shows (its filters; with
    ``only_selected`` just its selection), sorted by :attr:`sort_by`; selected lesions are
    marked, and :meth:`open` shows a lesion in the viewer and selects it on the map. With
    ``source`` ``"misses"`` or ``"false positives"`` it lists those cases of :attr:`model` at
    :attr:`fp_rate` false positives per image; :meth:`open` shows the case in the viewer with
    that model's boxes at the operating point's score threshold.

    Parameters
    ----------
    data : LabData
    labels : LabelState
    map_model : MapModel
    viewer : ViewerModel, optional
        The viewer cases open in (its prediction model and threshold are set).
    corrections : CorrectionModel, optional
        For sorting by the suggest-next score.
    """

    SOURCES = ("map", "misses", "false positives")
    SORTS = ("label", "confidence", "size", "split", "patient", "suggest")
    FP_RATES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

    def __init__(self, data: LabData, labels: LabelState, map_model: MapModel,
                 viewer: ViewerModel | None = None, corrections: CorrectionModel | None = None):
        self.data = data
        self.labels = labels
        self.map = map_model
        self.viewer = viewer
        self.corrections = corrections
        self.source = "map"
        self.sort_by = "label"
        self.descending = False
        self.only_selected = False
        self.model = data.prediction_model
        self.fp_rate = 4.0
        self.split = "test"
        self.threshold: float | None = None
        self.changed = Signal()
        self.opened = Signal()  # emits the lesion id shown
        self._cases: pd.DataFrame | None = None
        self._suggest: dict[str, float] | None = None
        map_model.selection_changed.connect(lambda sel: self.changed.emit())
        map_model.filter_changed.connect(self.changed.emit)
        labels.changed.connect(self._labels_changed)

    def _labels_changed(self) -> None:
        self._suggest = None
        self.changed.emit()

    def set(self, **kwargs) -> None:
        """Change ``source``, ``sort_by``, ``descending``, ``only_selected``, ``model`` or
        ``fp_rate`` (checked), then emit :attr:`changed`."""
        for k, v in kwargs.items():
            if k == "source" and v not in self.SOURCES:
                raise WidgetDataError(f"grid source must be one of {', '.join(self.SOURCES)}")
            if k == "sort_by" and v not in self.SORTS:
                raise WidgetDataError(f"sort by one of {', '.join(self.SORTS)}, not {v!r}")
            if k == "model" and v not in self.data.prediction_sets:
                known = ", ".join(self.data.prediction_sets) or "none"
                raise WidgetDataError(f"no predictions of model {v!r} (known: {known})")
            if k == "fp_rate":
                v = float(v)
                if v <= 0:
                    raise WidgetDataError(f"false positives per image must be > 0, got {v}")
            if k not in ("source", "sort_by", "descending", "only_selected", "model", "fp_rate"):
                raise WidgetDataError(f"unknown grid setting {k!r}")
            setattr(self, k, v)
        if {"model", "fp_rate", "source"} & set(kwargs):
            self._cases = None
        self.changed.emit()

    # lesions -----------------------------------------------------------------------------------
    def _sort_key(self, rows: np.ndarray) -> np.ndarray:
        les = self.data.lesions
        if self.sort_by == "label":
            return self.labels.labels[rows].astype(str)
        if self.sort_by == "confidence":
            return self.labels.confidence[rows]
        if self.sort_by == "size":
            sp = les["spacing_x"].to_numpy(float) if "spacing_x" in les else np.ones(len(les))
            return (les["long_diameter_px"].to_numpy(float) * sp)[rows]
        if self.sort_by == "split":
            return les["split_name"].astype(str).to_numpy()[rows]
        if self.sort_by == "patient":
            return les["patient_index"].to_numpy()[rows]
        if self._suggest is None:  # the suggest-next score, lesions not ranked last
            ranked = self.corrections.suggestions(top=len(self.data)) if self.corrections else []
            self._suggest = (dict(zip(ranked["lesion_id"], ranked["score"], strict=True))
                             if len(ranked) else {})
        ids = self.data.lesion_ids[rows]
        return np.array([self._suggest.get(i, -np.inf) for i in ids])

    def lesion_rows(self) -> np.ndarray:
        """Rows of the lesions listed (map source), in grid order."""
        pts = self.map.selection if self.only_selected else np.flatnonzero(self.map.visible())
        rows = self.data.point_rows[np.asarray(pts, dtype=np.int64)]
        key = self._sort_key(rows)
        order = np.argsort(key, kind="stable")
        if self.descending:
            order = order[::-1]
        return rows[order]

    def cases(self) -> pd.DataFrame:
        """The FROC cases of :attr:`model` at :attr:`fp_rate` (cached)."""
        if self._cases is None:
            if not self.data.prediction_sets:
                raise WidgetDataError("this run has no detector predictions")
            model = self.model or next(iter(self.data.prediction_sets))
            self.model = model
            self._cases, self.threshold = froc_cases(
                self.data.prediction_sets[model], self.data.lesions, self.split, self.fp_rate)
        return self._cases

    def items(self, offset: int = 0, limit: int = 48) -> tuple[list[dict], int]:
        """One page of grid items and the total: ``{lesion_id, label, color, caption, box,
        file_name, selected, kind}`` (``box`` in image pixels for cases, else None)."""
        sel = set(self.map.selected_lesion_ids())
        out = []
        if self.source == "map":
            rows = self.lesion_rows()
            les = self.data.lesions
            sp = les["spacing_x"].to_numpy(float) if "spacing_x" in les else np.ones(len(les))
            size = les["long_diameter_px"].to_numpy(float) * sp
            split = les["split_name"].astype(str).to_numpy() if "split_name" in les else None
            for r in rows[offset:offset + limit]:
                lid = str(self.data.lesion_ids[r])
                lab = str(self.labels.labels[r])
                conf = self.labels.confidence[r]
                bits = [f"{size[r]:.0f} mm" if np.isfinite(size[r]) else "",
                        f"conf {conf:.2f}" if np.isfinite(conf) else "",
                        split[r] if split is not None else ""]
                out.append({"lesion_id": lid, "label": lab, "color": self.labels.color_of(lab),
                            "caption": " · ".join(b for b in bits if b), "box": None,
                            "file_name": str(les["file_name"].iat[r]), "selected": lid in sel,
                            "kind": "lesion"})
            return out, len(rows)
        kind = "miss" if self.source == "misses" else "false positive"
        cases = self.cases()
        cases = cases[cases["kind"] == kind]
        for c in cases.iloc[offset:offset + limit].itertuples(index=False):
            lab = c.label if kind == "miss" else f"{c.label or 'lesion'} {c.score:.2f}"
            out.append({"lesion_id": c.lesion_id, "label": str(lab),
                        "color": "#f5c542" if kind == "miss" else "#4aa3ff",
                        "caption": f"{kind} · {c.file_name}",
                        "box": [float(c.x1), float(c.y1), float(c.x2), float(c.y2)],
                        "file_name": str(c.file_name), "selected": c.lesion_id in sel,
                        "kind": kind})
        return out, len(cases)

    def thumbnail(self, item: dict, size: int = 80):
        """``(uint8 (size, size), box in thumbnail pixels)`` of an item, or None."""
        from .data import thumbnail

        if item.get("box") is None:
            return self.data.thumbnail(item["lesion_id"], size=size)
        try:
            row = self.data.row(item["lesion_id"])
            hu = self.data.slice_hu(item["file_name"], int(row["key_slice_index"]))
        except (ImageError, WidgetDataError):
            return None
        return thumbnail(hu, item["box"], self.data.lesion_window(row), size=size)

    def open(self, item: dict, add: bool = False) -> str:
        """Show an item in the viewer: a lesion (selected on the map too; ``add`` adds it to the
        selection), or a case with the model's boxes at the operating point."""
        lid = str(item["lesion_id"])
        if item.get("kind", "lesion") == "lesion":
            self.map.select_lesions([lid], "add" if add else "replace")
        elif self.viewer is not None and self.model is not None:
            if self.viewer.prediction_model != self.model:
                self.viewer.data.set_prediction_model(self.model)
            self.viewer.show["predictions"] = True
            self.viewer.score_threshold = float(self.threshold if self.threshold is not None
                                                else self.viewer.score_threshold)
        self.opened.emit(lid)
        if self.viewer is not None:
            self.viewer.overlays_changed.emit()
        return lid


# everything, linked ---------------------------------------------------------------------------
class LabModel:
    """All view models of a run, linked: a click on the map (or in the gallery, or on a
    suggestion) shows that lesion in the viewer and queries the gallery; corrections recolour
    the map through :attr:`LabelState.changed`.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        A run directory (``run.json``; ``umap.parquet`` etc. as far as the pipeline got).
    user : str, optional
        Name recorded with every correction (default: the login name).
    store : LabelStore, "auto" or None
        An open store; ``"auto"`` (default) opens ``RUN_DIR/labels.sqlite`` (filled with the
        pseudo-labels the first time) when the run has pseudo-labels; None: read-only labels.
    data : LabData, optional
        Preloaded data (default: :meth:`LabData.from_run`).
    """

    def __init__(self, run_dir: str | Path, user: str | None = None, *, store="auto",
                 data: LabData | None = None, k: int = 8):
        self.run = RunDir(run_dir)
        self.data = data if data is not None else LabData.from_run(self.run)
        if isinstance(store, str) and store == "auto":
            store = open_label_store(self.run) if self.run.pseudo_labels.is_file() else None
        self.labels = LabelState(self.data, store, user)
        self.viewer = ViewerModel(self.data, self.labels)
        self.map = MapModel(self.data, self.labels)
        self.corrections = CorrectionModel(self.labels, self.map)
        self.gallery = GalleryModel(self.data, self.labels, k=k)
        self.grid = GridModel(self.data, self.labels, self.map, self.viewer, self.corrections)
        self.map.clicked.connect(self.show_lesion)
        self.grid.opened.connect(self.show_lesion)
        if self.data.n_points:
            self.show_lesion(self.map.lesion_at(0))
        elif len(self.data):
            self.show_lesion(str(self.data.lesion_ids[0]))

    @property
    def user(self) -> str:
        return self.labels.user

    def show_lesion(self, lesion_id: str) -> None:
        """Show a lesion everywhere: viewer, map highlight, gallery query."""
        self.viewer.show_lesion(lesion_id)
        self.map.set_current(lesion_id)
        self.gallery.set_query(lesion_id)
