"""Saved views of the lesion grid: filters, sort and selection under a name (:class:`ViewsModel`)."""

from __future__ import annotations

from .labels import LabelState
from .map import MapModel
from .signal import CorrectionError, Signal

#: Grid settings a view records besides the map's filters and selection.
GRID_KEYS = ("sort_by", "descending", "only_selected", "suggest_min")


class ViewsModel:
    """Named views (the map's filters, the grid's sort, the selection), kept by the label store:
    each user saves and deletes their own, everyone can list and load everyone's.

    Parameters
    ----------
    labels : LabelState
        The store and the user.
    map_model : MapModel
        Its filters and selection (the one selection the map, the grid and the viewer show).
    grid : GridModel
        Its sort settings.
    """

    def __init__(self, labels: LabelState, map_model: MapModel, grid):
        self.labels = labels
        self.map = map_model
        self.grid = grid
        self.changed = Signal()  # the list of views changed
        self.done = Signal()  # a short message after each successful action

    def spec(self) -> dict:
        """The current view: ``filters``, ``sort_by``, ``descending``, ``only_selected``,
        ``selection`` (lesion ids), JSON-ready."""
        filters = {k: (list(v) if isinstance(v, tuple | list) else v)
                   for k, v in self.map.filters.items()}
        return {"filters": filters, **{k: getattr(self.grid, k) for k in GRID_KEYS},
                "selection": self.map.selected_lesion_ids()}

    def views(self) -> list[dict]:
        """Every saved view: ``{owner, name, n_selected, updated_at, mine}``, the user's first."""
        store = self.labels.store
        if store is None:
            return []
        df = store.saved_views()
        me = self.labels.user
        out = [{"owner": str(o), "name": str(n), "n_selected": int(k), "updated_at": str(u)[:16],
                "mine": o == me}
               for o, n, k, u in zip(df["owner"], df["name"], df["n_selected"], df["updated_at"],
                                     strict=True)]
        return sorted(out, key=lambda v: (not v["mine"], v["owner"], v["name"]))

    def save(self, name: str, overwrite: bool = False) -> int:
        """Save the current view under ``name`` (the user's); returns its id."""
        store = self.labels.need_store()
        spec = self.spec()
        vid = store.save_view(name, self.labels.user, spec, overwrite=overwrite)
        self.changed.emit()
        self.done.emit(f"view {name.strip()!r} saved ({len(spec['selection'])} selected)")
        return vid

    def load(self, name: str, owner: str | None = None) -> str:
        """Apply a saved view (``owner``'s, default the user's): filters, sort, selection.

        Returns a message saying what was restored, including the lesions of its selection
        that are not shown now (not in this run, or hidden by its filters).
        """
        store = self.labels.need_store()
        owner = owner or self.labels.user
        spec = store.load_view(name, owner)
        filters = dict(spec.get("filters") or {})
        unknown = sorted(set(filters) - set(self.map.filters))
        if unknown:
            raise CorrectionError(f"view {name!r} of {owner} has unknown filter(s) "
                                  f"{', '.join(unknown)}; nothing was changed")
        if filters.get("tags") and self.map.tags is None:
            raise CorrectionError(f"view {name!r} filters by tags, but this run has no tags")
        grid = {k: spec[k] for k in GRID_KEYS if k in spec}
        self.map.set_filters(**{k: filters.get(k) for k in self.map.filters})
        self.grid.set(**grid)
        sel = [str(x) for x in spec.get("selection") or []]
        got = self.map.select_lesions(sel)
        missing = len(sel) - len(got)
        msg = f"view {name!r} of {owner} loaded: {len(got)} selected"
        if missing:
            msg += f" ({missing} of its lesions are not shown: not in this run or filtered out)"
        self.done.emit(msg)
        return msg

    def delete(self, name: str) -> int:
        """Delete one of the user's views (the store only marks it deleted)."""
        vid = self.labels.need_store().delete_view(name, self.labels.user)
        self.changed.emit()
        self.done.emit(f"view {name!r} deleted")
        return vid
