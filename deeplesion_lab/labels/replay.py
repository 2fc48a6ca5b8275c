"""Recompute the current labels from the pseudo-label runs and the event log alone."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .base import StoreBase


class ReplayMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (replay)."""

    def replay(self) -> pd.DataFrame:
        """Recompute the current labels from the pseudo-label runs and the event log alone.

        Returns ``lesion_id, label, cluster, confidence, source, event_id`` like
        :meth:`current_labels`; :meth:`verify` checks the two agree.
        """
        db = self._db
        with db.read():
            state: dict[str, list] = {
                r[0]: [None, None, None, None, None]
                for r in db.query("SELECT lesion_id FROM labels_current")
            }
            batches = db.query("SELECT id, op FROM batches ORDER BY id")
            runs = dict(db.query("SELECT batch_id, seq FROM runs"))
            changes = db.query(
                "SELECT batch_id, lesion_id, label_after, cluster_after, confidence_after, "
                "source_after, last_after FROM changes ORDER BY batch_id"
            )
            pseudo = {
                seq: db.query(
                    "SELECT lesion_id, cluster, label, confidence FROM pseudo_labels "
                    "WHERE run_seq = ?",
                    (seq,),
                )
                for seq in runs.values()
            }
        k = 0
        for bid, op in batches:
            if op == "init" and bid in runs:
                new = {r[0]: r for r in pseudo[runs[bid]]}
                for lid, st in state.items():
                    if st[3] == "added":  # a lesion people added: re-mining leaves it alone
                        continue
                    p = new.get(lid)
                    if p is not None:
                        st[1] = p[1]
                        if st[3] in (None, "pseudo"):
                            st[0], st[2], st[3] = p[2], p[3], "pseudo"
                    elif st[3] == "corrected":
                        st[1] = None
                    else:
                        st[:4] = [None, None, None, None]
            while k < len(changes) and changes[k][0] == bid:
                _, lid, *after = changes[k]
                # a lesion added and taken out again by an undo is not in labels_current
                state.setdefault(lid, [None, None, None, None, None])[:] = after
                k += 1
        rows = [(lid, *st) for lid, st in state.items() if st[3] is not None]
        df = pd.DataFrame(
            rows, columns=["lesion_id", "label", "cluster", "confidence", "source", "event_id"]
        )
        df["cluster"] = pd.array(df["cluster"].tolist(), dtype="Int64")
        df["event_id"] = pd.array(df["event_id"].tolist(), dtype="Int64")
        df["confidence"] = df["confidence"].astype(float)
        return df.sort_values("lesion_id", ignore_index=True)

    def verify(self) -> dict[str, Any]:
        """Check the database (SQLite ``integrity_check``) and that replaying the log gives the
        current labels. Returns ``{"integrity": ..., "replay_matches": bool, "n_mismatched":
        int, "mismatched": [ids...]}``."""
        cols = ["lesion_id", "label", "cluster", "confidence", "source", "event_id"]
        with self._db.read():
            cur = self.current_labels()[cols]
            rep = self.replay()
        m = cur.merge(rep, on="lesion_id", how="outer", suffixes=("", "_replay"), indicator=True)
        bad = m["_merge"] != "both"
        for c in cols[1:]:
            a, b = m[c], m[f"{c}_replay"]
            bad |= ~((a == b).fillna(False).astype(bool) | (a.isna() & b.isna()))
        mism = m.loc[bad, "lesion_id"].tolist()
        return {
            "integrity": self._db.integrity_check(),
            "replay_matches": not mism,
            "n_mismatched": len(mism),
            "mismatched": mism[:20],
        }
