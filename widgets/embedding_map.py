"""The embedding map widget: every lesion as a point of the UMAP, coloured by its current label."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import traitlets as t

from .data import LabData, WidgetDataError
from .lab_widget import LabWidget
from .models import LabelState, MapModel, open_label_store

__all__ = ["EmbeddingMap", "point_bytes"]


def point_bytes(points) -> bytes:
    """Point indices as the map's ``selection`` carries them: little-endian uint32 bytes.

    Raises
    ------
    WidgetDataError
        When ``points`` is not a flat sequence of non-negative integers below 2**32.
    """
    if isinstance(points, bytes | bytearray | memoryview):
        b = bytes(points)
        if len(b) % 4:
            raise WidgetDataError(
                f"a selection as bytes holds uint32 indices (4 bytes each), got {len(b)} bytes")
        return b
    arr = np.asarray(points if not isinstance(points, set | frozenset) else sorted(points))
    if arr.size == 0:
        return b""
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise WidgetDataError(
            f"a selection is a list of point indices (integers), got {arr.dtype} of shape "
            f"{arr.shape}")
    if arr.min() < 0 or arr.max() >= 2**32:
        raise WidgetDataError(f"point index {int(arr.min() if arr.min() < 0 else arr.max())} "
                              "is out of range")
    return arr.astype("<u4").tobytes()


class PointIndices(t.Bytes):
    """The selected point indices, synced as one binary buffer (little-endian uint32).

    A lasso over a million-point map selects hundreds of thousands of points; as a JSON list
    they took seconds to reach Python (the kernel decodes and walks every element), as bytes
    they are one buffer that ``np.frombuffer`` reads as it is. Python may assign bytes, a list
    or an array of indices; the trait always holds the bytes (see ``EmbeddingMap.selected``).
    """

    def validate(self, obj, value):
        try:
            return point_bytes(value)
        except WidgetDataError as exc:
            raise t.TraitError(f"{type(obj).__name__}.selection: {exc}") from None


class EmbeddingMap(LabWidget):
    """WebGL scatter of the lesion embeddings: hover, click, lasso and box select, filters.

    Coordinates travel once as float32 bytes, labels as one uint8 class index per point, so
    recolouring 32,735 points after a correction is a 32 kB message.

    Parameters
    ----------
    model : MapModel
        The headless state (see :class:`widgets.models.MapModel`).
    canvas_size : int, default 520
        Side of the plot in CSS pixels.
    renderer : {"auto", "webgl", "canvas2d"}
        ``auto`` draws with WebGL when the browser has it on a GPU, else on a 2-D canvas
        (which rasterizes the points itself, in JavaScript). A WebGL in software
        (SwiftShader, llvmpipe: a machine without a GPU) counts as no WebGL: it took about
        2 s per frame of 1,000,000 points, during which the page's main thread waited
        (``bench/bench_map_scale.py``), where the 2-D canvas drew it in about 70 ms (a
        frame on screen). ``webgl`` uses WebGL even in software; ``canvas2d`` never does. The
        front end writes what it chose in its element's ``data-renderer`` (and why, in
        ``data-renderer-why``).

    Attributes
    ----------
    clicks : list of str
        Lesion ids clicked, most recent last (handy in a notebook).
    selected : numpy.ndarray
        The selected point indices (read and write; ``selection`` is the same as uint32
        bytes, the form the front end sends and receives).
    """

    _esm = Path(__file__).with_name("embedding_map.js")
    _css = Path(__file__).with_name("embedding_map.css")

    xy = t.Bytes(b"").tag(sync=True)
    codes = t.Bytes(b"").tag(sync=True)
    classes = t.List(t.Dict()).tag(sync=True)
    point_visible = t.Bytes(b"").tag(sync=True)
    selection = PointIndices().tag(sync=True)
    current = t.Int(-1).tag(sync=True)
    click = t.Dict().tag(sync=True)
    hover_point = t.Int(-1).tag(sync=True)
    hover = t.Dict().tag(sync=True)
    hover_thumb = t.Bytes(b"").tag(sync=True)
    hover_box = t.List(t.Float()).tag(sync=True)
    thumb_size = t.Int(72).tag(sync=True)
    filters = t.Dict().tag(sync=True)
    filter_options = t.Dict().tag(sync=True)
    n_points = t.Int(0).tag(sync=True)
    title = t.Unicode("Lesion embedding map").tag(sync=True)
    canvas_size = t.Int(520).tag(sync=True)
    renderer = t.Enum(("auto", "webgl", "canvas2d"), "auto").tag(sync=True)

    def __init__(self, model: MapModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.clicks: list[str] = []
        self.recolor_seconds = float("nan")
        with self._quietly():
            self.xy = np.ascontiguousarray(model.data.point_xy(), dtype="<f4").tobytes()
            self.n_points = model.n_points
            self.filter_options = model.filter_options()
            self.filters = dict(model.filters)
            self._push_colors()
            self._push_visible()
            self.current = model.current
        model.colors_changed.connect(self._on_colors)
        model.filter_changed.connect(self._on_filter)
        model.selection_changed.connect(self._on_selection)
        model.current_changed.connect(self._on_current)

    @classmethod
    def from_run(cls, run_dir, user: str | None = None, **kwargs) -> EmbeddingMap:
        """A map of a run on its own (labels from its label store when it has one)."""
        data = LabData.from_run(run_dir)
        store = open_label_store(data.run) if data.run.pseudo_labels.is_file() else None
        return cls(MapModel(data, LabelState(data, store, user)), **kwargs)


    # model -> traits ---------------------------------------------------------------------------
    def _push_colors(self) -> None:
        self.classes = [dict(c) for c in self.model.labels.classes]
        self.codes = self.model.codes().astype(np.uint8).tobytes()

    def _push_visible(self) -> None:
        self.point_visible = self.model.visible().astype(np.uint8).tobytes()

    def _on_colors(self) -> None:
        t0 = time.perf_counter()
        with self._quietly():
            self._push_colors()
            names = self.model.labels.class_names()
            if self.filter_options.get("labels") != names:
                self.filter_options = {**self.filter_options, "labels": names}
            if self.model.filters["labels"] is not None:
                self._push_visible()
        self.recolor_seconds = time.perf_counter() - t0

    def _on_filter(self) -> None:
        with self._quietly():
            self.filters = dict(self.model.filters)
            self._push_visible()

    @property
    def selected(self) -> np.ndarray:
        """The selected point indices (int64, ascending), decoded from ``selection``."""
        return np.frombuffer(self.selection, dtype="<u4").astype(np.int64)

    @selected.setter
    def selected(self, points) -> None:
        self.selection = point_bytes(points)

    def _on_selection(self, selection: np.ndarray) -> None:
        b = point_bytes(np.asarray(selection, dtype=np.int64))
        if b != self.selection:
            with self._quietly():
                self.selection = b

    def _on_current(self, point: int) -> None:
        with self._quietly():
            self.current = int(point)

    # traits (front end) -> model ---------------------------------------------------------------
    @t.observe("selection")
    def _selected(self, change) -> None:
        if self._quiet:
            return
        sent = np.frombuffer(change["new"], dtype="<u4")
        new = self.model.select(sent, "replace")
        if not np.array_equal(new, sent):  # hidden points dropped, duplicates, out of order
            with self._quietly():
                self.selection = point_bytes(new)

    @t.observe("click")
    def _clicked(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        point = change["new"].get("point")
        if point is None:
            return
        self.clicks.append(self.model.click(int(point)))

    @t.observe("hover_point")
    def _hovered(self, change) -> None:
        p = int(change["new"])
        if self._quiet or p < 0 or p >= self.model.n_points:
            return
        info = self.model.hover(p)
        info["point"] = p
        thumb = self.model.data.thumbnail(info["lesion_id"], size=self.thumb_size)
        with self._quietly():
            if thumb is None:
                self.hover_thumb = b""
                self.hover_box = []
            else:
                self.hover_thumb = thumb[0].tobytes()
                self.hover_box = list(thumb[1])
            self.hover = info

    @t.observe("filters")
    def _filtered(self, change) -> None:
        if self._quiet:
            return
        f = dict(change["new"] or {})
        # only the filters the front end sends: the grid's (confidence, tags) stay as they are
        self.model.set_filters(**{k: f.get(k) for k in self.model.filters if k in f})
