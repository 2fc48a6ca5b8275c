"""Corrections: relabel, clusters, merge, split, classes, undo/redo, history, suggestions
(:class:`CorrectionModel`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .labels import LabelState
from .map import MapModel
from .signal import CorrectionError, Signal

#: Tools whose events are not a person's work: the pipeline's simulated annotator (demo runs
#: with a truth file, ``deeplesion_lab.pipeline.simulate_corrections``).
SIMULATED_TOOLS = ("pipeline-simulated",)

class CorrectionModel:
    """Corrections of the current labels, always through the label store with the user's name.

    Parameters
    ----------
    labels : LabelState
        Labels and store.
    map_model : MapModel
        Its selection is what "the selection" means.
    tool : str, default "lesion-lab"
        Recorded with every event (which tool made it).
    """

    def __init__(self, labels: LabelState, map_model: MapModel, tool: str = "lesion-lab"):
        self.labels = labels
        self.map = map_model
        self.data = labels.data
        self.tool = tool
        self.done = Signal()  # emits a short message after each successful action
        self._ranker = None
        self._ranker_rows: np.ndarray | None = None

    def _selection(self) -> list[str]:
        ids = self.map.selected_lesion_ids()
        if not ids:
            raise CorrectionError("nothing selected: lasso or box-select lesions on the map first")
        return ids

    # actions -----------------------------------------------------------------------------------
    def relabel_selection(self, label: str, comment: str | None = None) -> int:
        """Give the selected lesions ``label`` (one store event); returns the event id."""
        store = self.labels.need_store()
        ids = self._selection()
        ev = store.relabel(ids, self.labels.check_label(label), self.labels.user,
                           tool=self.tool, comment=comment)
        self.done.emit(f"relabelled {len(ids)} lesion(s) as {label}")
        return int(ev)

    def mark_selection(self, what: str, comment: str | None = None) -> int:
        """Mark the selection ``"not a lesion"`` or ``"unsure"``; returns the event id."""
        store = self.labels.need_store()
        ids = self._selection()
        if what == "not a lesion":
            ev = store.mark_not_lesion(ids, self.labels.user, tool=self.tool, comment=comment)
        elif what == "unsure":
            ev = store.mark_unsure(ids, self.labels.user, tool=self.tool, comment=comment)
        else:
            raise CorrectionError(f"mark as 'not a lesion' or 'unsure', not {what!r}")
        self.done.emit(f"{len(ids)} lesion(s) marked {what}")
        return int(ev)

    def _check_cluster(self, cluster: int) -> int:
        if not (self.labels.clusters == int(cluster)).any():
            known = sorted(int(c) for c in np.unique(self.labels.clusters) if c >= 0)
            raise CorrectionError(f"unknown cluster {cluster!r} (clusters: {known})")
        return int(cluster)

    def cluster_label(self, cluster: int) -> str:
        """The most common current label of a cluster (as in :meth:`clusters`)."""
        cluster = self._check_cluster(cluster)
        table = self.clusters()
        return str(table.loc[table["cluster"] == cluster, "label"].iloc[0])

    def relabel_cluster(self, cluster: int, label: str, comment: str | None = None) -> int:
        """Give every lesion of a mined cluster ``label``; returns the event id."""
        store = self.labels.need_store()
        cluster = self._check_cluster(cluster)
        ev = store.relabel_cluster(cluster, self.labels.check_label(label), self.labels.user,
                                   tool=self.tool, comment=comment)
        self.done.emit(f"cluster {cluster} relabelled as {label}")
        return int(ev)

    def merge_clusters(self, source: int, target: int, comment: str | None = None) -> int:
        """Merge cluster ``source`` into ``target``: its lesions move there and take the
        target's (most common) label. Returns the event id."""
        store = self.labels.need_store()
        source, target = self._check_cluster(source), self._check_cluster(target)
        if source == target:
            raise CorrectionError("merging a cluster into itself does nothing")
        label = self.cluster_label(target)
        if label not in self.labels.class_names(assignable=True):
            label = None  # an unlabeled target: keep each lesion's label
        ev = store.merge_clusters([source, target], self.labels.user, into=target, label=label,
                                  tool=self.tool, comment=comment)
        self.done.emit(f"cluster {source} merged into {target}" + (f" ({label})" if label else ""))
        return int(ev)

    def split_selection(self, new_label: str, color: str | None = None,
                        comment: str | None = None) -> int:
        """Split the selection off its cluster into a new cluster labelled ``new_label``
        (added to the taxonomy first when it is new). Returns the new cluster id.

        The selection must lie in one cluster (select the cluster, then lasso part of it).
        """
        store = self.labels.need_store()
        ids = self._selection()
        name = str(new_label or "").strip()
        if not name:
            raise CorrectionError("give the new class a name to split the selection into")
        rows = [self.data.row_of[i] for i in ids]
        clusters = sorted({int(c) for c in self.labels.clusters[rows]})
        if len(clusters) != 1 or clusters[0] < 0:
            raise CorrectionError(
                f"the selection spans clusters {clusters}: a split works inside one cluster "
                "(use Select on the cluster, then lasso part of it)"
            )
        if name not in self.labels.class_names(assignable=True):
            self.add_class(name, color)
        new = store.split_cluster(clusters[0], ids, self.labels.user, label=name,
                                  tool=self.tool, comment=comment)
        self.done.emit(f"split {len(ids)} lesion(s) of cluster {clusters[0]} into {new} ({name})")
        return int(new)

    def add_class(self, name: str, color: str | None = None) -> None:
        """Add a class (name, colour) to the store's taxonomy."""
        store = self.labels.need_store()
        color = color or self.labels._spare_color(len(self.labels.classes))
        store.add_class(str(name), color, self.labels.user, tool=self.tool)
        self.done.emit(f"class {name} added")

    def undo(self):
        """Undo this user's latest change (never another annotator's later work)."""
        res = self.labels.need_store().undo(self.labels.user, tool=self.tool)
        self.done.emit(f"undone: {res.target_op} of {len(res.lesion_ids)} lesion(s)")
        return res

    def redo(self):
        """Redo this user's latest undone change."""
        res = self.labels.need_store().redo(self.labels.user, tool=self.tool)
        self.done.emit(f"redone: {res.target_op} of {len(res.lesion_ids)} lesion(s)")
        return res

    def snapshot(self, name: str | None = None, comment: str | None = None) -> int:
        """Freeze the current labels (a label-store snapshot; fine-tuning can train on it).

        ``name`` defaults to the user and the time. Returns the snapshot id.
        """
        import time

        store = self.labels.need_store()
        name = (name or "").strip() or f"{self.labels.user} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        sid = int(store.snapshot(name, self.labels.user, comment))
        self.done.emit(f"snapshot {name!r} saved (id {sid})")
        return sid

    def export(self, fmt: str = "csv") -> Path:
        """Write the current labels to ``RUN_DIR/exports/labels-<time>.csv`` (``fmt="csv"``) or
        a COCO detection JSON (``fmt="coco"``, key images and boxes with the current labels)."""
        import time

        from deeplesion_lab.labels.export import export_coco, export_labels

        store = self.labels.need_store()
        run = self.data.run
        if run is None:
            raise CorrectionError("exports go to a run directory; this lab has none")
        if fmt not in ("csv", "coco"):
            raise CorrectionError(f"export as csv or coco, not {fmt!r}")
        folder = run.exports_dir
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if fmt == "csv":
            path = export_labels(store, folder / f"labels-{stamp}.csv")
        else:
            path = export_coco(store, folder / f"labels-{stamp}.coco.json", run.load_manifest())
        self.done.emit(f"labels exported to {path}")
        return Path(path)

    # views -------------------------------------------------------------------------------------
    def clusters(self) -> pd.DataFrame:
        """``cluster, label, n`` for every mined cluster (label = most common current label)."""
        cl = self.labels.clusters
        ok = cl >= 0
        if not ok.any():
            return pd.DataFrame(columns=["cluster", "label", "n"])
        ids, inv = np.unique(cl[ok], return_inverse=True)
        codes = self.labels.codes()[ok].astype(np.int64)
        m = len(self.labels.classes)
        counts = np.bincount(inv * m + codes, minlength=len(ids) * m).reshape(len(ids), m)
        names = self.labels.class_names()
        return pd.DataFrame(
            {
                "cluster": ids.astype(int),
                "label": [names[j] for j in counts.argmax(axis=1)],  # ties: the first class
                "n": counts.sum(axis=1).astype(int),
            }
        )

    def history(self, limit: int = 50, simulated: bool = False, **filters) -> pd.DataFrame:
        """The event log, newest first; the simulated annotator's events (:data:`SIMULATED_TOOLS`)
        only with ``simulated`` (they are not the user's work, and nobody's to undo)."""
        if simulated:
            return self.labels.history(limit=limit, **filters)
        ev = self.labels.history(limit=None, **filters)
        if len(ev) and "tool" in ev:
            ev = ev[~ev["tool"].isin(SIMULATED_TOOLS)]
        return ev.head(limit) if limit is not None else ev

    def simulated_summary(self) -> dict:
        """``{events, lesions, users}`` of the simulated annotator's events in the store."""
        ev = self.labels.history(limit=None)
        if not len(ev) or "tool" not in ev:
            return {"events": 0, "lesions": 0, "users": []}
        sim = ev[ev["tool"].isin(SIMULATED_TOOLS)]
        return {"events": int(len(sim)), "lesions": int(sim["n_changes"].fillna(0).sum()),
                "users": sorted(str(u) for u in sim["user"].unique())}

    def suggestions(self, top: int = 20) -> pd.DataFrame:
        """Lesions most likely mislabeled, most suspicious first (see :mod:`deeplesion_lab.suggest`).

        Lesions without an embedding, and those a person has already corrected, are left out.
        """
        from deeplesion_lab.suggest import MislabelRanker

        emb = self.data.embeddings
        if emb is None:
            raise CorrectionError("this run has no embeddings.parquet; suggestions need embeddings")
        ok = np.flatnonzero(np.isfinite(emb).all(axis=1))
        if len(ok) < 2:
            raise CorrectionError("suggestions need at least 2 lesions with embeddings")
        # neighbours and centre distances depend on embeddings and clusters only: fit once
        if self._ranker is None or not np.array_equal(self._ranker_rows, ok) or not np.array_equal(
            self._ranker.clusters_, self.labels.clusters[ok]
        ):
            self._ranker = MislabelRanker(n_neighbors=10).fit(
                self.data.lesion_ids[ok], emb[ok], self.labels.clusters[ok]
            )
            self._ranker_rows = ok
        reviewed = self.data.lesion_ids[ok][self.labels.corrected[ok]]
        ranked = self._ranker.rank(
            self.labels.labels[ok], self.labels.confidence[ok], exclude=list(reviewed), top=top
        )
        rows = ok[ranked["position"].to_numpy()]
        ranked["label"] = self.labels.labels[rows].astype(str)
        ranked["point"] = self.data.point_of_row[rows]
        return ranked


