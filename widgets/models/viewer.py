"""The slice viewer's model: lesion, slice, window, overlays (:class:`ViewerModel`)."""

from __future__ import annotations

import math

import numpy as np

from deeplesion_lab.images import WINDOW_PRESETS, ImageError, recist_diameters
from deeplesion_lab.lesion_types import TYPE_COLORS

from ..data import LabData, WidgetDataError
from .labels import LabelState
from .signal import Signal


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
        #: the mined candidate (proposal id) under review, drawn highlighted whatever its score
        self.review_focus: str | None = None
        #: review status of mined candidates by proposal id (pending / accepted / rejected)
        self.candidate_status: dict[str, str] = {}
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

    def show_image(self, file_name: str, show=None) -> None:
        """Show a key image (on its key slice): the lesion annotated on it, or, when the viewer
        shows that image already, just go back to its key slice. ``show``: what shows a lesion
        (default :meth:`show_lesion`; the lab's also rings it on the map and queries the
        gallery)."""
        if self.file_name == file_name and self.key_slice is not None:
            self.set_slice(self.key_slice)
            return
        rows = self.data.lesions_on_image(file_name)
        if not len(rows):
            raise WidgetDataError(f"no annotated lesion on {file_name}; the viewer shows key images")
        (show or self.show_lesion)(str(self.data.lesions["lesion_id"].iat[int(rows[0])]))

    def set_review(self, proposal_id: str | None, status: dict[str, str] | None = None) -> None:
        """Highlight the candidate under review and colour the others by their status."""
        self.review_focus = proposal_id
        if status is not None:
            self.candidate_status = dict(status)
        self.overlays_changed.emit()

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
                item = {
                    "box": [float(rec.x1), float(rec.y1), float(rec.x2), float(rec.y2)],
                    "score": float(rec.score),
                    "label": label,
                    "color": (
                        self.labels.color_of(label)
                        if self.labels is not None and label in self.labels._index
                        else TYPE_COLORS.get(label, "#39FF14")
                    ),
                }
                pid = getattr(rec, "proposal_id", None)
                if key == "candidates" and pid is not None:
                    item["id"] = str(pid)
                    item["status"] = self.candidate_status.get(str(pid), "pending")
                    item["current"] = str(pid) == self.review_focus
                out[key].append(item)
        return out


