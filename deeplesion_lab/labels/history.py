"""History views of the event log: per event, per lesion, per user, per cluster; counts per class."""

from __future__ import annotations

import pandas as pd

from . import schema
from .base import StoreBase
from .checks import check_cluster
from .errors import LabelStoreError, UnknownLesionError
from .events import CLUSTER_OPS, LABEL_OPS, describe_event


class HistoryMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (history)."""

    def events(
        self, *, user: str | None = None, op: str | None = None, limit: int | None = None
    ) -> pd.DataFrame:
        """The event log, one row per batch, newest first.

        Columns: ``event_id``, ``created_at``, ``user``, ``tool``, ``op``, ``n_changes``,
        ``comment``, ``target_event``, ``undone_by``, ``redone_by``, ``detail``.
        """
        where, params = [], []
        if user is not None:
            where.append("user_name = ?")
            params.append(user)
        if op is not None:
            where.append("op = ?")
            params.append(op)
        sql = (
            "SELECT id, created_at, user_name, tool, op, n_changes, comment, target_batch, "
            "undone_by, redone_by, params FROM batches"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._db.query(sql, params)
        cols = ["event_id", "created_at", "user", "tool", "op", "n_changes", "comment",
                "target_event", "undone_by", "redone_by", "params"]
        df = pd.DataFrame(rows, columns=cols)
        df["detail"] = [
            describe_event(o, schema.loads(p), n, t)
            for o, p, n, t in zip(df["op"], df["params"], df["n_changes"], df["target_event"],
                                  strict=True)
        ]
        for c in ("target_event", "undone_by", "redone_by"):
            df[c] = pd.array(df[c].tolist(), dtype="Int64")
        return df.drop(columns=["params"])

    def history(
        self,
        lesion_id: str | None = None,
        user: str | None = None,
        cluster: int | None = None,
        *,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Per-lesion history, newest first.

        Parameters
        ----------
        lesion_id : str, optional
            Only this lesion (its label changes and comments).
        user : str, optional
            Only this user's events.
        cluster : int, optional
            Changes moving lesions into or out of the cluster, changes of lesions in it, and its
            renames.
        limit : int, optional
            At most this many rows.

        Returns
        -------
        pandas.DataFrame
            ``event_id``, ``created_at``, ``user``, ``tool``, ``op``, ``lesion_id``,
            ``label_before``, ``label_after``, ``cluster_before``, ``cluster_after``,
            ``source_before``, ``source_after``, ``comment``, ``target_event``, ``undone``
            (the batch was undone later), ``detail`` (for events without lesion rows).
        """
        if lesion_id is not None and not isinstance(lesion_id, str):
            raise LabelStoreError(f"lesion_id must be a lesion id string (got {lesion_id!r})")
        if cluster is not None:
            cluster = check_cluster(cluster)
        db = self._db
        where, params = [], []
        if lesion_id is not None:
            where.append("ch.lesion_id = ?")
            params.append(lesion_id)
        if user is not None:
            where.append("b.user_name = ?")
            params.append(user)
        if cluster is not None:
            where.append("(ch.cluster_before = ? OR ch.cluster_after = ?)")
            params += [cluster, cluster]
        lim = f" LIMIT {int(limit)}" if limit is not None else ""
        with db.read():
            if lesion_id is not None:
                known = db.scalar(
                    "SELECT COUNT(*) FROM labels_current WHERE lesion_id = ?", (lesion_id,)
                )
                if not known:
                    raise UnknownLesionError(
                        f"lesion {lesion_id} is not in this store's dataset", [lesion_id]
                    )
            change_rows = db.query(
                "SELECT b.id, b.created_at, b.user_name, b.tool, b.op, ch.lesion_id, "
                "ch.label_before, ch.label_after, ch.cluster_before, ch.cluster_after, "
                "ch.source_before, ch.source_after, b.comment, b.target_batch, b.undone_by, "
                "b.params, b.n_changes FROM changes ch JOIN batches b ON b.id = ch.batch_id"
                + (" WHERE " + " AND ".join(where) if where else "")
                + " ORDER BY b.id DESC, ch.lesion_id" + lim,
                params,
            )
            cwhere, cparams = [], []
            if lesion_id is not None:
                cwhere.append("t.lesion_id = ?")
                cparams.append(lesion_id)
            if user is not None:
                cwhere.append("b.user_name = ?")
                cparams.append(user)
            if cluster is not None:
                cwhere.append("c.cluster = ?")
                cparams.append(cluster)
            comment_rows = db.query(
                "SELECT b.id, b.created_at, b.user_name, b.tool, b.op, t.lesion_id, NULL, "
                "NULL, NULL, NULL, NULL, NULL, b.comment, b.target_batch, "
                "b.undone_by, b.params, b.n_changes FROM comment_targets t "
                "JOIN batches b ON b.id = t.batch_id "
                "JOIN labels_current c ON c.lesion_id = t.lesion_id"
                + (" WHERE " + " AND ".join(cwhere) if cwhere else "")
                + " ORDER BY b.id DESC, t.lesion_id" + lim,
                cparams,
            )
            other_rows = []
            if lesion_id is None:
                ewhere, eparams = ["b.n_changes = 0", "b.op <> 'comment'"], []
                if user is not None:
                    ewhere.append("b.user_name = ?")
                    eparams.append(user)
                other_rows = db.query(
                    "SELECT b.id, b.created_at, b.user_name, b.tool, b.op, NULL, NULL, NULL, "
                    "NULL, NULL, NULL, NULL, b.comment, b.target_batch, b.undone_by, b.params, "
                    "b.n_changes FROM batches b WHERE " + " AND ".join(ewhere)
                    + " ORDER BY b.id DESC" + lim,
                    eparams,
                )
                if cluster is not None:
                    other_rows = [
                        r for r in other_rows if schema.loads(r[15]).get("cluster") == cluster
                    ]
        cols = ["event_id", "created_at", "user", "tool", "op", "lesion_id", "label_before",
                "label_after", "cluster_before", "cluster_after", "source_before",
                "source_after", "comment", "target_event", "undone_by", "params", "n_changes"]
        df = pd.DataFrame(change_rows + comment_rows + other_rows, columns=cols)
        df = df.sort_values(["event_id", "lesion_id"], ascending=[False, True],
                            na_position="first", ignore_index=True)
        if limit is not None:
            df = df.head(int(limit))
        df["detail"] = [
            "" if lid is not None and o != "comment" else describe_event(o, schema.loads(p), n, t)
            for o, p, n, t, lid in zip(df["op"], df["params"], df["n_changes"],
                                       df["target_event"], df["lesion_id"], strict=True)
        ]
        df["undone"] = df["undone_by"].notna()
        for c in ("cluster_before", "cluster_after", "target_event"):
            df[c] = pd.array(df[c].tolist(), dtype="Int64")
        return df.drop(columns=["params", "n_changes", "undone_by"])

    def correction_counts(self) -> pd.DataFrame:
        """Corrections per class, one row per class of the taxonomy.

        Columns: ``label``, ``class_id``, ``n_current`` (lesions labelled with it now),
        ``n_pseudo`` (of which still pseudo-labels), ``n_corrected`` (of which set by people),
        ``n_corrected_away`` (lesions whose pseudo-label was this class and that people
        labelled otherwise), ``n_confirmed`` (corrected to the same class as their pseudo-label),
        ``n_changes`` (label-setting change rows in the log into this class, undone ones
        included).
        """
        with self._db.read():
            cur = self._db.query(
                "SELECT c.label, c.source, p.label FROM labels_current c "
                "LEFT JOIN pseudo_labels p ON p.lesion_id = c.lesion_id "
                "AND p.run_seq = (SELECT MAX(seq) FROM runs) WHERE c.source IS NOT NULL"
            )
            ops = ", ".join(f"'{o}'" for o in (*LABEL_OPS, *CLUSTER_OPS))
            d = self._db.differs
            changes = dict(self._db.query(
                "SELECT ch.label_after, COUNT(*) FROM changes ch JOIN batches b "
                f"ON b.id = ch.batch_id WHERE b.op IN ({ops}) AND (ch.label_after {d} "
                f"ch.label_before OR ch.source_after {d} ch.source_before) "
                "GROUP BY ch.label_after"
            ))
            classes = self.classes()
        df = pd.DataFrame(cur, columns=["label", "source", "pseudo"])
        out = []
        for name, cid in zip(classes["name"], classes["class_id"], strict=True):
            now = df["label"] == name
            corr = df["source"] == "corrected"
            out.append(
                {
                    "label": name,
                    "class_id": int(cid),
                    "n_current": int(now.sum()),
                    "n_pseudo": int((now & ~corr).sum()),
                    "n_corrected": int((now & corr).sum()),
                    "n_corrected_away": int(((df["pseudo"] == name) & corr & ~now).sum()),
                    "n_confirmed": int((now & corr & (df["pseudo"] == name)).sum()),
                    "n_changes": int(changes.get(name, 0)),
                }
            )
        return pd.DataFrame(out)
