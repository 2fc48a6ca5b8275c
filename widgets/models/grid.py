"""The lesion thumbnail grid and the FROC cases of a model (:class:`GridModel`, :func:`froc_cases`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deeplesion_lab.images import ImageError

from ..data import LabData, WidgetDataError
from .corrections import CorrectionModel
from .labels import LabelState
from .map import MapModel
from .signal import Signal
from .viewer import ViewerModel


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


def froc_class_table(cases: pd.DataFrame, lesions: pd.DataFrame, split: str = "test",
                     class_column: str = "coarse_type_name") -> pd.DataFrame:
    """Per class, the FROC cases of one operating point (from :func:`froc_cases`).

    A lesion's class is its ``class_column`` (the ground truth's); a false positive's class is
    the label the model gave it (a single-class model's false positives form one row, e.g.
    ``lesion``). Sensitivity is the share of the class's lesions hit at the operating point,
    as in ``FROCCurve.class_sensitivity_at``.

    Returns
    -------
    pandas.DataFrame
        ``class``, ``lesions`` (evaluated), ``hit``, ``sensitivity`` (NaN without lesions),
        ``misses``, ``false_positives``; classes with lesions first, by name.
    """
    from deeplesion_lab.detection.froc import ground_truth

    gt = ground_truth(lesions, split, class_column=class_column)
    n = pd.Series([str(c) for cs in gt.classes for c in cs], dtype=object).value_counts()
    miss = cases.loc[cases["kind"] == "miss", "label"].astype(str).value_counts()
    fp = cases.loc[cases["kind"] == "false positive", "label"].astype(str).value_counts()
    names = sorted(set(n.index) | set(miss.index) | set(fp.index),
                   key=lambda c: (c not in n.index, c))
    rows = []
    for c in names:
        k, m = int(n.get(c, 0)), int(miss.get(c, 0))
        rows.append({"class": c, "lesions": k, "hit": k - m,
                     "sensitivity": (k - m) / k if k else float("nan"), "misses": m,
                     "false_positives": int(fp.get(c, 0))})
    return pd.DataFrame(rows, columns=["class", "lesions", "hit", "sensitivity", "misses",
                                       "false_positives"])


class GridModel:
    """A grid of lesion thumbnails sharing the map's filters and selection, or the FROC cases
    of a model (its misses and false positives at an operating point).

    With ``source="map"`` the grid lists the lesions the map shows (its filters; with
    ``only_selected`` just its selection), sorted by :attr:`sort_by`; selected lesions are
    marked, and :meth:`open` shows a lesion in the viewer and selects it on the map. With
    ``source`` ``"misses"`` or ``"false positives"`` it lists those cases of :attr:`model` at
    :attr:`fp_rate` false positives per image; :meth:`open` shows the case in the viewer with
    that model's boxes at the operating point's score threshold; :attr:`class_name` keeps the
    cases of one class (:meth:`class_table` lists them per class, :meth:`open_class` opens a
    row's misses or false positives). :attr:`tags` (a :class:`TagModel`) puts each lesion's
    tags in its caption.

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
        self.class_name: str | None = None
        self.suggest_min: float | None = None
        self.tags = None  # TagModel, set by LabModel
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
        """Change ``source``, ``sort_by``, ``descending``, ``only_selected``, ``model``,
        ``fp_rate``, ``class_name`` (checked; "" or None: every class) or ``suggest_min`` (only
        lesions whose suggest-next score is at least this; None: all), then emit
        :attr:`changed`."""
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
            if k == "class_name":
                v = str(v) if v else None
            if k == "suggest_min":
                v = None if v is None or v == "" else float(v)
                if self.corrections is None and v is not None:
                    raise WidgetDataError("the suggest-next filter needs the correction model")
            if k not in ("source", "sort_by", "descending", "only_selected", "model", "fp_rate",
                         "class_name", "suggest_min"):
                raise WidgetDataError(f"unknown grid setting {k!r}")
            setattr(self, k, v)
        if {"model", "fp_rate"} & set(kwargs):  # the class filter stays (same class, new point)
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
        return self._suggest_scores(rows)

    def _suggest_scores(self, rows: np.ndarray) -> np.ndarray:
        """The suggest-next score of lesion rows (-inf for lesions it does not rank)."""
        if self._suggest is None:
            ranked = self.corrections.suggestions(top=len(self.data)) if self.corrections else []
            self._suggest = (dict(zip(ranked["lesion_id"], ranked["score"], strict=True))
                             if len(ranked) else {})
        ids = self.data.lesion_ids[rows]
        return np.array([self._suggest.get(i, -np.inf) for i in ids], dtype=float)

    def lesion_rows(self) -> np.ndarray:
        """Rows of the lesions listed (map source), in grid order."""
        pts = self.map.selection if self.only_selected else np.flatnonzero(self.map.visible())
        rows = self.data.point_rows[np.asarray(pts, dtype=np.int64)]
        if self.suggest_min is not None:  # the grid's own filter (the map has no such score)
            rows = rows[self._suggest_scores(rows) >= self.suggest_min]
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
                tags = list(self.tags.tags_of(lid)) if self.tags is not None else []
                out.append({"lesion_id": lid, "label": lab, "color": self.labels.color_of(lab),
                            "caption": " · ".join(b for b in bits if b), "box": None,
                            "file_name": str(les["file_name"].iat[r]), "selected": lid in sel,
                            "kind": "lesion", "tags": tags})
            return out, len(rows)
        kind = "miss" if self.source == "misses" else "false positive"
        cases = self.cases()
        cases = cases[cases["kind"] == kind]
        if self.class_name is not None:
            cases = cases[cases["label"].astype(str) == self.class_name]
        for c in cases.iloc[offset:offset + limit].itertuples(index=False):
            lab = c.label if kind == "miss" else f"{c.label or 'lesion'} {c.score:.2f}"
            out.append({"lesion_id": c.lesion_id, "label": str(lab),
                        "color": "#f5c542" if kind == "miss" else "#4aa3ff",
                        "caption": f"{kind} · {c.file_name}",
                        "box": [float(c.x1), float(c.y1), float(c.x2), float(c.y2)],
                        "file_name": str(c.file_name), "selected": c.lesion_id in sel,
                        "kind": kind, "tags": []})
        return out, len(cases)

    def class_table(self) -> pd.DataFrame:
        """Per-class cases of :attr:`model` at :attr:`fp_rate` (:func:`froc_class_table`)."""
        return froc_class_table(self.cases(), self.data.lesions, self.split)

    def open_class(self, class_name: str, kind: str = "misses") -> None:
        """List the misses (``kind="misses"``) or false positives of one class."""
        if kind not in ("misses", "false positives"):
            raise WidgetDataError(f"open a class's 'misses' or 'false positives', not {kind!r}")
        known = set(self.class_table()["class"])
        if class_name not in known:
            raise WidgetDataError(f"no class {class_name!r} in the FROC table "
                                  f"(classes: {', '.join(sorted(known))})")
        self.set(source=kind, class_name=class_name)

    def thumbnail(self, item: dict, size: int = 80):
        """``(uint8 (size, size), box in thumbnail pixels)`` of an item, or None."""
        from ..data import thumbnail

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


