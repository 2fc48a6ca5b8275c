"""Cluster operations of the label store: relabel, merge, split and rename clusters."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from . import schema
from .base import KEEP, StoreBase
from .checks import check_cluster, check_ids, check_text, check_user, list_ids
from .errors import EmptySelectionError, LabelStoreError
from .events import ChangeEvent

__all__ = ["ClusterMixin"]


class ClusterMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (clusters)."""

    def clusters(self) -> pd.DataFrame:
        """One row per current cluster: ``cluster``, ``name``, ``n_lesions``, ``n_corrected``,
        ``label`` (its most frequent current label)."""
        with self._db.read():
            rows = self._db.query(
                "SELECT cluster, label, source, COUNT(*) FROM labels_current "
                "WHERE cluster IS NOT NULL GROUP BY cluster, label, source"
            )
            names = self.cluster_names()
        if not rows:
            return pd.DataFrame(columns=["cluster", "name", "n_lesions", "n_corrected", "label"])
        df = pd.DataFrame(rows, columns=["cluster", "label", "source", "n"])
        out = []
        for c, g in df.groupby("cluster", sort=True):
            by_label = g.groupby("label", dropna=True)["n"].sum().sort_values(ascending=False)
            out.append(
                {
                    "cluster": int(c),
                    "name": names.get(int(c)),
                    "n_lesions": int(g["n"].sum()),
                    "n_corrected": int(g.loc[g["source"] == "corrected", "n"].sum()),
                    "label": by_label.index[0] if len(by_label) else None,
                }
            )
        return pd.DataFrame(out)


    def cluster_names(self) -> dict[int, str]:
        """Display names given with :meth:`rename_cluster`."""
        return {int(c): n for c, n in self._db.query("SELECT cluster, name FROM cluster_names")}


    def relabel_cluster(
        self, cluster: int, label: str, user: str, tool: str = "api", comment: str | None = None
    ) -> int:
        """Set the label of every lesion currently in ``cluster``; returns the event id."""
        cluster = check_cluster(cluster)
        return self._lesion_op(
            "relabel_cluster", user, tool, comment, lambda: self._members_or_error(cluster),
            label=label, params={"cluster": cluster, "label": label}, event_cluster=cluster,
        ).event_id


    def merge_clusters(
        self,
        clusters: Sequence[int],
        user: str,
        *,
        into: int | None = None,
        label: str | None = None,
        tool: str = "api",
        comment: str | None = None,
    ) -> int:
        """Move every lesion of ``clusters`` into one of them (``into``, default the smallest id).

        With ``label``, every lesion of the merged cluster is relabelled too. Returns the event id.
        """
        try:
            cl = sorted({check_cluster(c) for c in clusters})
        except TypeError:
            raise LabelStoreError("clusters must be a list of cluster ids") from None
        if len(cl) < 2:
            raise LabelStoreError(f"merging needs at least two different clusters (got {cl})")
        target = cl[0] if into is None else check_cluster(into, "into")
        if target not in cl:
            raise LabelStoreError(f"into={target} is not one of the merged clusters {cl}")

        def select() -> list[str]:
            members = {c: self._cluster_members(c) for c in cl}
            empty = [c for c, m in members.items() if not m]
            if empty:
                raise EmptySelectionError(
                    f"cluster(s) {empty} have no lesions (clusters: {self._cluster_list()}); "
                    "nothing was written"
                )
            return [i for c in cl for i in members[c] if label is not None or c != target]

        return self._lesion_op(
            "merge_clusters", user, tool, comment, select,
            label=KEEP if label is None else label, cluster=lambda: target,
            params={"clusters": cl, "into": target, "label": label},
        ).event_id


    def split_cluster(
        self,
        cluster: int,
        lesion_ids: Sequence[str],
        user: str,
        *,
        label: str | None = None,
        tool: str = "api",
        comment: str | None = None,
    ) -> int:
        """Move some lesions of ``cluster`` into a new cluster; returns the new cluster id.

        The new id is one more than any cluster id the store has seen. Every lesion must be in
        ``cluster`` now. With ``label`` they are relabelled too. The event id is
        :attr:`last_event_id`.
        """
        cluster = check_cluster(cluster)
        ids = check_ids(lesion_ids)

        def check(sel: list[str]) -> None:
            members = set(self._cluster_members(cluster))
            if not members:
                raise EmptySelectionError(
                    f"cluster {cluster} has no lesions (clusters: {self._cluster_list()}); "
                    "nothing was written"
                )
            outside = [i for i in sel if i not in members]
            if outside:
                raise LabelStoreError(
                    f"{len(outside)} selected lesion(s) are not in cluster {cluster}: "
                    f"{list_ids(outside)}; nothing was written"
                )

        def new_id() -> int:
            m = self._db.scalar(
                "SELECT MAX(m) FROM (SELECT MAX(cluster) AS m FROM labels_current "
                "UNION ALL SELECT MAX(cluster) FROM pseudo_labels "
                "UNION ALL SELECT MAX(cluster_after) FROM changes "
                "UNION ALL SELECT MAX(cluster_before) FROM changes) AS t"
            )
            return 0 if m is None else int(m) + 1

        applied = self._lesion_op(
            "split_cluster", user, tool, comment, lambda: ids,
            label=KEEP if label is None else label, cluster=new_id,
            params={"cluster": cluster, "new_cluster": None, "label": label},
            cluster_param="new_cluster", check=check,
        )
        return int(applied.cluster)


    def rename_cluster(self, cluster: int, name: str, user: str, tool: str = "api") -> int:
        """Give a cluster a display name (undoable); returns the event id."""
        cluster = check_cluster(cluster)
        name = check_text(name, "cluster name", max_len=64)
        user = check_user(user)
        tool = check_text(tool, "tool")
        with self._tx() as events:
            self._require_dataset()
            self._members_or_error(cluster)
            old = self._db.query(
                "SELECT name, last_batch FROM cluster_names WHERE cluster = ?", (cluster,)
            )
            before, last_before = (old[0][0], old[0][1]) if old else (None, None)
            bid = self._insert_batch("rename_cluster", user, tool, None, 0)
            params = {
                "kind": "cluster_name", "cluster": cluster, "before": before, "after": name,
                "last_before": last_before, "last_after": bid,
            }
            self._db.execute(
                "UPDATE batches SET params = ? WHERE id = ?", (schema.dumps(params), bid)
            )
            self._set_cluster_name(cluster, name, bid)
            events.append(ChangeEvent(bid, "rename_cluster", user, (), None, cluster))
        return bid


    def _cluster_members(self, cluster: int) -> list[str]:
        return [
            r[0]
            for r in self._db.query(
                "SELECT lesion_id FROM labels_current WHERE cluster = ? ORDER BY lesion_id",
                (cluster,),
            )
        ]


    def _members_or_error(self, cluster: int) -> list[str]:
        ids = self._cluster_members(cluster)
        if not ids:
            raise EmptySelectionError(
                f"cluster {cluster} has no lesions (clusters: {self._cluster_list()}); "
                "nothing was written"
            )
        return ids


    def _cluster_list(self) -> str:
        cl = [r[0] for r in self._db.query(
            "SELECT DISTINCT cluster FROM labels_current WHERE cluster IS NOT NULL ORDER BY cluster"
        )]
        return list_ids(cl, 20) if cl else "none"


    def _set_cluster_name(self, cluster: int, name: str | None, last: int | None) -> None:
        if name is None:
            self._db.execute("DELETE FROM cluster_names WHERE cluster = ?", (cluster,))
        else:
            self._db.execute(
                "INSERT INTO cluster_names (cluster, name, last_batch) VALUES (?, ?, ?) "
                "ON CONFLICT (cluster) DO UPDATE SET name = excluded.name, "
                "last_batch = excluded.last_batch",
                (cluster, name, last),
            )

