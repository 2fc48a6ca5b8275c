"""Tags on lesions and saved views of the lesion grid, kept by the label store.

Tags are shared work, like labels: :meth:`TagsMixin.tag` and :meth:`TagsMixin.untag` are events
of the log (ops ``tag`` / ``untag``: who, when, which tool), one batch per call, and each user
can undo and redo them with :meth:`~deeplesion_lab.labels.undo.UndoMixin.undo` like any label
change (a tag another annotator changed later is a conflict). ``tag_changes`` keeps every
change (append-only); ``tags_current`` the tags in force.

Saved views are a user's named grid views (filters, sort, selection, as JSON): every user reads
everyone's, only the owner saves over or deletes one, and a deleted view is only marked so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from . import schema
from .base import StoreBase
from .checks import check_comment, check_ids, check_text, check_user, list_ids
from .errors import EmptySelectionError, LabelStoreError, UndoConflict
from .events import ChangeEvent, UndoResult, empty_conflicts

__all__ = ["TagsMixin", "TAG_OPS", "TAG_COLUMNS", "VIEW_COLUMNS", "check_tags"]

#: Operations that set or remove tags (undoable).
TAG_OPS = ("tag", "untag")
#: Columns of :meth:`TagsMixin.lesion_tags`.
TAG_COLUMNS = ["lesion_id", "tag", "tagged_by", "tagged_at", "event_id"]
#: Columns of :meth:`TagsMixin.saved_views`.
VIEW_COLUMNS = ["view_id", "owner", "name", "created_at", "updated_at", "n_selected", "spec"]

MAX_TAG = 64


def check_tags(tags: Any) -> list[str]:
    """A de-duplicated list of tag names (a single string is one tag); clear errors."""
    if isinstance(tags, str):
        tags = [tags]
    try:
        seq = list(tags)
    except TypeError:
        raise LabelStoreError(f"tags must be a list of names (got {type(tags).__name__})") from None
    out = [check_text(t, "tag", max_len=MAX_TAG) for t in seq]
    if not out:
        raise EmptySelectionError("no tag given; nothing was written")
    return list(dict.fromkeys(out))


class TagsMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (tags, saved views)."""

    # tags --------------------------------------------------------------------------------------
    def tag(self, lesion_ids: Sequence[str], tags: str | Sequence[str], user: str, *,
            tool: str = "api", comment: str | None = None) -> int | None:
        """Tag lesions (one event, op ``tag``); returns the event id, or None when every lesion
        already had every tag (nothing written).

        Raises
        ------
        LabelStoreError
            Empty selection, unknown lesion ids, empty or too long tag names, bad user.
        """
        return self._tag_op("tag", lesion_ids, tags, user, tool, comment)

    def untag(self, lesion_ids: Sequence[str], tags: str | Sequence[str], user: str, *,
              tool: str = "api", comment: str | None = None) -> int | None:
        """Remove tags from lesions (one event, op ``untag``); None when none had them."""
        return self._tag_op("untag", lesion_ids, tags, user, tool, comment)

    def _tag_op(self, op: str, lesion_ids, tags, user, tool, comment) -> int | None:
        user = check_user(user)
        tool = check_text(tool, "tool")
        comment = check_comment(comment)
        ids = check_ids(lesion_ids)
        names = check_tags(tags)
        want = 1 if op == "tag" else 0
        db = self._db
        with self._tx() as events:
            self._require_dataset()
            db.fill_selection(ids)
            self._check_known(len(ids))
            marks = ", ".join("?" for _ in names)
            cur = {(r[0], r[1]): (int(r[2]), r[3]) for r in db.query(
                "SELECT t.lesion_id, t.tag, t.present, t.last_batch FROM tags_current t "
                f"JOIN sel_ids s ON s.lesion_id = t.lesion_id WHERE t.tag IN ({marks})",
                names,
            )}
            todo = [(lid, t, *cur.get((lid, t), (0, None))) for lid in ids for t in names]
            todo = [r for r in todo if r[2] != want]
            if not todo:
                return None
            bid = self._insert_batch(op, user, tool, comment, len(todo),
                                     {"kind": "tags", "tags": names})
            db.executemany(
                "INSERT INTO tag_changes (batch_id, lesion_id, tag, present_before, "
                "present_after, last_before, last_after) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(bid, lid, t, before, want, last, bid) for lid, t, before, last in todo],
            )
            self._apply_tags(bid)
            events.append(ChangeEvent(bid, op, user, tuple(sorted({r[0] for r in todo}))))
        return bid

    def _apply_tags(self, bid: int) -> None:
        """Bring ``tags_current`` in step with the tag changes of batch ``bid``."""
        self._db.execute(
            "INSERT INTO tags_current (lesion_id, tag, present, last_batch) "
            "SELECT lesion_id, tag, present_after, last_after FROM tag_changes "
            "WHERE batch_id = ? ON CONFLICT (lesion_id, tag) DO UPDATE SET "
            "present = excluded.present, last_batch = excluded.last_batch",
            (bid,),
        )

    def _revert_tags(self, src: tuple, op: str, user: str, tool: str,
                     skip_conflicts: bool) -> UndoResult:
        """Undo (or redo) a tag batch: put back each tag's state before it (see ``_revert``)."""
        db = self._db
        src_id, src_op, src_user, _n, src_time, src_params = src
        what = (f"event {src_id} ({src_op} by {src_user} at {src_time[:19]})" if op == "undo"
                else f"undo event {src_id} (at {src_time[:19]})")
        d, s = db.differs, db.same
        rows = db.query(
            "SELECT ch.lesion_id, ch.tag, c.last_batch, b.user_name FROM tag_changes ch "
            "JOIN tags_current c ON c.lesion_id = ch.lesion_id AND c.tag = ch.tag "
            "LEFT JOIN batches b ON b.id = c.last_batch "
            f"WHERE ch.batch_id = ? AND c.last_batch {d} ch.last_after "
            "ORDER BY ch.lesion_id, ch.tag",
            (src_id,),
        )
        conflicts = pd.DataFrame(
            [(r[0], f"tag {r[1]}", r[2], r[3]) for r in rows],
            columns=["lesion_id", "label", "changed_in", "changed_by"],
        ) if rows else empty_conflicts()
        n_src = int(db.scalar("SELECT COUNT(*) FROM tag_changes WHERE batch_id = ?", (src_id,)))
        if len(conflicts) and (not skip_conflicts or len(conflicts) == n_src):
            rest = n_src - len(conflicts)
            hint = (f" Use skip_conflicts=True to {op} the other {rest} tag change(s) only."
                    if rest else "")
            raise UndoConflict(
                f"cannot {op} {what}: {len(conflicts)} of its {n_src} tag change(s) were changed "
                f"later by others ({list_ids(conflicts['lesion_id'].tolist(), 3)}); nothing "
                f"was written.{hint}",
                src_id,
                conflicts,
            )
        params = dict(schema.loads(src_params))
        if len(conflicts):
            params["skipped"] = len(conflicts)
        else:
            params.pop("skipped", None)
        bid = self._insert_batch(op, user, tool, None, n_src - len(conflicts), params,
                                 target=src_id)
        db.execute(
            "INSERT INTO tag_changes (batch_id, lesion_id, tag, present_before, present_after, "
            "last_before, last_after) "
            "SELECT ?, ch.lesion_id, ch.tag, c.present, ch.present_before, c.last_batch, "
            "ch.last_before FROM tag_changes ch JOIN tags_current c "
            "ON c.lesion_id = ch.lesion_id AND c.tag = ch.tag "
            f"WHERE ch.batch_id = ? AND c.last_batch {s} ch.last_after",
            (bid, src_id),
        )
        self._apply_tags(bid)
        ids = sorted({r[0] for r in db.query(
            "SELECT lesion_id FROM tag_changes WHERE batch_id = ?", (bid,))})
        return UndoResult(bid, src_id, src_op, ids, conflicts)

    def lesion_tags(self, lesion_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """The tags in force: ``lesion_id``, ``tag``, ``tagged_by``, ``tagged_at``,
        ``event_id`` (the event that set it last), sorted by lesion and tag."""
        sql = ("SELECT t.lesion_id, t.tag, b.user_name, b.created_at, t.last_batch "
               "FROM tags_current t LEFT JOIN batches b ON b.id = t.last_batch "
               "WHERE t.present = 1")
        rows: list[tuple] = []
        with self._db.read():
            if lesion_ids is None:
                rows = self._db.query(sql)
            else:
                ids = check_ids(lesion_ids)
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    rows += self._db.query(
                        sql + " AND t.lesion_id IN (" + ", ".join("?" for _ in chunk) + ")",
                        chunk)
        rows.sort(key=lambda r: (r[0], r[1]))
        df = pd.DataFrame(rows, columns=TAG_COLUMNS)
        df["event_id"] = pd.array(df["event_id"].tolist(), dtype="Int64")
        return df

    def tag_counts(self) -> pd.DataFrame:
        """``tag``, ``n_lesions`` of every tag in force, most used first."""
        rows = self._db.query(
            "SELECT tag, COUNT(*) FROM tags_current WHERE present = 1 GROUP BY tag "
            "ORDER BY COUNT(*) DESC, tag"
        )
        return pd.DataFrame(rows, columns=["tag", "n_lesions"])

    def tag_history(self, lesion_id: str | None = None, tag: str | None = None, *,
                    limit: int | None = None) -> pd.DataFrame:
        """Every tag change, newest first: ``event_id``, ``created_at``, ``user``, ``tool``,
        ``op`` (tag, untag, undo, redo), ``lesion_id``, ``tag``, ``present_before``,
        ``present_after``, ``undone`` (the batch was undone later)."""
        where, params = [], []
        if lesion_id is not None:
            where.append("ch.lesion_id = ?")
            params.append(check_text(lesion_id, "lesion_id", max_len=256))
        if tag is not None:
            where.append("ch.tag = ?")
            params.append(check_text(tag, "tag", max_len=MAX_TAG))
        rows = self._db.query(
            "SELECT b.id, b.created_at, b.user_name, b.tool, b.op, ch.lesion_id, ch.tag, "
            "ch.present_before, ch.present_after, b.undone_by FROM tag_changes ch "
            "JOIN batches b ON b.id = ch.batch_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY b.id DESC, ch.lesion_id, ch.tag"
            + (f" LIMIT {int(limit)}" if limit is not None else ""),
            params,
        )
        df = pd.DataFrame(rows, columns=["event_id", "created_at", "user", "tool", "op",
                                         "lesion_id", "tag", "present_before", "present_after",
                                         "undone_by"])
        df["present_before"] = df["present_before"].astype(bool)
        df["present_after"] = df["present_after"].astype(bool)
        df["undone"] = df["undone_by"].notna()
        return df.drop(columns=["undone_by"])

    def verify_tags(self) -> dict[str, Any]:
        """Replay every tag change in event order and compare with ``tags_current``:
        ``{"replay_matches": bool, "n_mismatched": int, "mismatched": [(lesion_id, tag)...]}``."""
        with self._db.read():
            changes = self._db.query(
                "SELECT lesion_id, tag, present_after, last_after FROM tag_changes "
                "ORDER BY batch_id")
            current = {(r[0], r[1]): (int(r[2]), r[3]) for r in self._db.query(
                "SELECT lesion_id, tag, present, last_batch FROM tags_current")}
        state: dict[tuple[str, str], tuple[int, Any]] = {}
        for lid, tag, present, last in changes:
            state[(lid, tag)] = (int(present), last)
        bad = sorted(k for k in set(state) | set(current) if state.get(k) != current.get(k))
        return {"replay_matches": not bad, "n_mismatched": len(bad), "mismatched": bad[:20]}

    # saved views -------------------------------------------------------------------------------
    def save_view(self, name: str, user: str, spec: dict, *, overwrite: bool = False) -> int:
        """Save a named view (filters, sort, selection: any JSON object) of ``user``.

        A user's view names are unique: saving again under a name raises unless ``overwrite``.
        Returns the view id.
        """
        name = check_text(name, "view name", max_len=128)
        user = check_user(user)
        if not isinstance(spec, dict):
            raise LabelStoreError(f"view {name!r}: the view must be a dict (got "
                                  f"{type(spec).__name__}); nothing was written")
        try:
            text = json.dumps(spec, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise LabelStoreError(f"view {name!r}: not JSON ({exc}); nothing was written") from None
        db = self._db
        with self._tx():
            old = db.scalar("SELECT id FROM saved_views WHERE owner = ? AND name = ? "
                            "AND deleted_at IS NULL", (user, name))
            stamp = schema.now()
            if old is not None:
                if not overwrite:
                    raise LabelStoreError(
                        f"{user} already has a view {name!r} (id {old}); pick another name or "
                        "save with overwrite=True; nothing was written"
                    )
                db.execute("UPDATE saved_views SET spec = ?, updated_at = ? WHERE id = ?",
                           (text, stamp, old))
                return int(old)
            return int(db.insert_returning_id(
                "INSERT INTO saved_views (owner, name, spec, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user, name, text, stamp, stamp),
            ))

    def saved_views(self, owner: str | None = None) -> pd.DataFrame:
        """Every user's saved views (or ``owner``'s): ``view_id``, ``owner``, ``name``,
        ``created_at``, ``updated_at``, ``n_selected``, ``spec`` (dict); by owner and name."""
        where, params = "deleted_at IS NULL", []
        if owner is not None:
            where += " AND owner = ?"
            params.append(check_user(owner, "owner"))
        rows = self._db.query(
            "SELECT id, owner, name, created_at, updated_at, spec FROM saved_views "
            f"WHERE {where} ORDER BY owner, name",
            params,
        )
        out = []
        for vid, own, name, c, u, spec in rows:
            d = json.loads(spec)
            sel = d.get("selection") if isinstance(d, dict) else None
            out.append((int(vid), own, name, c, u, len(sel) if isinstance(sel, list) else 0, d))
        return pd.DataFrame(out, columns=VIEW_COLUMNS)

    def load_view(self, name: str, owner: str) -> dict:
        """The spec of ``owner``'s view ``name`` (anyone may load it)."""
        name = check_text(name, "view name", max_len=128)
        owner = check_user(owner, "owner")
        text = self._db.scalar("SELECT spec FROM saved_views WHERE owner = ? AND name = ? "
                               "AND deleted_at IS NULL", (owner, name))
        if text is None:
            mine = self.saved_views(owner)["name"].tolist()
            raise LabelStoreError(
                f"{owner} has no saved view {name!r} (theirs: {', '.join(mine) or 'none'})"
            )
        return json.loads(text)

    def delete_view(self, name: str, user: str) -> int:
        """Delete ``user``'s own view ``name`` (marked deleted, never erased); returns its id."""
        name = check_text(name, "view name", max_len=128)
        user = check_user(user)
        db = self._db
        with self._tx():
            vid = db.scalar("SELECT id FROM saved_views WHERE owner = ? AND name = ? "
                            "AND deleted_at IS NULL", (user, name))
            if vid is None:
                others = [r[0] for r in db.query(
                    "SELECT owner FROM saved_views WHERE name = ? AND deleted_at IS NULL",
                    (name,))]
                why = (f" (only its owner can delete it: {', '.join(others)})" if others else "")
                raise LabelStoreError(f"{user} has no saved view {name!r}{why}; nothing deleted")
            db.execute("UPDATE saved_views SET deleted_at = ? WHERE id = ?", (schema.now(), vid))
        return int(vid)
