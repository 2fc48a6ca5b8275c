"""The lesion grid widget: thumbnails sorted and filtered like the map, or a model's FROC cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import traitlets as t

from deeplesion_lab.errors import LabError

from .lab_widget import LabWidget
from .models import GridModel, TagModel, ViewsModel

__all__ = ["LesionGrid"]


class LesionGrid(LabWidget):
    """Key-slice thumbnails of lesions (FiftyOne's sample grid): sort by label, confidence,
    size, split, patient or suggest-next score; the map's filters and selection apply, and a
    click shows a lesion in the viewer and selects it (shift: adds). Switched to *misses* or
    *false positives*, it lists those of a detector model at a chosen number of false positives
    per image; a click opens the case in the viewer with that model's boxes at that operating
    point. Its per-class table lists, for each class, the lesions, hits, misses and false
    positives at that point; a click on a count lists those cases.

    Lesions selected (click, shift-click, or on the map) can be tagged and untagged (label-store
    events, undone with *Undo*); the grid filters by split, annotated type, tag and pseudo-label
    confidence (the map's filters, so the map shows the same lesions) and by a least
    suggest-next score (the grid's own), and named views (filters, sort, selection) are saved,
    listed, loaded and deleted (each user's own; everyone's readable).

    Parameters
    ----------
    model : GridModel
        The headless grid (see :class:`widgets.models.GridModel`).
    tags : TagModel, optional
        The run's tags (default ``model.tags``; None: no tag controls).
    views : ViewsModel, optional
        Saved views (None: no view controls).
    thumb_size : int, default 80
        Thumbnail side in pixels.
    page_size : int, default 24
        Thumbnails per page.
    """

    _esm = Path(__file__).with_name("lesion_grid.js")
    _css = Path(__file__).with_name("lesion_grid.css")

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
    # tags, filters, saved views, per-class FROC (issue 21)
    has_tags = t.Bool(False).tag(sync=True)
    tags = t.List(t.Dict()).tag(sync=True)
    tag_filter = t.List(t.Unicode()).tag(sync=True)
    confidence = t.List(t.Float()).tag(sync=True)
    split_filter = t.List(t.Unicode()).tag(sync=True)
    type_filter = t.List(t.Unicode()).tag(sync=True)
    filter_options = t.Dict().tag(sync=True)
    suggest_min = t.Float(None, allow_none=True).tag(sync=True)
    has_views = t.Bool(False).tag(sync=True)
    views = t.List(t.Dict()).tag(sync=True)
    user = t.Unicode("").tag(sync=True)
    selection_count = t.Int(0).tag(sync=True)
    class_table = t.List(t.Dict()).tag(sync=True)
    class_name = t.Unicode("").tag(sync=True)
    request = t.Dict().tag(sync=True)
    answer = t.Dict().tag(sync=True)

    def __init__(self, model: GridModel, tags: TagModel | None = None,
                 views: ViewsModel | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.tag_model = tags if tags is not None else model.tags
        self.views_model = views
        self.sources = list(model.SOURCES) if model.data.prediction_sets else ["map"]
        self.sorts = list(model.SORTS)
        self.fp_rates = list(model.FP_RATES)
        self.has_tags = self.tag_model is not None and model.labels.store is not None
        self.has_views = views is not None and model.labels.store is not None
        self.user = model.labels.user
        model.changed.connect(self._refresh)
        if views is not None:
            views.changed.connect(self._refresh_views)
        self._refresh()
        self._refresh_views()

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
            self.class_name = m.class_name or ""
            self.class_table = self._class_rows() if m.source != "map" else []
            f = m.map.filters
            self.tag_filter = list(f.get("tags") or [])
            self.confidence = [float(x) for x in f["confidence"]] if f.get("confidence") else []
            self.split_filter = list(f.get("splits") or [])
            self.type_filter = list(f.get("types") or [])
            self.suggest_min = m.suggest_min
            opts = m.map.filter_options()
            self.filter_options = {"splits": opts["splits"], "types": opts["types"],
                                   "suggest": m.corrections is not None}
            self.selection_count = len(m.map.selection)
            if self.tag_model is not None:
                self.tags = [{"tag": k, "n": int(n)} for k, n in self.tag_model.counts().items()]
            self.thumbs = b"".join(a.astype(np.uint8).tobytes() for a in thumbs)
            self.items = items
            self.total = int(total)
            self.status = status

    def _class_rows(self) -> list[dict]:
        try:
            table = self.model.class_table()
        except LabError:
            return []
        return [{"class": str(r["class"]), "lesions": int(r["lesions"]), "hit": int(r["hit"]),
                 "sensitivity": None if r["lesions"] == 0 else round(float(r["sensitivity"]), 3),
                 "misses": int(r["misses"]), "false_positives": int(r["false_positives"])}
                for r in table.to_dict("records")]

    def _refresh_views(self) -> None:
        if self.views_model is None:
            return
        with self._quietly():
            self.views = self.views_model.views()

    @t.observe("tag_filter", "confidence", "split_filter", "type_filter")
    def _filters(self, change) -> None:
        if self._quiet:
            return
        key = {"tag_filter": "tags", "split_filter": "splits",
               "type_filter": "types"}.get(change["name"], change["name"])
        try:
            self.offset = 0
            self.model.map.set_filters(**{key: list(change["new"]) or None})
        except LabError as exc:
            self.status = str(exc)

    @t.observe("suggest_min")
    def _suggest_filter(self, change) -> None:
        if self._quiet:
            return
        try:
            self.offset = 0
            self.model.set(suggest_min=change["new"])
        except LabError as exc:
            self.status = str(exc)

    @t.observe("request")
    def _on_request(self, change) -> None:
        req = dict(change["new"] or {})
        if self._quiet or not req:
            return
        answer = self._answer(req)
        with self._quietly():
            self.answer = answer

    def handle(self, req: dict) -> str:
        """Carry out one request of the front end (tag, untag, undo, save_view, load_view,
        delete_view, open_class); returns the message shown.

        Raises
        ------
        LabError
            It cannot be done (the message says why); nothing was written.
        """
        op = req.get("op")
        if op in ("tag", "untag"):
            if self.tag_model is None:
                raise LabError("tags are not offered here")
            tag = str(req.get("tag") or "")
            if op == "tag":
                ev = self.tag_model.tag_selection(tag)
                n = self.selection_count
                return (f"tagged {n} lesion(s) {tag.strip()} (event {ev}; Undo takes it back)"
                        if ev is not None else f"the {n} selected lesion(s) are tagged "
                                                f"{tag.strip()} already")
            ev = self.tag_model.untag_selection(tag)
            return (f"removed {tag.strip()} (event {ev}; Undo puts it back)" if ev is not None
                    else f"none of the selected lesions is tagged {tag.strip()}")
        if op == "undo":
            store = self.model.labels.need_store()
            res = store.undo(self.model.labels.user, tool="lesion-grid")
            return (f"undone event {res.target_event_id} ({res.target_op}, "
                    f"{len(res.lesion_ids)} lesion(s))")
        if op in ("save_view", "load_view", "delete_view"):
            if self.views_model is None:
                raise LabError("saved views are not offered here")
            name = str(req.get("name") or "")
            if op == "save_view":
                vid = self.views_model.save(name, overwrite=bool(req.get("overwrite")))
                return f"view {name.strip()!r} saved (id {vid})"
            if op == "load_view":
                self.offset = 0
                return self.views_model.load(name, req.get("owner") or None)
            self.views_model.delete(name)
            return f"view {name!r} deleted"
        if op == "open_class":
            self.offset = 0
            kind = str(req.get("kind") or "misses")
            self.model.open_class(str(req.get("class") or ""), kind)
            return f"{kind} of {req.get('class')}"
        raise LabError(f"unknown request {op!r}")

    @t.observe("source", "sort_by", "descending", "only_selected", "model_name", "fp_rate",
               "class_name")
    def _settings(self, change) -> None:
        if self._quiet:
            return
        key = {"model_name": "model"}.get(change["name"], change["name"])
        try:
            if change["name"] in ("source", "model_name", "fp_rate", "only_selected",
                                  "class_name"):
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
