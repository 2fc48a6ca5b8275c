"""Database connections of the label store: SQLite (default) and PostgreSQL (psycopg 3).

The store writes its SQL once, with ``?`` placeholders and a few DDL tokens; a :class:`Backend`
translates them for its dialect and hides the other differences:

==================  ==========================================  =================================
                    SQLite                                      PostgreSQL
==================  ==========================================  =================================
placeholders        ``?``                                       ``%s``
id column           ``INTEGER PRIMARY KEY AUTOINCREMENT``       ``BIGINT GENERATED ... IDENTITY``
write transaction   ``BEGIN IMMEDIATE`` (one writer at a time,  ``BEGIN`` + a transaction-level
                    others wait up to the busy timeout)         advisory lock on the namespace
read snapshot       ``BEGIN`` (WAL gives readers a snapshot)    ``REPEATABLE READ READ ONLY``
bulk loads          ``executemany``                             ``COPY ... FROM STDIN``
namespace           one store per file                          one store per schema (namespace)
==================  ==========================================  =================================

Writers are serialised (one write transaction at a time per store), so every check a write makes
(unknown ids, undo conflicts) still holds when it commits.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import LabelStoreError, StoreFormatError, StoreWriteError

__all__ = ["Backend", "SQLiteBackend", "PostgresBackend", "connect", "is_postgres_url"]

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_NAMESPACE = "deeplesion_labels"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_postgres_url(target: str | Path) -> bool:
    """True for ``postgresql://`` / ``postgres://`` connection URLs."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def _redact(url: str) -> str:
    """The URL without its password (for messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Backend:
    """A connection plus the dialect differences (see the module docstring).

    Attributes
    ----------
    dialect : str
        ``"sqlite"`` or ``"postgresql"``.
    location : str
        The file path or the redacted URL (and namespace), for messages.
    """

    dialect = ""
    ddl_tokens: dict[str, str] = {}
    #: null-safe comparison operators (``IS`` / ``IS NOT`` in SQLite; works before 3.39 too)
    same = "IS NOT DISTINCT FROM"
    differs = "IS DISTINCT FROM"
    #: appended to ``ORDER BY lesion_id`` so both backends sort ids bytewise
    collate = ' COLLATE "C"'

    def __init__(self) -> None:
        self.location = ""
        self._lock = threading.RLock()
        self._depth = 0
        self._sql_cache: dict[str, str] = {}

    # SQL text ------------------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        """Translate placeholders for this dialect."""
        return text

    def ddl(self, text: str) -> str:
        """Fill the DDL tokens ``{pk}``, ``{bigint}``, ``{real}``, ``{without_rowid}``."""
        return text.format(**self.ddl_tokens)

    # execution -----------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()):
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of a query."""
        with self._lock:
            return list(self.execute(sql, params).fetchall())

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None when there is no row)."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def insert_returning_id(self, sql: str, params: Sequence[Any], column: str = "id") -> int:
        """Run an ``INSERT ... RETURNING <column>`` and return the new id."""
        with self._lock:
            return int(self.execute(f"{sql} RETURNING {column}", params).fetchone()[0])

    def fill_selection(self, ids: Sequence[str]) -> None:
        """Put ``ids`` into the temporary table ``sel_ids`` (emptied first)."""
        raise NotImplementedError

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows into ``table``."""
        raise NotImplementedError

    # transactions --------------------------------------------------------------------------------
    def _begin_write(self) -> None:
        raise NotImplementedError

    def _begin_read(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        self.execute("COMMIT")

    def _rollback(self) -> None:
        self.execute("ROLLBACK")

    #: Driver errors that mean the database could not take the write (disk full, read-only,
    #: I/O error, lost connection): reported as :class:`StoreWriteError`, never as a traceback.
    write_errors: tuple[type[BaseException], ...] = ()

    def open_failed(self, exc: BaseException) -> LabelStoreError:
        """The one-line error for a store the database could not open or read (not a format
        problem: I/O error, full disk, no permission)."""
        return LabelStoreError(
            f"{self.location}: cannot open the label store ({exc}): is the disk full, or the "
            "file or its folder not readable and writable for this user? nothing was written"
        )

    def write_failed(self, exc: BaseException) -> StoreWriteError:
        """The one-line error for a write the database refused (rolled back)."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        low = text.lower()
        hint = ""
        if "full" in low or "no space" in low:
            hint = "; free some disk space and try again"
        elif "readonly" in low or "read-only" in low or "permission" in low:
            hint = "; the store is read-only for this user"
        return StoreWriteError(
            f"{self.location}: the change could not be written ({text}){hint}; nothing was "
            "written (the transaction was rolled back)"
        )

    @contextlib.contextmanager
    def write(self) -> Iterator[Backend]:
        """One serialised write transaction: committed if the block succeeds, else rolled back.

        Nested use joins the outer transaction.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._begin_write()
            self._depth = 1
            try:
                yield self
            except BaseException as exc:
                self._depth = 0
                with contextlib.suppress(Exception):
                    self._rollback()
                if isinstance(exc, self.write_errors):
                    raise self.write_failed(exc) from exc
                raise
            self._depth = 0
            try:
                self._commit()
            except self.write_errors as exc:
                with contextlib.suppress(Exception):
                    self._rollback()
                raise self.write_failed(exc) from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Backend]:
        """A consistent read snapshot across several queries (joins an open transaction)."""
        with self._lock:
            if self._depth:
                yield self
                return
            self._begin_read()
            self._depth = 1
            try:
                yield self
            finally:
                self._depth = 0
                with contextlib.suppress(Exception):
                    self._commit()

    # introspection -------------------------------------------------------------------------------
    def table_names(self) -> set[str]:
        raise NotImplementedError

    def prepare_store(self) -> None:
        """Per-connection settings, once the target is known to be (or become) a label store."""

    def ensure_namespace(self) -> None:
        """Create the namespace if the backend has one (PostgreSQL schema)."""

    def integrity_check(self) -> str:
        """``"ok"`` or the database's own complaint (SQLite); ``"n/a"`` elsewhere."""
        return "n/a"

    def close(self) -> None:
        raise NotImplementedError


# SQLite ------------------------------------------------------------------------------------------
class SQLiteBackend(Backend):
    """A SQLite file in WAL mode.

    Parameters
    ----------
    path : pathlib.Path
        The database file.
    create : bool
        Create it when missing (its folder must exist).
    timeout : float
        Seconds a writer waits for another writer's transaction (busy timeout).
    """

    dialect = "sqlite"
    ddl_tokens = {
        "pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "bigint": "INTEGER",
        "real": "REAL",
        "without_rowid": " WITHOUT ROWID",
    }
    same = "IS"
    differs = "IS NOT"
    collate = ""
    write_errors = (sqlite3.OperationalError,)

    def __init__(
        self, path: Path, *, create: bool = True, timeout: float = 30.0, allow_empty: bool = False
    ):
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        self.is_new = False
        if self.path.is_dir():
            raise LabelStoreError(f"{self.path}: is a folder; give the label store's file path")
        if self.path.exists():
            # Never open() the database file from Python: closing any descriptor on it drops
            # every POSIX lock this process holds on it (fcntl semantics), which lets another
            # process delete the WAL under our open connections. Ask SQLite instead.
            self.is_new = self.path.stat().st_size == 0
            if self.is_new and not allow_empty:
                raise StoreFormatError(
                    f"{self.path}: the file is empty (0 bytes), not a label store (was it "
                    "truncated?); nothing was written. Restore it from a backup or a snapshot "
                    "export; to start a new store here, delete it and run `deeplesion-lab labels "
                    "init`"
                )
            if not self.is_new:
                try:
                    probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout)
                    try:
                        probe.execute("PRAGMA schema_version").fetchone()
                    finally:
                        probe.close()
                except sqlite3.OperationalError as exc:  # I/O, a full disk, no permission
                    raise self.open_failed(exc) from exc
                except sqlite3.DatabaseError as exc:
                    raise StoreFormatError(
                        f"{self.path}: not a label store: not a SQLite database ({exc}); "
                        "nothing was written"
                    ) from exc
        else:
            if not create:
                raise LabelStoreError(
                    f"{self.path}: no label store here (create one with `deeplesion-lab labels "
                    "init --run RUN_DIR` or LabelStore.open(path))"
                )
            if not self.path.parent.is_dir():
                raise LabelStoreError(f"{self.path}: folder {self.path.parent} does not exist")
            self.is_new = True
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LabelStoreError(f"{self.path}: cannot open ({exc})") from exc
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            self.conn.execute("SELECT json_valid('[]')")
            self._json1 = True
        except sqlite3.OperationalError:  # pragma: no cover - SQLite without JSON1
            self._json1 = False

    def execute(self, sql: str, params: Sequence[Any] = ()):
        with self._lock:
            return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self.conn.executemany(sql, rows)

    def fill_selection(self, ids: Sequence[str]) -> None:
        with self._lock:
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS sel_ids (lesion_id TEXT PRIMARY KEY) "
                "WITHOUT ROWID"
            )
            self.conn.execute("DELETE FROM sel_ids")
            # sorted ids make every later insert into the (batch, lesion) keyed log an append
            ordered = sorted(ids)
            if self._json1:
                self.conn.execute(
                    "INSERT INTO sel_ids (lesion_id) SELECT value FROM json_each(?)",
                    (json.dumps(ordered),),
                )
            else:  # pragma: no cover - SQLite built without JSON1
                self.conn.executemany(
                    "INSERT INTO sel_ids (lesion_id) VALUES (?)", [(i,) for i in ordered]
                )

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cols = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        self.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)

    def _begin_write(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise self.write_failed(exc) from exc
            raise LabelStoreError(
                f"{self.path}: could not start a write ({exc}); another process holds the "
                "database for longer than the busy timeout"
            ) from exc

    def _begin_read(self) -> None:
        self.conn.execute("BEGIN")

    def table_names(self) -> set[str]:
        try:
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        except sqlite3.OperationalError as exc:
            raise self.open_failed(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreFormatError(
                f"{self.path}: not a readable label store: {exc}; nothing was written"
            ) from exc
        return {r[0] for r in rows}

    def prepare_store(self) -> None:
        with self._lock:
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LabelStoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")

    def quick_check(self) -> str:
        """``PRAGMA quick_check`` (page-level consistency; much cheaper than integrity_check)."""
        try:
            rows = self.query("PRAGMA quick_check")
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "; ".join(str(r[0]) for r in rows[:5])

    def integrity_check(self) -> str:
        try:
            rows = self.query("PRAGMA integrity_check")
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "; ".join(str(r[0]) for r in rows[:5])

    def close(self) -> None:
        with self._lock:
            self.conn.close()


# PostgreSQL --------------------------------------------------------------------------------------
class PostgresBackend(Backend):
    """A PostgreSQL database (psycopg 3); the store lives in one schema (``namespace``).

    Parameters
    ----------
    url : str
        ``postgresql://user:password@host:port/dbname``.
    namespace : str, optional
        The PostgreSQL schema holding this store's tables (default ``deeplesion_labels``), so
        that several stores can share one database.
    create : bool
        Create the schema when missing.
    timeout : float
        Seconds to wait for the connection and for another writer's transaction.
    """

    dialect = "postgresql"
    ddl_tokens = {
        "pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "bigint": "BIGINT",
        "real": "DOUBLE PRECISION",
        "without_rowid": "",
    }

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        create: bool = True,
        timeout: float = 30.0,
    ):
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is in the pinned stack
            raise LabelStoreError(
                "PostgreSQL label stores need psycopg 3 (pip install 'psycopg[binary]')"
            ) from exc
        self.namespace = namespace or DEFAULT_NAMESPACE
        if not _IDENT.match(self.namespace):
            raise LabelStoreError(
                f"namespace {self.namespace!r}: use lower-case letters, digits and '_' "
                "(a PostgreSQL schema name)"
            )
        self.url = url
        self.location = f"{_redact(url)} (schema {self.namespace})"
        self.write_errors = (psycopg.OperationalError,)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
        except psycopg.Error as exc:
            raise LabelStoreError(f"{_redact(url)}: cannot connect to PostgreSQL: {exc}") from exc
        self.conn.execute(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
        exists = self.conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.namespace,)
        ).fetchone()
        self.is_new = exists is None
        if self.is_new and not create:
            self.conn.close()
            raise LabelStoreError(f"{self.location}: no label store here")
        self.conn.execute(f'SET search_path TO "{self.namespace}"')

    def sql(self, text: str) -> str:
        out = self._sql_cache.get(text)
        if out is None:
            out = self._sql_cache[text] = text.replace("?", "%s")
        return out

    def execute(self, sql: str, params: Sequence[Any] = ()):
        with self._lock:
            if params:
                return self.conn.execute(self.sql(sql), tuple(params))
            return self.conn.execute(sql)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock, self.conn.cursor() as cur:
            cur.executemany(self.sql(sql), list(rows))

    def fill_selection(self, ids: Sequence[str]) -> None:
        with self._lock:
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS sel_ids (lesion_id TEXT PRIMARY KEY)"
            )
            self.conn.execute("TRUNCATE sel_ids")
            with self.conn.cursor() as cur, cur.copy("COPY sel_ids (lesion_id) FROM STDIN") as cp:
                for i in ids:
                    cp.write_row((i,))

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cols = ", ".join(columns)
        with self._lock, self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)

    def _begin_write(self) -> None:
        import psycopg

        self.conn.execute("BEGIN")
        try:
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"deeplesion-lab-labels:{self.namespace}",),
            )
        except psycopg.Error as exc:
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
            raise LabelStoreError(f"{self.location}: could not start a write ({exc})") from exc

    def _begin_read(self) -> None:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def table_names(self) -> set[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (self.namespace,),
        )
        return {r[0] for r in rows}

    def ensure_namespace(self) -> None:
        self.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.namespace}"')

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def connect(
    target: str | Path,
    *,
    namespace: str | None = None,
    create: bool = True,
    timeout: float = 30.0,
    allow_empty: bool = False,
) -> Backend:
    """A backend for a SQLite path (or ``sqlite:///path``) or a ``postgresql://`` URL.

    An existing empty SQLite file is refused (a truncated store must not silently become a
    new one) unless ``allow_empty`` (``labels init``).
    """
    if is_postgres_url(target):
        return PostgresBackend(str(target), namespace=namespace, create=create, timeout=timeout)
    if namespace is not None:
        raise LabelStoreError("namespace= applies to PostgreSQL stores only")
    text = str(target)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") - 1 :] if text.startswith("sqlite:////") else text[10:]
    return SQLiteBackend(Path(text), create=create, timeout=timeout, allow_empty=allow_empty)
