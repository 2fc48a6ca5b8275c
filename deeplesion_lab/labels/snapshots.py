"""Named, immutable snapshots of the current labels (what a fine-tuning run records)."""

from __future__ import annotations

import pandas as pd

from . import schema
from .base import StoreBase
from .checks import check_comment, check_text, check_user
from .errors import EmptySelectionError, LabelStoreError, StoreFormatError


class SnapshotMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (snapshots)."""

    def snapshot(self, name: str, user: str, comment: str | None = None) -> int:
        """Freeze the current labels under ``name``; returns the snapshot id.

        The snapshot stores every labelled lesion's label, cluster and source, the event id it
        was taken at, the run id and a content hash (:func:`schema.labels_hash`); database
        triggers refuse any later update or deletion. Names are unique.
        """
        name = check_text(name, "snapshot name")
        user = check_user(user)
        check_comment(comment)
        db = self._db
        with self._tx():
            self._require_dataset()
            old = db.scalar("SELECT id FROM snapshots WHERE name = ?", (name,))
            if old is not None:
                raise LabelStoreError(
                    f"snapshot {name!r} already exists (id {old}); snapshots are immutable, "
                    "pick a new name"
                )
            rows = db.query(
                "SELECT lesion_id, label FROM labels_current WHERE source IS NOT NULL"
            )
            if not rows:
                raise EmptySelectionError("no labels to snapshot yet (load pseudo-labels first)")
            sid = db.insert_returning_id(
                "INSERT INTO snapshots (name, created_by, created_at, event_id, run_id, "
                "n_lesions, labels_hash) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (name, user, schema.now(), self.version(), self.run_id, len(rows)),
            )
            db.execute(
                "INSERT INTO snapshot_labels (snapshot_id, lesion_id, label, cluster, source) "
                "SELECT ?, lesion_id, label, cluster, source FROM labels_current "
                "WHERE source IS NOT NULL",
                (sid,),
            )
            db.execute(
                "UPDATE snapshots SET labels_hash = ? WHERE id = ?", (schema.labels_hash(rows), sid)
            )
        return sid

    def _snapshot_row(self, snapshot: int | str) -> tuple:
        col = "name" if isinstance(snapshot, str) and not snapshot.isdigit() else "id"
        key = snapshot if col == "name" else int(snapshot)
        row = self._db.query(
            "SELECT id, name, created_by, created_at, event_id, run_id, n_lesions, labels_hash "
            f"FROM snapshots WHERE {col} = ?",
            (key,),
        )
        if not row:
            names = [f"{i} {n}" for i, n in self._db.query("SELECT id, name FROM snapshots")]
            raise LabelStoreError(
                f"no snapshot {snapshot!r} (snapshots: {', '.join(names) or 'none'})"
            )
        return row[0]

    def snapshot_labels(self, snapshot: int | str) -> pd.DataFrame:
        """The labels frozen in a snapshot (id or name): ``lesion_id``, ``label``, ``cluster``,
        ``source``; ``df.attrs`` holds the snapshot's record. The content hash is verified."""
        with self._db.read():
            sid, name, by, at, ev, run, n, h = self._snapshot_row(snapshot)
            rows = self._db.query(
                "SELECT lesion_id, label, cluster, source FROM snapshot_labels "
                "WHERE snapshot_id = ?",
                (sid,),
            )
        df = pd.DataFrame(rows, columns=["lesion_id", "label", "cluster", "source"])
        got = schema.labels_hash(zip(df["lesion_id"], df["label"], strict=True))
        if got != h or len(df) != n:
            raise StoreFormatError(
                f"{self.location}: snapshot {sid} ({name}) does not match its hash "
                f"({got} != {h}); the store was altered outside deeplesion-lab"
            )
        df["cluster"] = pd.array(df["cluster"].tolist(), dtype="Int64")
        df = df.sort_values("lesion_id", ignore_index=True)
        df.attrs.update({"snapshot_id": int(sid), "name": name, "created_by": by,
                         "created_at": at, "event_id": int(ev), "run_id": run,
                         "labels_hash": h})
        return df

    def list_snapshots(self) -> pd.DataFrame:
        """All snapshots: ``snapshot_id``, ``name``, ``created_by``, ``created_at``,
        ``event_id``, ``run_id``, ``n_lesions``, ``labels_hash``."""
        rows = self._db.query(
            "SELECT id, name, created_by, created_at, event_id, run_id, n_lesions, labels_hash "
            "FROM snapshots ORDER BY id"
        )
        return pd.DataFrame(rows, columns=["snapshot_id", "name", "created_by", "created_at",
                                           "event_id", "run_id", "n_lesions", "labels_hash"])
