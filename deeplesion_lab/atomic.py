"""Write files so that a crash never leaves a half-written output: temp name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["atomic_path", "file_lock", "write_parquet", "write_csv", "write_json", "update_json"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:  # name the output, not the temporary file (pyarrow may omit errno)
        code = exc.errno
        if code is None and (m := re.search(r"\[Errno (\d+)\]", str(exc))):
            code = int(m.group(1))
        raise OSError(code, os.strerror(code) if code else str(exc), str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(df: pd.DataFrame, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a DataFrame as parquet atomically, with optional key/value file metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (indented, keys sorted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``.NAME.lock`` beside ``path`` (POSIX ``flock``).

    Serialises read-modify-write updates of one file between processes (two commands of a
    pipeline, a notebook and a CLI). Where ``fcntl`` does not exist the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update_json(
    path: str | Path,
    updates: dict[str, Any],
    *,
    replace: Iterable[tuple[str, ...]] = (),
) -> dict[str, Any]:
    """Deep-merge ``updates`` into the JSON object at ``path`` (created if absent), atomically.

    ``replace``: key paths (e.g. ``("finetune",)``, ``("detection", "pseudo")``) whose value
    in ``updates`` replaces the stored one whole instead of merging into it, so that keys a
    newer result does not have do not linger from an older one.

    The read, merge and write happen under :func:`file_lock`, so concurrent updates from
    several processes all land.
    """
    path = Path(path)
    with file_lock(path):
        return _update_json(path, updates, {tuple(r) for r in replace})


def _update_json(path: Path, updates: dict[str, Any],
                 replace: set[tuple[str, ...]] = frozenset()) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def merge(dst: dict, src: dict, at: tuple[str, ...]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and at + (k,) not in replace:
                merge(dst[k], v, at + (k,))
            else:
                dst[k] = v

    merge(data, updates, ())
    write_json(data, path)
    return data


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
