"""Tags on lesions, from the run's label store (:class:`TagModel`)."""

from __future__ import annotations

import numpy as np

from .labels import LabelState
from .map import MapModel
from .signal import CorrectionError, Signal


class TagModel:
    """The tags of a run's lesions: shared work, kept by the label store as events (who, when),
    undone with the user's other changes (:meth:`CorrectionModel.undo`).

    Tagging acts on the map's selection (the one selection the map, the grid and the viewer
    show). The state follows the store like :class:`LabelState` (its own writes at once, other
    people's on :meth:`LabelState.poll`), and :attr:`changed` fires after each update; the map's
    ``tags`` filter is re-applied then.

    Parameters
    ----------
    labels : LabelState
        The labels and the store (None: no tags, tagging raises :class:`CorrectionError`).
    map_model : MapModel
        Its selection is what gets tagged; its ``tags`` filter uses this model.
    tool : str, default "lesion-grid"
        Recorded with every tag event.
    """

    def __init__(self, labels: LabelState, map_model: MapModel, tool: str = "lesion-grid"):
        self.labels = labels
        self.map = map_model
        self.tool = tool
        self.changed = Signal()
        self.done = Signal()  # a short message after each successful action
        self._by_lesion: dict[str, tuple[str, ...]] = {}
        self._counts: dict[str, int] = {}
        self._version: int | None = None
        map_model.tags = self
        labels.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the tags when the store has new events; emit :attr:`changed` if so."""
        store = self.labels.store
        if store is None:
            return
        v = int(store.version())
        if v == self._version:
            return
        self._version = v
        df = store.lesion_tags()
        by: dict[str, list[str]] = {}
        for lid, tag in zip(df["lesion_id"], df["tag"], strict=True):
            by.setdefault(str(lid), []).append(str(tag))
        self._by_lesion = {k: tuple(v) for k, v in by.items()}
        counts = store.tag_counts()
        self._counts = dict(zip(counts["tag"], counts["n_lesions"].astype(int), strict=True))
        if self.map.filters.get("tags"):
            self.map.set_filters()  # re-apply the tag filter to the new tags
        self.changed.emit()

    # reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Tags in use, most used first."""
        return list(self._counts)

    def counts(self) -> dict[str, int]:
        """Lesions per tag, most used first."""
        return dict(self._counts)

    def tags_of(self, lesion_id: str) -> tuple[str, ...]:
        return self._by_lesion.get(str(lesion_id), ())

    def mask(self, lesion_ids: np.ndarray, tags: list[str]) -> np.ndarray:
        """True for the lesions carrying any of ``tags``."""
        want = set(tags)
        return np.fromiter((bool(want.intersection(self._by_lesion.get(str(i), ())))
                            for i in lesion_ids), bool, len(lesion_ids))

    # actions -----------------------------------------------------------------------------------
    def _selection(self) -> list[str]:
        ids = self.map.selected_lesion_ids()
        if not ids:
            raise CorrectionError("nothing selected: click, shift-click or lasso lesions first")
        return ids

    def _apply(self, op: str, tags: str | list[str]) -> tuple[int | None, int, str]:
        """Run the store's ``tag`` or ``untag`` on the selection: (event id, count, tag names)."""
        store = self.labels.need_store()
        ids = self._selection()
        names = [tags] if isinstance(tags, str) else list(tags)
        ev = getattr(store, op)(ids, names, self.labels.user, tool=self.tool)
        return ev, len(ids), ", ".join(n.strip() for n in names)

    def tag_selection(self, tags: str | list[str]) -> int | None:
        """Tag the selected lesions (one event); returns its id (None: they all had them)."""
        ev, n, what = self._apply("tag", tags)
        self.done.emit(f"tagged {n} lesion(s) {what}" if ev is not None
                       else f"the {n} selected lesion(s) are all tagged {what} already")
        return ev

    def untag_selection(self, tags: str | list[str]) -> int | None:
        """Remove tags from the selected lesions (one event); None when none had them."""
        ev, n, what = self._apply("untag", tags)
        self.done.emit(f"removed {what} from the selected lesion(s)" if ev is not None
                       else f"none of the {n} selected lesion(s) is tagged {what}")
        return ev
