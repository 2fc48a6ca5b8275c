"""Input checks of the label store: lesion-id selections, names, pseudo-label tables, datasets.

Each check raises a :class:`~deeplesion_lab.labels.errors.LabelStoreError` naming the problem
before anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..lesion_types import UNLABELED_NAME
from .errors import EmptySelectionError, LabelStoreError, UnknownClassError

__all__ = [
    "Dataset",
    "PSEUDO_COLUMNS",
    "check_cluster",
    "check_comment",
    "check_ids",
    "check_text",
    "check_user",
    "dataset_from",
    "from_source",
    "ids_hash",
    "list_ids",
    "pseudo_rows",
    "rows_hash",
]

PSEUDO_COLUMNS = ("lesion_id", "cluster", "label", "confidence")
MAX_TEXT = 2000
#: Characters of a user name (the same rule for the CLI, the API, the dashboard and its logins).
USER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class Dataset:
    """A dataset the store can be bound to: its lesion ids, hash, kind and source."""

    ids: list[str]
    hash: str
    kind: str
    source: str


def list_ids(ids: Sequence[Any], n: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def check_text(value: Any, what: str, *, max_len: int = 128) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelStoreError(f"{what}: a non-empty name is needed (got {value!r})")
    value = value.strip()
    if len(value) > max_len:
        raise LabelStoreError(f"{what}: longer than {max_len} characters")
    return value


def check_user(value: Any, what: str = "user") -> str:
    """``value`` if it is a valid user name: 1-64 letters, digits, ``.``, ``_``, ``-`` or ``@``.

    One rule for everyone who writes to a store (``--user`` on the command line, the API, the
    dashboard's logins), so the same person never appears under two spellings.
    """
    if not isinstance(value, str) or not (1 <= len(value) <= 64) or set(value) - USER_NAME_CHARS:
        raise LabelStoreError(
            f"{what}: invalid user name {value!r}: use 1-64 letters, digits, '.', '_', '-' or '@'"
        )
    return value


def check_comment(comment: Any) -> str | None:
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise LabelStoreError(f"comment must be text (got {type(comment).__name__})")
    comment = comment.strip()
    if len(comment) > MAX_TEXT:
        raise LabelStoreError(f"comment longer than {MAX_TEXT} characters")
    return comment or None


def check_ids(lesion_ids: Any) -> list[str]:
    """A de-duplicated list of lesion ids (order kept); a single string is one id."""
    if lesion_ids is None:
        raise EmptySelectionError("empty selection: no lesion ids given; nothing was written")
    if isinstance(lesion_ids, str):
        lesion_ids = [lesion_ids]
    try:
        seq = list(lesion_ids)
    except TypeError:
        raise LabelStoreError(
            f"lesion_ids must be a list of lesion ids (got {type(lesion_ids).__name__})"
        ) from None
    bad = [x for x in seq if not isinstance(x, str) or not x]
    if bad:
        raise LabelStoreError(
            f"lesion ids must be non-empty strings; got {list_ids([repr(b) for b in bad])}; "
            "nothing was written"
        )
    out = list(dict.fromkeys(str(x) for x in seq))
    if not out:
        raise EmptySelectionError("empty selection: no lesion ids given; nothing was written")
    return out


def check_cluster(cluster: Any, what: str = "cluster") -> int:
    if isinstance(cluster, bool) or not isinstance(cluster, int | np.integer):
        if isinstance(cluster, float | np.floating) and float(cluster).is_integer():
            return int(cluster)
        raise LabelStoreError(f"{what} must be an integer cluster id (got {cluster!r})")
    return int(cluster)


def dataset_from(obj: Any) -> Dataset:
    """The lesion ids and hash of a manifest (DataFrame or parquet path) or an id table."""
    from ..manifest import data_hash, read_manifest

    source = ""
    if isinstance(obj, str | Path):
        source = str(Path(obj).resolve())
        obj = read_manifest(obj)
    if not isinstance(obj, pd.DataFrame) or "lesion_id" not in obj.columns:
        raise LabelStoreError(
            "dataset= must be a manifest (DataFrame or .parquet path) with a lesion_id column"
        )
    ids = obj["lesion_id"]
    bad = ids.isna().to_numpy() | ~np.array([isinstance(x, str) and bool(x) for x in ids])
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise LabelStoreError(f"dataset: lesion_id missing or not text in rows {rows}")
    ids_list = [str(x) for x in ids]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise LabelStoreError(f"dataset: duplicate lesion ids: {list_ids(pd.unique(dup))}")
    manifest_cols = {"bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "coarse_type", "split"}
    if obj.attrs.get("data_hash"):
        h, kind = str(obj.attrs["data_hash"]), "manifest"
    elif manifest_cols <= set(obj.columns):
        h, kind = data_hash(obj), "manifest"
    else:
        h, kind = ids_hash(ids_list), "lesion_ids"
    source = source or str(obj.attrs.get("manifest_path", ""))
    return Dataset(ids_list, h, kind, source)


def ids_hash(ids: Iterable[str]) -> str:
    return "ids-" + hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]


def pseudo_rows(df: Any, known_classes: set[str]) -> list[tuple]:
    """Validated ``(lesion_id, cluster, label, confidence)`` tuples from a pseudo-label table."""
    if not isinstance(df, pd.DataFrame):
        raise LabelStoreError(
            "pseudo-labels must be a DataFrame with columns lesion_id, cluster, label, confidence"
        )
    missing = [c for c in PSEUDO_COLUMNS if c not in df.columns]
    if missing:
        raise LabelStoreError(
            f"pseudo-labels lack column(s) {', '.join(missing)} "
            f"(need {', '.join(PSEUDO_COLUMNS)}); nothing was written"
        )
    if len(df) == 0:
        raise EmptySelectionError("pseudo-labels: the table has no rows; nothing was written")
    ids = df["lesion_id"]
    bad = ~np.array([isinstance(x, str) and bool(x) for x in ids])
    if bad.any():
        raise LabelStoreError(
            f"pseudo-labels: lesion_id missing or not text in rows {np.flatnonzero(bad)[:5].tolist()}"
        )
    dup = ids[ids.duplicated()]
    if len(dup):
        raise LabelStoreError(f"pseudo-labels: duplicate lesion ids: {list_ids(pd.unique(dup))}")
    ids_np = ids.astype(object).to_numpy()

    raw_cluster = df["cluster"]
    cluster = pd.to_numeric(raw_cluster, errors="coerce").astype(float)
    bad = (raw_cluster.notna() & cluster.isna()).to_numpy() | (
        cluster.notna() & (cluster != np.round(cluster))
    ).to_numpy()
    if bad.any():
        raise LabelStoreError(
            "pseudo-labels: cluster must be an integer; bad for lesion(s) "
            + list_ids(ids_np[bad])
        )
    raw_conf = df["confidence"]
    conf = pd.to_numeric(raw_conf, errors="coerce").astype(float)
    bad = (raw_conf.notna() & conf.isna()).to_numpy() | ((conf < 0) | (conf > 1)).to_numpy()
    if bad.any():
        raise LabelStoreError(
            "pseudo-labels: confidence must be a number from 0 to 1; bad for lesion(s) "
            + list_ids(ids_np[bad])
        )
    labels = []
    unknown: dict[str, list[str]] = {}
    for lid, lab in zip(ids_np, df["label"].astype(object).to_numpy(), strict=True):
        if lab is None or (isinstance(lab, float) and np.isnan(lab)) or lab is pd.NA:
            labels.append(None)
        elif not isinstance(lab, str):
            raise LabelStoreError(f"pseudo-labels: label of lesion {lid} is not text ({lab!r})")
        elif lab == "" or lab == UNLABELED_NAME:
            labels.append(None)
        elif lab not in known_classes:
            unknown.setdefault(lab, []).append(str(lid))
        else:
            labels.append(lab)
    if unknown:
        parts = "; ".join(f"{k!r} ({list_ids(v, 3)})" for k, v in unknown.items())
        raise UnknownClassError(
            f"pseudo-labels use unknown class(es) {parts}; known classes: "
            f"{', '.join(sorted(known_classes))}; add new ones first with add_class"
        )
    cl = [None if np.isnan(c) else int(c) for c in cluster.to_numpy()]
    cf = [None if np.isnan(c) else float(c) for c in conf.to_numpy()]
    return sorted(zip([str(i) for i in ids_np], cl, labels, cf, strict=True))  # by lesion id


def rows_hash(rows: Iterable[tuple]) -> str:
    lines = sorted("\t".join("" if v is None else repr(v) for v in r) for r in rows)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


def from_source(source: str | None) -> str:
    return f" from {source}" if source else ""
