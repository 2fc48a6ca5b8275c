"""The label store's schema, versioned, and the migrations between versions.

A new store is created by running every migration from version 0, so the upgrade path from old
stores is exercised every time a store is made. ``store_meta`` holds ``app`` (which tells a label
store from any other database), ``schema_version`` and the dataset binding; ``schema_migrations``
records when each version was applied.

Tables (version 4)::

    store_meta        key -> value (app, schema_version, dataset_hash, dataset_kind, ...)
    schema_migrations version, description, applied_at
    classes           name, class_id, color, kind (coarse/special/user), created_by, created_at
    batches           the event log: one row per atomic batch (id = event id), user_name, tool,
                      op, comment, created_at, n_changes, target_batch (undo/redo),
                      undone_by, redone_by, params (JSON; v2)
    changes           one row per lesion per batch: label/cluster/confidence/source/last batch,
                      before and after (append-only)
    runs              pseudo-label runs (run_id, content_hash, init batch)
    pseudo_labels     run_seq, lesion_id, cluster, label, confidence (append-only)
    labels_current    one row per lesion of the dataset: current label, cluster, confidence,
                      source (pseudo/corrected/NULL), last_batch; kept in step with the log
    cluster_names     display names of clusters (v2)
    comment_targets   lesions a comment event is about (v2)
    snapshots         named, immutable label sets (labels_hash: v2)
    snapshot_labels   snapshot_id, lesion_id, label, cluster, source (append-only)
    added_lesions     lesions people added, with their geometry (v3, append-only)
    tag_changes       one row per lesion and tag per tag batch: present before/after, which
                      batch had set it last before/after (v4, append-only)
    tags_current      lesion_id, tag, present (0/1), last_batch; kept in step with the log (v4)
    saved_views       a user's named grid view: filters, sort, selection as JSON (v4); deleting
                      one only marks it (deleted_at), so nothing saved is lost
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..dl_info import BOX_COLUMNS, RECIST_COLUMNS
from .backend import Backend
from .errors import StoreFormatError

__all__ = [
    "APP_ID",
    "CURRENT_VERSION",
    "MIGRATIONS",
    "Migration",
    "migrate",
    "read_meta",
    "stored_version",
    "labels_hash",
    "now",
]

APP_ID = "deeplesion-lab-labels"
CURRENT_VERSION = 4

Step = str | dict[str, str] | Callable[[Backend], None]


def now() -> str:
    """UTC timestamp, ISO 8601 with microseconds (the same text on every backend)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def labels_hash(rows: Iterable[tuple]) -> str:
    """Content hash of ``(lesion_id, label, ...)`` rows: order-independent, 16 hex digits."""
    lines = sorted(f"{r[0]}\t{'' if r[1] is None else r[1]}" for r in rows)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Migration:
    """Steps that take a store from ``version - 1`` to ``version``.

    A step is SQL text (DDL tokens filled by the backend), a ``{dialect: sql}`` dict, or a
    callable taking the backend.
    """

    version: int
    description: str
    steps: tuple[Step, ...]


_V1 = (
    "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
    "applied_at TEXT NOT NULL)",
    "CREATE TABLE classes (name TEXT PRIMARY KEY, class_id INTEGER NOT NULL UNIQUE, "
    "color TEXT NOT NULL, kind TEXT NOT NULL, created_by TEXT, created_at TEXT NOT NULL)",
    "CREATE TABLE batches (id {pk}, user_name TEXT NOT NULL, tool TEXT NOT NULL, "
    "op TEXT NOT NULL, comment TEXT, created_at TEXT NOT NULL, n_changes INTEGER NOT NULL, "
    "target_batch {bigint}, undone_by {bigint}, redone_by {bigint})",
    "CREATE INDEX batches_user ON batches (user_name, id)",
    "CREATE TABLE runs (seq {pk}, run_id TEXT NOT NULL, content_hash TEXT NOT NULL, "
    "created_at TEXT NOT NULL, n_lesions INTEGER NOT NULL, "
    "batch_id {bigint} NOT NULL REFERENCES batches (id))",
    "CREATE TABLE pseudo_labels (run_seq {bigint} NOT NULL REFERENCES runs (seq), "
    "lesion_id TEXT NOT NULL, cluster {bigint}, label TEXT, confidence {real}, "
    "PRIMARY KEY (run_seq, lesion_id)){without_rowid}",
    "CREATE TABLE labels_current (lesion_id TEXT PRIMARY KEY, label TEXT, cluster {bigint}, "
    "confidence {real}, source TEXT, last_batch {bigint}){without_rowid}",
    "CREATE INDEX labels_current_cluster ON labels_current (cluster)",
    "CREATE TABLE changes (batch_id {bigint} NOT NULL REFERENCES batches (id), "
    "lesion_id TEXT NOT NULL, label_before TEXT, label_after TEXT, cluster_before {bigint}, "
    "cluster_after {bigint}, confidence_before {real}, confidence_after {real}, "
    "source_before TEXT, source_after TEXT, last_before {bigint}, last_after {bigint}, "
    "PRIMARY KEY (batch_id, lesion_id)){without_rowid}",
    "CREATE INDEX changes_lesion ON changes (lesion_id, batch_id)",
    "CREATE TABLE snapshots (id {pk}, name TEXT NOT NULL UNIQUE, created_by TEXT NOT NULL, "
    "created_at TEXT NOT NULL, event_id {bigint} NOT NULL, run_id TEXT, "
    "n_lesions INTEGER NOT NULL)",
    "CREATE TABLE snapshot_labels (snapshot_id {bigint} NOT NULL REFERENCES snapshots (id), "
    "lesion_id TEXT NOT NULL, label TEXT, cluster {bigint}, source TEXT, "
    "PRIMARY KEY (snapshot_id, lesion_id)){without_rowid}",
)


def _fill_snapshot_hashes(db: Backend) -> None:
    """v2: compute ``labels_hash`` of snapshots made by v1 stores."""
    for (sid,) in db.query("SELECT id FROM snapshots WHERE labels_hash IS NULL"):
        rows = db.query("SELECT lesion_id, label FROM snapshot_labels WHERE snapshot_id = ?", (sid,))
        db.execute("UPDATE snapshots SET labels_hash = ? WHERE id = ?", (labels_hash(rows), sid))


_APPEND_ONLY = ("changes", "pseudo_labels", "snapshot_labels")

_SQLITE_TRIGGERS = tuple(
    f"CREATE TRIGGER {t}_append_only_{ev.lower()} BEFORE {ev} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
    for t in _APPEND_ONLY
    for ev in ("UPDATE", "DELETE")
) + (
    "CREATE TRIGGER snapshots_immutable BEFORE UPDATE ON snapshots "
    "WHEN OLD.labels_hash IS NOT NULL "
    "BEGIN SELECT RAISE(ABORT, 'snapshots are immutable'); END",
    "CREATE TRIGGER snapshots_no_delete BEFORE DELETE ON snapshots "
    "BEGIN SELECT RAISE(ABORT, 'snapshots are immutable'); END",
)

_PG_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION dl_labels_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
    "CREATE OR REPLACE FUNCTION dl_labels_snapshot_immutable() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP = 'DELETE' OR OLD.labels_hash IS NOT NULL THEN "
    "RAISE EXCEPTION 'snapshots are immutable'; END IF; RETURN NEW; END $$",
    *(
        f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
        "FOR EACH ROW EXECUTE FUNCTION dl_labels_append_only()"
        for t in _APPEND_ONLY
    ),
    "CREATE TRIGGER snapshots_immutable BEFORE UPDATE OR DELETE ON snapshots "
    "FOR EACH ROW EXECUTE FUNCTION dl_labels_snapshot_immutable()",
)

_V2 = (
    "ALTER TABLE batches ADD COLUMN params TEXT",
    "CREATE TABLE cluster_names (cluster {bigint} PRIMARY KEY, name TEXT NOT NULL, "
    "last_batch {bigint})",
    "CREATE TABLE comment_targets (batch_id {bigint} NOT NULL REFERENCES batches (id), "
    "lesion_id TEXT NOT NULL, PRIMARY KEY (batch_id, lesion_id)){without_rowid}",
    "CREATE INDEX comment_targets_lesion ON comment_targets (lesion_id)",
    "ALTER TABLE snapshots ADD COLUMN labels_hash TEXT",
    _fill_snapshot_hashes,
    *({"sqlite": s} for s in _SQLITE_TRIGGERS),
    *({"postgresql": s} for s in _PG_TRIGGERS),
)

#: Geometry of the lesions people added (accepted proposals of the lesion graph): one row per
#: lesion, written once with its ``add_lesions`` batch (append-only like the log).
ADDED_LESION_COLUMNS: tuple[str, ...] = (
    "file_name", "patient_index", "study_index", "series_id", "key_slice_index",
    *BOX_COLUMNS, *RECIST_COLUMNS, "score", "origin",
)

_V3 = (
    "CREATE TABLE added_lesions (lesion_id TEXT PRIMARY KEY, "
    "batch_id {bigint} NOT NULL REFERENCES batches (id), file_name TEXT NOT NULL, "
    "patient_index {bigint} NOT NULL, study_index {bigint} NOT NULL, "
    "series_id {bigint} NOT NULL, key_slice_index {bigint} NOT NULL, "
    + ", ".join(f"{c} {{real}} NOT NULL" for c in BOX_COLUMNS)
    + ", "
    + ", ".join(f"{c} {{real}}" for c in RECIST_COLUMNS)
    + ", score {real}, origin TEXT){without_rowid}",
    {"sqlite": "CREATE TRIGGER added_lesions_append_only_update BEFORE UPDATE ON added_lesions "
               "BEGIN SELECT RAISE(ABORT, 'added_lesions is append-only'); END"},
    {"sqlite": "CREATE TRIGGER added_lesions_append_only_delete BEFORE DELETE ON added_lesions "
               "BEGIN SELECT RAISE(ABORT, 'added_lesions is append-only'); END"},
    {"postgresql": "CREATE TRIGGER added_lesions_append_only BEFORE UPDATE OR DELETE ON "
                   "added_lesions FOR EACH ROW EXECUTE FUNCTION dl_labels_append_only()"},
)

_V4 = (
    "CREATE TABLE tag_changes (batch_id {bigint} NOT NULL REFERENCES batches (id), "
    "lesion_id TEXT NOT NULL, tag TEXT NOT NULL, present_before INTEGER NOT NULL, "
    "present_after INTEGER NOT NULL, last_before {bigint}, last_after {bigint}, "
    "PRIMARY KEY (batch_id, lesion_id, tag)){without_rowid}",
    "CREATE INDEX tag_changes_lesion ON tag_changes (lesion_id, batch_id)",
    "CREATE TABLE tags_current (lesion_id TEXT NOT NULL, tag TEXT NOT NULL, "
    "present INTEGER NOT NULL, last_batch {bigint}, PRIMARY KEY (lesion_id, tag)){without_rowid}",
    "CREATE INDEX tags_current_tag ON tags_current (tag, present)",
    "CREATE TABLE saved_views (id {pk}, owner TEXT NOT NULL, name TEXT NOT NULL, "
    "spec TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT)",
    "CREATE INDEX saved_views_owner ON saved_views (owner, name)",
    {"sqlite": "CREATE TRIGGER tag_changes_append_only_update BEFORE UPDATE ON tag_changes "
               "BEGIN SELECT RAISE(ABORT, 'tag_changes is append-only'); END"},
    {"sqlite": "CREATE TRIGGER tag_changes_append_only_delete BEFORE DELETE ON tag_changes "
               "BEGIN SELECT RAISE(ABORT, 'tag_changes is append-only'); END"},
    {"postgresql": "CREATE TRIGGER tag_changes_append_only BEFORE UPDATE OR DELETE ON "
                   "tag_changes FOR EACH ROW EXECUTE FUNCTION dl_labels_append_only()"},
    {"sqlite": "CREATE TRIGGER saved_views_no_delete BEFORE DELETE ON saved_views "
               "BEGIN SELECT RAISE(ABORT, 'saved views are only marked deleted'); END"},
    {"postgresql": "CREATE OR REPLACE FUNCTION dl_labels_views_no_delete() RETURNS trigger "
                   "LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'saved views are only marked deleted'; END $$"},
    {"postgresql": "CREATE TRIGGER saved_views_no_delete BEFORE DELETE ON saved_views "
                   "FOR EACH ROW EXECUTE FUNCTION dl_labels_views_no_delete()"},
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: classes, event log, pseudo-labels, current labels, snapshots", _V1),
    Migration(
        2,
        "batch params, cluster names, comments, snapshot hashes, append-only triggers",
        _V2,
    ),
    Migration(3, "lesions added by people (accepted proposals) with their geometry", _V3),
    Migration(4, "tags on lesions (events, undoable) and saved grid views", _V4),
)


def read_meta(db: Backend) -> dict[str, str]:
    """``store_meta`` as a dict."""
    return {k: v for k, v in db.query("SELECT key, value FROM store_meta")}


def stored_version(db: Backend) -> int:
    """The schema version recorded in the store (0 for an empty database)."""
    if "store_meta" not in db.table_names():
        return 0
    v = db.scalar("SELECT value FROM store_meta WHERE key = 'schema_version'")
    return int(v) if v is not None else 0


def _set_meta(db: Backend, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO store_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def migrate(db: Backend, target: int = CURRENT_VERSION) -> list[int]:
    """Apply the migrations from the stored version up to ``target``, in one transaction.

    Returns the versions applied. A new (empty) database gets ``store_meta`` with
    ``app = deeplesion-lab-labels``.

    Raises
    ------
    StoreFormatError
        The store is newer than this code knows.
    """
    applied: list[int] = []
    with db.write():
        current = stored_version(db)
        if current > CURRENT_VERSION:
            raise StoreFormatError(
                f"{db.location}: label store schema version {current} is newer than this "
                f"deeplesion-lab knows ({CURRENT_VERSION}); upgrade deeplesion-lab"
            )
        for m in MIGRATIONS:
            if m.version <= current or m.version > target:
                continue
            for step in m.steps:
                if callable(step):
                    step(db)
                elif isinstance(step, dict):
                    if db.dialect in step:  # dialect-specific SQL, used as written
                        db.execute(step[db.dialect])
                else:
                    db.execute(db.ddl(step))
            if m.version == 1:
                _set_meta(db, "app", APP_ID)
                _set_meta(db, "created_at", now())
            _set_meta(db, "schema_version", str(m.version))
            db.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (m.version, m.description, now()),
            )
            applied.append(m.version)
    return applied


def dumps(obj: dict | None) -> str | None:
    """JSON text for ``batches.params``."""
    return None if obj is None else json.dumps(obj, sort_keys=True)


def loads(text: str | None) -> dict:
    """``batches.params`` as a dict (``{}`` for NULL or v1 rows)."""
    return json.loads(text) if isinstance(text, str) and text else {}
