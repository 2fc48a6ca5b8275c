"""LesionLab: the viewer, the map, the correction panel and the gallery of one run, linked."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as ipw

from .correction_panel import CorrectionPanel
from .embedding_map import EmbeddingMap
from .finetune_panel import FinetunePanel
from .lesion_grid import LesionGrid
from .models import LabModel
from .proposal_review import ProposalReviewPanel
from .similar_gallery import SimilarGallery
from .slice_viewer import SliceViewer

__all__ = ["LesionLab"]


class LesionLab(ipw.Box):
    """The lab in one notebook cell: map | viewer on top, corrections (or the review of mined
    lesions, in the next tab) | similar lesions below, then the lesion grid.

    A click on the map, on a suggestion or in the gallery shows that lesion in the viewer and the
    gallery; a lasso selects lesions for the correction panel; every correction goes through the
    run's label store with ``user`` and recolours the map at once. The grid shows the map's
    lesions (its filters, its selection marked) as thumbnails, sortable; a click there shows and
    selects a lesion, and its *misses* / *false positives* views open a detector's FROC cases in
    the viewer. The parts are attributes (:attr:`viewer`, :attr:`map`, :attr:`corrections`,
    :attr:`gallery`, :attr:`grid`, :attr:`review`) and can be displayed on their own; :attr:`model` is the
    headless :class:`widgets.models.LabModel`. The grid tags the selection, filters by tag and
    confidence and keeps saved views; below it, :attr:`finetune` starts fine-tuning on the
    current labels as a background job of the run and shows its progress.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        A run directory made by the pipeline.
    user : str, optional
        Name recorded with every correction (default: the login name).
    store : LabelStore, "auto" or None
        An open label store; ``"auto"`` (default) opens ``RUN_DIR/labels.sqlite``; None shows
        the mined labels read-only.
    k : int, default 8
        Number of similar lesions shown.
    size : int, default 500
        Side of the map and the slice viewer in CSS pixels.

    Examples
    --------
    >>> from widgets import LesionLab
    >>> LesionLab("runs/demo", user="alice")  # doctest: +SKIP
    """

    def __init__(self, run_dir: str | Path, user: str | None = None, *, store="auto", k: int = 8,
                 size: int = 500, **kwargs):
        self.model = LabModel(run_dir, user, store=store, k=k)
        m = self.model
        self.viewer = SliceViewer(m.viewer, canvas_size=size)
        self.map = EmbeddingMap(m.map, canvas_size=size)
        self.corrections = CorrectionPanel(m.corrections, lab_actions=True)
        self.gallery = SimilarGallery(m.gallery)
        self.grid = LesionGrid(m.grid, views=m.views)
        self.finetune = FinetunePanel(m.finetune)
        # corrections and the review of mined lesions share one place, as tabs
        self.review = ProposalReviewPanel(m.review)
        n_pending = m.review.counts()["pending"]
        self.tasks = ipw.Tab(
            children=[self.corrections, self.review],
            titles=("Correct labels", f"Review mined ({n_pending})"),
        )
        m.review.changed.connect(lambda: self.tasks.set_title(
            1, f"Review mined ({m.review.counts()['pending']})"))
        self.corrections.lesion_requested.connect(self._show_and_select)
        self.gallery.lesion_requested.connect(m.show_lesion)
        # map | viewer above corrections | gallery; wraps to one column in a narrow notebook
        for w in (self.map, self.viewer, self.tasks, self.gallery):
            w.layout = ipw.Layout(width=f"{size + 18}px", margin="0 10px 10px 0")
        self.grid.layout = ipw.Layout(width=f"{2 * size + 46}px", margin="0 10px 10px 0")
        self.finetune.layout = ipw.Layout(width=f"{2 * size + 46}px", margin="0 10px 10px 0")
        kwargs.setdefault(
            "layout", ipw.Layout(display="flex", flex_flow="row wrap", align_items="flex-start")
        )
        super().__init__(
            children=[self.map, self.viewer, self.tasks, self.gallery, self.grid], **kwargs
        )
        # the lesion in 3-D (VolumeView), following the viewer; loaded only while its panel is open
        from .volume_view import VolumeView

        self.volume = VolumeView(m.viewer, canvas_size=max(160, size // 2 + 40), active=False)
        self.volume_panel = ipw.Accordion(children=[self.volume], titles=("3-D volume",),
                                          selected_index=None, layout=ipw.Layout(width="100%"))
        self.volume_panel.observe(lambda ch: setattr(self.volume, "active", ch["new"] == 0),
                                  "selected_index")
        self.children = (*self.children, self.finetune, self.volume_panel)

    def _show_and_select(self, lesion_id: str) -> None:
        self.model.show_lesion(lesion_id)

    @property
    def user(self) -> str:
        return self.model.user

    @property
    def store(self):
        """The label store the corrections go to (None for a run without pseudo-labels)."""
        return self.model.labels.store

    def show_lesion(self, lesion_id: str) -> None:
        """Show a lesion in the viewer, ring it on the map and query the gallery."""
        self.model.show_lesion(lesion_id)
