"""Undo and redo per user, never overwriting another annotator's later work.

See the semantics in :mod:`deeplesion_lab.labels.store`.
"""

from __future__ import annotations

import pandas as pd

from . import schema
from .base import StoreBase
from .checks import check_text, check_user, list_ids
from .errors import NothingToUndo, UndoConflict
from .events import UNDOABLE_OPS, ChangeEvent, UndoResult, empty_conflicts


class UndoMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (undo and redo)."""

    def _last_init(self) -> int:
        return int(self._db.scalar("SELECT COALESCE(MAX(id), 0) FROM batches WHERE op = 'init'"))

    def undo(self, user: str, *, tool: str = "api", skip_conflicts: bool = False) -> UndoResult:
        """Undo ``user``'s latest batch that is still in effect.

        Parameters
        ----------
        user : str
        skip_conflicts : bool, default False
            When other annotators changed some of its lesions later: False raises
            :class:`UndoConflict` (nothing written); True undoes the other lesions only and lists
            the skipped ones in :attr:`UndoResult.conflicts`.

        Raises
        ------
        NothingToUndo, UndoConflict
        """
        user = check_user(user)
        tool = check_text(tool, "tool")
        ops = ", ".join(f"'{o}'" for o in UNDOABLE_OPS)
        with self._tx() as events:
            last_init = self._last_init()
            row = self._db.query(
                "SELECT id, op, user_name, n_changes, created_at, params FROM batches "
                f"WHERE user_name = ? AND op IN ({ops}) AND undone_by IS NULL AND id > ? "
                "ORDER BY id DESC LIMIT 1",
                (user, last_init),
            )
            if not row:
                older = self._db.scalar(
                    f"SELECT COUNT(*) FROM batches WHERE user_name = ? AND op IN ({ops}) "
                    "AND undone_by IS NULL AND id < ?",
                    (user, last_init),
                )
                why = (
                    f"; its {older} earlier change(s) predate the re-initialisation with new "
                    f"pseudo-labels (event {last_init}) and cannot be undone"
                    if older
                    else ""
                )
                raise NothingToUndo(f"{user} has nothing to undo{why}")
            result = self._revert(row[0], "undo", user, tool, skip_conflicts)
            self._db.execute(
                "UPDATE batches SET undone_by = ? WHERE id = ?", (result.event_id, row[0][0])
            )
            events.append(ChangeEvent(result.event_id, "undo", user, tuple(result.lesion_ids)))
        return result

    def redo(self, user: str, *, tool: str = "api", skip_conflicts: bool = False) -> UndoResult:
        """Redo ``user``'s latest undo (not possible once the user made a new change since).

        Raises
        ------
        NothingToUndo, UndoConflict
        """
        user = check_user(user)
        tool = check_text(tool, "tool")
        ops = ", ".join(f"'{o}'" for o in UNDOABLE_OPS)
        with self._tx() as events:
            last_do = self._db.scalar(
                f"SELECT COALESCE(MAX(id), 0) FROM batches WHERE user_name = ? AND op IN ({ops})",
                (user,),
            )
            floor = max(self._last_init(), int(last_do))
            row = self._db.query(
                "SELECT id, op, user_name, n_changes, created_at, params, target_batch "
                "FROM batches WHERE user_name = ? AND op = 'undo' AND redone_by IS NULL "
                "AND id > ? ORDER BY id DESC LIMIT 1",
                (user, floor),
            )
            if not row:
                raise NothingToUndo(f"{user} has nothing to redo")
            result = self._revert(row[0][:6], "redo", user, tool, skip_conflicts)
            self._db.execute(
                "UPDATE batches SET redone_by = ? WHERE id = ?", (result.event_id, row[0][0])
            )
            self._db.execute(
                "UPDATE batches SET undone_by = NULL WHERE id = ?", (row[0][6],)
            )
            events.append(ChangeEvent(result.event_id, "redo", user, tuple(result.lesion_ids)))
        return result

    def _revert(
        self, src: tuple, op: str, user: str, tool: str, skip_conflicts: bool
    ) -> UndoResult:
        """Write a batch ``op`` that puts back the before-state of batch ``src``."""
        db = self._db
        src_id, src_op, src_user, _n, src_time, src_params = src
        params = schema.loads(src_params)
        what = (
            f"event {src_id} ({src_op} by {src_user} at {src_time[:19]})"
            if op == "undo"
            else f"undo event {src_id} (at {src_time[:19]})"
        )
        if params.get("kind") == "tags":  # tag batches (labels/tags.py)
            return self._revert_tags(src, op, user, tool, skip_conflicts)
        if params.get("kind") == "cluster_name":
            cur = db.query(
                "SELECT name, last_batch FROM cluster_names WHERE cluster = ?",
                (params["cluster"],),
            )
            now_last = cur[0][1] if cur else None
            if now_last != params["last_after"]:
                by = db.query("SELECT user_name FROM batches WHERE id = ?", (now_last,))
                conflicts = pd.DataFrame(
                    {"cluster": [params["cluster"]], "name": [cur[0][0] if cur else None],
                     "changed_by": [by[0][0] if by else None], "changed_in": [now_last]}
                )
                raise UndoConflict(
                    f"cannot {op} {what}: cluster {params['cluster']} was renamed later "
                    f"(event {now_last}); nothing was written",
                    src_id,
                    conflicts,
                )
            new_params = {
                "kind": "cluster_name", "cluster": params["cluster"],
                "before": params["after"], "after": params["before"],
                "last_before": params["last_after"], "last_after": params["last_before"],
            }
            bid = self._insert_batch(op, user, tool, None, 0, new_params, target=src_id)
            self._set_cluster_name(params["cluster"], params["before"], params["last_before"])
            return UndoResult(bid, src_id, src_op, [], empty_conflicts())

        d, s = db.differs, db.same
        restore = op == "redo" and self._undid_op(src_id) == "add_lesions"
        if restore:
            # the undo took the added lesions out of the dataset: put them back in the state the
            # undo left them (no label, no source), so that the redo below sets them again
            db.execute(
                "INSERT INTO labels_current (lesion_id, label, cluster, confidence, source, "
                "last_batch) SELECT ch.lesion_id, NULL, NULL, NULL, NULL, NULL FROM changes ch "
                "WHERE ch.batch_id = ? AND ch.lesion_id NOT IN "
                "(SELECT lesion_id FROM labels_current)",
                (src_id,),
            )
        rows = db.query(
            "SELECT ch.lesion_id, c.label, c.last_batch, b.user_name FROM changes ch "
            "JOIN labels_current c ON c.lesion_id = ch.lesion_id "
            "LEFT JOIN batches b ON b.id = c.last_batch "
            f"WHERE ch.batch_id = ? AND c.last_batch {d} ch.last_after ORDER BY ch.lesion_id",
            (src_id,),
        )
        conflicts = pd.DataFrame(rows, columns=["lesion_id", "label", "changed_in", "changed_by"])
        n_src = int(db.scalar("SELECT COUNT(*) FROM changes WHERE batch_id = ?", (src_id,)))
        if len(conflicts) and (not skip_conflicts or len(conflicts) == n_src):
            groups = "; ".join(
                f"{u} in event {e}: {list_ids(g['lesion_id'], 3)}"
                for (u, e), g in conflicts.fillna({"changed_by": "?"}).groupby(
                    ["changed_by", "changed_in"], sort=True
                )
            )
            rest = n_src - len(conflicts)
            hint = (
                f" Use skip_conflicts=True (CLI: --skip-conflicts) to {op} the other {rest} "
                "lesion(s) only."
                if rest
                else ""
            )
            raise UndoConflict(
                f"cannot {op} {what}: {len(conflicts)} of its {n_src} lesion(s) were changed "
                f"later by others ({groups}); nothing was written.{hint}",
                src_id,
                conflicts,
            )
        n = n_src - len(conflicts)
        bid = self._insert_batch(
            op, user, tool, None, n, {"skipped": len(conflicts)} if len(conflicts) else None,
            target=src_id,
        )
        db.execute(
            "INSERT INTO changes (batch_id, lesion_id, label_before, label_after, cluster_before, "
            "cluster_after, confidence_before, confidence_after, source_before, source_after, "
            "last_before, last_after) "
            "SELECT ?, ch.lesion_id, c.label, ch.label_before, c.cluster, ch.cluster_before, "
            "c.confidence, ch.confidence_before, c.source, ch.source_before, c.last_batch, "
            "ch.last_before FROM changes ch JOIN labels_current c ON c.lesion_id = ch.lesion_id "
            f"WHERE ch.batch_id = ? AND c.last_batch {s} ch.last_after",
            (bid, src_id),
        )
        self._apply_batch(bid)
        if op == "undo" and src_op == "add_lesions":
            # before the add they were not lesions of the dataset: take them out again
            db.execute(
                "DELETE FROM labels_current WHERE source IS NULL AND lesion_id IN "
                "(SELECT lesion_id FROM changes WHERE batch_id = ?) AND lesion_id IN "
                "(SELECT lesion_id FROM added_lesions)",
                (bid,),
            )
        ids = [r[0] for r in db.query(
            "SELECT lesion_id FROM changes WHERE batch_id = ? ORDER BY lesion_id", (bid,)
        )]
        return UndoResult(bid, src_id, src_op, ids, conflicts)

    def _undid_op(self, undo_id: int) -> str | None:
        """The op of the batch that undo batch ``undo_id`` undid."""
        row = self._db.query(
            "SELECT t.op FROM batches u JOIN batches t ON t.id = u.target_batch WHERE u.id = ?",
            (undo_id,),
        )
        return row[0][0] if row else None

    def _apply_batch(self, bid: int) -> None:
        self._db.execute(
            "UPDATE labels_current SET label = ch.label_after, cluster = ch.cluster_after, "
            "confidence = ch.confidence_after, source = ch.source_after, "
            "last_batch = ch.last_after FROM changes ch "
            "WHERE ch.batch_id = ? AND ch.lesion_id = labels_current.lesion_id",
            (bid,),
        )
