"""The lesion grid widget: thumbnails sorted and filtered like the map, or a model's FROC cases."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anywidget
import numpy as np
import traitlets as t

from deeplesion_lab.errors import LabError

from .models import GridModel

__all__ = ["LesionGrid"]


class LesionGrid(anywidget.AnyWidget):
    """Key-slice thumbnails of lesions (FiftyOne's sample grid): sort by label, confidence,
    size, split, patient or suggest-next score; the map's filters and selection apply, and a
    click shows a lesion in the viewer and selects it (shift: adds). Switched to *misses* or
    *false positives*, it lists those of a detector model at a chosen number of false positives
    per image; a click opens the case in the viewer with that model's boxes at that operating
    point.

    Parameters
    ----------
    model : GridModel
        The headless grid (see :class:`widgets.models.GridModel`).
    thumb_size : int, default 80
        Thumbnail side in pixels.
    page_size : int, default 24
        Thumbnails per page.
    """

    _esm = Path(__file__).with_name("lesion_grid.js")

    items = t.List(t.Dict()).tag(sync=True)
    thumbs = t.Bytes(b"").tag(sync=True)
    thumb_size = t.Int(80).tag(sync=True)
    page_size = t.Int(24).tag(sync=True)
    offset = t.Int(0).tag(sync=True)
    total = t.Int(0).tag(sync=True)
    source = t.Unicode("map").tag(sync=True)
    sources = t.List(t.Unicode()).tag(sync=True)
    sort_by = t.Unicode("label").tag(sync=True)
    sorts = t.List(t.Unicode()).tag(sync=True)
    descending = t.Bool(False).tag(sync=True)
    only_selected = t.Bool(False).tag(sync=True)
    models = t.List(t.Unicode()).tag(sync=True)
    model_name = t.Unicode("").tag(sync=True)
    fp_rate = t.Float(4.0).tag(sync=True)
    fp_rates = t.List(t.Float()).tag(sync=True)
    threshold = t.Float(-1.0).tag(sync=True)
    click = t.Dict().tag(sync=True)
    status = t.Unicode("").tag(sync=True)

    def __init__(self, model: GridModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._quiet = False
        self.sources = list(model.SOURCES) if model.data.prediction_sets else ["map"]
        self.sorts = list(model.SORTS)
        self.fp_rates = list(model.FP_RATES)
        model.changed.connect(self._refresh)
        self._refresh()

    @contextlib.contextmanager
    def _quietly(self):
        self._quiet = True
        try:
            with self.hold_sync():
                yield
        finally:
            self._quiet = False

    def _refresh(self) -> None:
        m = self.model
        status = ""
        try:
            items, total = m.items(self.offset, self.page_size)
            if self.offset and self.offset >= total:
                self.offset = 0
                items, total = m.items(0, self.page_size)
        except LabError as exc:
            items, total, status = [], 0, str(exc)
        s = self.thumb_size
        thumbs = []
        for it in items:
            th = m.thumbnail(it, size=s)
            it["thumb_box"] = list(th[1]) if th is not None else None
            thumbs.append(th[0] if th is not None else np.zeros((s, s), np.uint8))
        with self._quietly():
            self.source, self.sort_by, self.descending = m.source, m.sort_by, m.descending
            self.only_selected = m.only_selected
            self.models = list(m.data.prediction_sets)
            self.model_name = m.model or ""
            self.fp_rate = m.fp_rate
            self.threshold = float(m.threshold) if m.threshold is not None and m.source != "map" else -1.0
            self.thumbs = b"".join(a.astype(np.uint8).tobytes() for a in thumbs)
            self.items = items
            self.total = int(total)
            self.status = status

    @t.observe("source", "sort_by", "descending", "only_selected", "model_name", "fp_rate")
    def _settings(self, change) -> None:
        if self._quiet:
            return
        key = {"model_name": "model"}.get(change["name"], change["name"])
        try:
            if change["name"] in ("source", "model_name", "fp_rate", "only_selected"):
                self.offset = 0
            self.model.set(**{key: change["new"]})
        except LabError as exc:
            self.status = str(exc)

    @t.observe("offset")
    def _paged(self, change) -> None:
        if not self._quiet:
            self._refresh()

    @t.observe("click")
    def _clicked(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        idx = int(change["new"].get("index", -1))
        if 0 <= idx < len(self.items):
            self.model.open(self.items[idx], add=bool(change["new"].get("shift")))
