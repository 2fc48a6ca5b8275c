"""The slice viewer widget: a lesion's series with its boxes, RECIST diameters and windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import traitlets as t

from deeplesion_lab.images import WINDOW_PRESETS

from .data import LabData
from .lab_widget import LabWidget
from .models import LabelState, ViewerModel, lesion_summary

__all__ = ["SliceViewer"]


class SliceViewer(LabWidget):
    """Scroll a lesion's CT series; window presets and level/width drag; boxes and diameters.

    The slice travels as raw int16 HU bytes and is windowed in the browser, so window changes
    never wait for Python; a slice change is one binary message.

    Parameters
    ----------
    model : ViewerModel
        The headless state (see :class:`widgets.models.ViewerModel`); use :meth:`from_run` or
        :meth:`from_manifest` to build one.
    lesion_id : str, optional
        The lesion to show first.
    canvas_size : int, default 512
        Side of the image area in CSS pixels.

    Examples
    --------
    >>> SliceViewer.from_manifest("data_manifests/real.parquet")  # doctest: +SKIP
    """

    _esm = Path(__file__).with_name("slice_viewer.js")
    _css = Path(__file__).with_name("slice_viewer.css")

    image = t.Bytes(b"").tag(sync=True)
    image_shape = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    image_slice = t.Int(-1).tag(sync=True)
    slices = t.List(t.Int()).tag(sync=True)
    key_slice = t.Int(-1).tag(sync=True)
    slice_index = t.Int(-1).tag(sync=True)
    window_level = t.Float(40.0).tag(sync=True)
    window_width = t.Float(400.0).tag(sync=True)
    preset = t.Unicode("soft tissue").tag(sync=True)
    presets = t.Dict().tag(sync=True)
    annotations = t.List(t.Dict()).tag(sync=True)
    predictions = t.List(t.Dict()).tag(sync=True)
    candidates = t.List(t.Dict()).tag(sync=True)
    show_annotations = t.Bool(True).tag(sync=True)
    show_predictions = t.Bool(True).tag(sync=True)
    show_candidates = t.Bool(True).tag(sync=True)
    score_threshold = t.Float(0.5).tag(sync=True)
    prediction_models = t.List(t.Unicode()).tag(sync=True)
    prediction_model = t.Unicode("").tag(sync=True)
    spacing = t.Float(0.0).tag(sync=True)
    lesion_id = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    subtitle = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    canvas_size = t.Int(512).tag(sync=True)

    def __init__(self, model: ViewerModel, lesion_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.presets = {k: [float(v[0]), float(v[1])] for k, v in WINDOW_PRESETS.items()}
        self.show_annotations = model.show["annotations"]
        self.show_predictions = model.show["predictions"]
        self.show_candidates = model.show["candidates"]
        self.score_threshold = model.score_threshold
        self.prediction_models = model.prediction_models
        self.prediction_model = model.prediction_model or ""
        model.lesion_changed.connect(self._on_lesion)
        model.slice_changed.connect(self._on_slice)
        model.window_changed.connect(self._on_window)
        model.overlays_changed.connect(self._on_overlays)
        if lesion_id is not None:
            model.show_lesion(lesion_id)
        elif model.lesion_id is not None:
            self._on_lesion(model.lesion_id)
            self._on_window()
            self._on_slice(model.slice_index)

    # constructors ------------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest, lesion_id: str | None = None, *, images_root=None,
                      predictions=None, candidates=None, **kwargs) -> SliceViewer:
        """A viewer over a manifest (path or DataFrame); shows the first lesion with an image."""
        data = LabData.from_manifest(manifest, images_root, predictions=predictions,
                                     candidates=candidates)
        model = ViewerModel(data)
        if lesion_id is None:
            has = data.lesions["has_image"].to_numpy(bool) if "has_image" in data.lesions else None
            i = int(np.flatnonzero(has)[0]) if has is not None and has.any() else 0
            lesion_id = str(data.lesion_ids[i])
        return cls(model, lesion_id, **kwargs)

    @classmethod
    def from_run(cls, run_dir, lesion_id: str | None = None, **kwargs) -> SliceViewer:
        """A viewer over a run's manifest, with its predictions and candidates."""
        data = LabData.from_run(run_dir)
        model = ViewerModel(data, LabelState(data, None, user="viewer"))
        return cls(model, lesion_id or str(data.lesion_ids[0]), **kwargs)

    # API ---------------------------------------------------------------------------------------
    def show_lesion(self, lesion_id: str) -> None:
        """Show a lesion on its key slice."""
        self.model.show_lesion(lesion_id)

    # model -> traits ---------------------------------------------------------------------------

    def _on_lesion(self, lesion_id: str) -> None:
        m = self.model
        info = lesion_summary(m.data, m.labels, lesion_id)
        with self._quietly():
            self.lesion_id = lesion_id
            self.slices = list(m.slices)
            self.key_slice = int(m.key_slice)
            self.spacing = float(m.spacing()) if np.isfinite(m.spacing()) else 0.0
            self.title = f"{info['label']} · {lesion_id}"
            size = f"{info['long_mm']}×{info['short_mm']} mm" if info["long_mm"] is not None else ""
            self.subtitle = "  ".join(
                x for x in (f"patient {info['patient']} study {info['study']}", info["split"],
                            size, "possibly noisy" if info["noisy"] else "") if x
            )

    def _on_slice(self, index: int) -> None:
        self._push_slice()

    def _push_slice(self) -> None:
        m = self.model
        hu = m.current_hu()
        with self._quietly():
            self.slice_index = int(m.slice_index)
            if hu is None:
                self.status = (
                    f"slice {m.slice_index} of {m.file_name} is not on disk"
                    if m.file_name else "no lesion"
                )
                self.image = b""
                self.image_shape = [0, 0]
            else:
                self.status = ""
                self.image = np.ascontiguousarray(hu, dtype="<i2").tobytes()
                self.image_shape = [int(hu.shape[0]), int(hu.shape[1])]
            self._set_overlays()
            self.image_slice = int(m.slice_index)

    def _set_overlays(self) -> None:
        ov = self.model.overlays()
        self.annotations = ov["annotations"]
        self.predictions = ov["predictions"]
        self.candidates = ov["candidates"]

    def _on_window(self) -> None:
        with self._quietly():
            self.window_level = self.model.level
            self.window_width = self.model.width
            self.preset = self.model.preset

    def _on_overlays(self) -> None:
        m = self.model
        with self._quietly():
            self.show_annotations = m.show["annotations"]
            self.show_predictions = m.show["predictions"]
            self.show_candidates = m.show["candidates"]
            self.score_threshold = m.score_threshold
            self.prediction_models = m.prediction_models
            self.prediction_model = m.prediction_model or ""
            self._set_overlays()
            if m.lesion_id is not None:
                info = lesion_summary(m.data, m.labels, m.lesion_id)
                self.title = f"{info['label']} · {m.lesion_id}"

    # traits (front end) -> model ---------------------------------------------------------------
    @t.observe("slice_index")
    def _slice_requested(self, change) -> None:
        if self._quiet or self.model.lesion_id is None:
            return
        shown = self.model.set_slice(change["new"])
        if shown != change["new"] or self.image_slice != shown:
            self._push_slice()

    @t.observe("preset")
    def _preset_requested(self, change) -> None:
        if self._quiet or change["new"] == "custom":
            return
        self.model.set_preset(change["new"])

    @t.observe("window_level", "window_width")
    def _window_dragged(self, change) -> None:
        if self._quiet:
            return
        self.model.set_window(self.window_level, self.window_width)

    @t.observe("show_annotations", "show_predictions", "show_candidates")
    def _toggled(self, change) -> None:
        if not self._quiet:
            self.model.show[change["name"][len("show_"):]] = bool(change["new"])

    @t.observe("score_threshold")
    def _threshold(self, change) -> None:
        if not self._quiet:
            self.model.score_threshold = float(change["new"])

    @t.observe("prediction_model")
    def _model_chosen(self, change) -> None:
        if not self._quiet and change["new"] and change["new"] != self.model.prediction_model:
            self.model.set_prediction_model(change["new"])
