"""Copy a whole label store into an empty one (:func:`copy_store`), e.g. a run's SQLite file
into the team's PostgreSQL server (``deeplesion-lab labels use --db URL --copy-local``).

Every table is copied row for row (the event log, the current labels, snapshots, tags, views,
the taxonomy), so the copy has the same history, event ids, undo stacks and snapshot hashes;
``verify`` on the copy replays the same log to the same labels.
"""

from __future__ import annotations

from .errors import LabelStoreError
from .schema import read_meta

__all__ = ["COPY_TABLES", "copy_store"]

#: The tables of a label store (schema version 4), parents before children.
COPY_TABLES = (
    "classes", "batches", "runs", "pseudo_labels", "labels_current", "changes", "snapshots",
    "snapshot_labels", "cluster_names", "comment_targets", "added_lesions", "tag_changes",
    "tags_current", "saved_views",
)
#: Tables that refuse deletes (immutable snapshots): they must be empty in the target.
_IMMUTABLE = ("snapshots", "snapshot_labels")
#: Identity columns, whose PostgreSQL sequences must continue after the copied ids.
_IDENTITY = {"batches": "id", "runs": "seq", "snapshots": "id", "saved_views": "id"}
_META = ("store_meta", "schema_migrations")


def _user_tables(db) -> set[str]:
    return {t for t in db.table_names() if not t.startswith("sqlite_") and t != "sel_ids"}


def copy_store(source, target) -> dict[str, int]:
    """Copy every row of the label store ``source`` into ``target``.

    Parameters
    ----------
    source, target : LabelStore
        Open stores of the same dataset and schema version; ``target`` must hold no event
        yet (a store just created: no batch, no pseudo-labels, no snapshot).

    Returns
    -------
    dict
        Rows copied per table.

    Raises
    ------
    LabelStoreError
        When the stores differ in dataset or schema version, the target already holds
        events, or the source has a table this copy does not know (nothing is written).
    """
    src, dst = source._db, target._db
    with src.read():
        meta_s = read_meta(src)
        tables = _user_tables(src)
    meta_t = read_meta(dst)
    for key in ("schema_version", "dataset_hash"):
        if meta_s.get(key) != meta_t.get(key):
            raise LabelStoreError(
                f"cannot copy {source.location} into {target.location}: their {key} differ "
                f"({meta_s.get(key)!r} and {meta_t.get(key)!r})"
            )
    unknown = sorted(tables - set(COPY_TABLES) - set(_META))
    if unknown:
        raise LabelStoreError(
            f"{source.location}: table(s) {', '.join(unknown)} unknown to the copy; nothing "
            "was copied"
        )
    n_events = int(dst.scalar("SELECT COUNT(*) FROM batches"))
    n_runs = int(dst.scalar("SELECT COUNT(*) FROM runs"))
    if n_events or n_runs:
        raise LabelStoreError(
            f"{target.location} already holds {n_events} event(s) and {n_runs} mining run(s); "
            "a store is copied only into an empty one (use another --namespace, or drop that "
            "schema first)"
        )
    rows: dict[str, tuple[list[str], list[tuple]]] = {}
    with src.read():
        for table in COPY_TABLES:
            if table not in tables:
                continue
            cur = src.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            rows[table] = (cols, [tuple(r) for r in cur.fetchall()])
    counts: dict[str, int] = {}
    with dst.write():
        # what a new store makes itself (its taxonomy, the dataset's lesions) gives way
        for table in reversed(COPY_TABLES):
            if table in rows:
                if table in _IMMUTABLE:
                    if dst.scalar(f"SELECT COUNT(*) FROM {table}"):
                        raise LabelStoreError(f"{target.location}: table {table} is not empty")
                    continue
                dst.execute(f"DELETE FROM {table}")
        for table in COPY_TABLES:
            if table not in rows:
                continue
            cols, data = rows[table]
            if data:
                dst.bulk_insert(table, cols, data)
            counts[table] = len(data)
        if dst.dialect == "postgresql":
            for table, col in _IDENTITY.items():
                if counts.get(table):
                    dst.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), "
                        f"(SELECT MAX({col}) FROM {table}))"
                    )
    target._current_cache = None
    return counts
