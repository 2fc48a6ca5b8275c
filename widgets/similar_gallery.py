"""The similar-lesions gallery widget: the top-K nearest lesions of the one in the viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import traitlets as t

from .data import LabData
from .lab_widget import LabWidget
from .models import GalleryModel, LabelState, Signal

__all__ = ["SimilarGallery"]


class SimilarGallery(LabWidget):
    """Thumbnails (with boxes) of the lesions most similar to the query, with distance and
    patient/study; a click emits :attr:`lesion_requested`.

    Parameters
    ----------
    model : GalleryModel
        The headless gallery (query, k, scope, results).
    thumb_size : int, default 96
        Thumbnail side in pixels (sent as uint8 bytes).
    """

    _esm = Path(__file__).with_name("similar_gallery.js")
    _css = Path(__file__).with_name("similar_gallery.css")

    query = t.Dict().tag(sync=True)
    items = t.List(t.Dict()).tag(sync=True)
    thumbs = t.Bytes(b"").tag(sync=True)
    thumb_size = t.Int(96).tag(sync=True)
    scope = t.Unicode("all").tag(sync=True)
    click = t.Dict().tag(sync=True)

    def __init__(self, model: GalleryModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.lesion_requested = Signal()
        model.changed.connect(self._on_results)
        if model.labels is not None:
            model.labels.changed.connect(lambda: self._on_results(model.results))
        self._on_results(model.results)

    @classmethod
    def from_run(cls, run_dir, lesion_id: str | None = None, k: int = 8, **kwargs) -> SimilarGallery:
        data = LabData.from_run(run_dir)
        gm = GalleryModel(data, LabelState(data, None, user="viewer"), k=k)
        w = cls(gm, **kwargs)
        gm.set_query(lesion_id or str(data.lesion_ids[0]))
        return w

    def _on_results(self, results: pd.DataFrame) -> None:
        m = self.model
        s = self.thumb_size
        items, thumbs = [], []
        labels = m.labels
        for r in results.itertuples(index=False):
            th = m.data.thumbnail(r.lesion_id, size=s)
            color = labels.color_of(r.label) if labels is not None else "#bbbbbb"
            items.append(
                {
                    "lesion_id": r.lesion_id,
                    "distance": round(float(r.distance), 4),
                    "patient": int(r.patient),
                    "study": int(r.study),
                    "label": str(r.label),
                    "color": color,
                    "box": list(th[1]) if th is not None else None,
                }
            )
            thumbs.append(th[0] if th is not None else np.zeros((s, s), np.uint8))
        q = {}
        if m.query is not None:
            r = m.data.row_of[m.query]
            lab = str(labels.labels[r]) if labels is not None else ""
            q = {"lesion_id": m.query, "label": lab,
                 "color": labels.color_of(lab) if labels is not None else "#bbbbbb"}
        with self._quietly():
            self.query = q
            self.thumbs = b"".join(a.astype(np.uint8).tobytes() for a in thumbs)
            self.items = items
            self.scope = m.scope

    @t.observe("click")
    def _clicked(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        lid = change["new"].get("lesion_id")
        if lid is None:
            idx = int(change["new"].get("index", -1))
            if not 0 <= idx < len(self.items):
                return
            lid = self.items[idx]["lesion_id"]
        self.lesion_requested.emit(str(lid))

    @t.observe("scope")
    def _scoped(self, change) -> None:
        if not self._quiet:
            self.model.set_scope(change["new"])
