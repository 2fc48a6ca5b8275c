"""All view models of a run, linked as in :class:`widgets.LesionLab` (:class:`LabModel`)."""

from __future__ import annotations

from pathlib import Path

from deeplesion_lab.run import RunDir

from ..data import LabData
from .corrections import CorrectionModel
from .finetune import FinetuneModel
from .gallery import GalleryModel
from .grid import GridModel
from .labels import LabelState, open_label_store
from .map import MapModel
from .review import ReviewModel
from .tags import TagModel
from .viewer import ViewerModel
from .views import ViewsModel


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
        self.review = ReviewModel(self.run, self.labels, self.viewer)
        self.review.show_lesion = self.show_lesion  # the proposal's image everywhere
        self.tags = TagModel(self.labels, self.map)
        self.grid.tags = self.tags
        self.tags.changed.connect(self.grid.changed.emit)
        self.views = ViewsModel(self.labels, self.map, self.grid)
        self.finetune = FinetuneModel(self.run, self.labels)
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
