"""Lesion labels for the detector: a ``lesion_id, label`` table, its classes and their indices.

Labels come from three places, all reduced to the same table (``lesion_id``, ``label``):

- ``RUN_DIR/pseudo_labels.parquet`` (the mined pseudo-labels, :func:`labels_from_pseudo`);
- a labels table file, parquet or CSV (:func:`read_labels_table`), which is also the export
  format of the label store;
- a snapshot of the label store (:func:`labels_from_store`), whose id is recorded in the
  checkpoints trained on it.

:func:`class_indices` turns the table into detector class indices ``1..K`` (0 is the
background) for the training lesions, checking that the label set is not empty, that every
class has at least one example, and that the labels match the classes of a checkpoint (or are
mapped onto them with a class map).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..errors import LabError

__all__ = [
    "LabelsError",
    "SINGLE_CLASS",
    "BACKGROUND_LABELS",
    "IGNORE_LABELS",
    "read_labels_table",
    "labels_from_pseudo",
    "labels_from_store",
    "parse_class_map",
    "apply_class_map",
    "class_indices",
    "labels_hash",
]

#: The class name of the single-class detector.
SINGLE_CLASS = "lesion"

#: Labels that are not classes. A lesion marked "not a lesion" is dropped from the training
#: targets (its region is background); "unsure" and "unlabeled" lesions become ignore regions.
#: (The names are the label store's special labels, see ``deeplesion_lab.labels.taxonomy``.)
BACKGROUND_LABELS: frozenset[str] = frozenset({"not a lesion"})
IGNORE_LABELS: frozenset[str] = frozenset({"unsure", "unlabeled"})


class LabelsError(LabError, ValueError):
    """A labels table that cannot be used: missing, malformed, empty or inconsistent."""


def _check_table(df: pd.DataFrame, source: str, *, drop_missing: bool = False) -> pd.DataFrame:
    missing = [c for c in ("lesion_id", "label") if c not in df.columns]
    if missing:
        raise LabelsError(
            f"{source}: missing column(s) {', '.join(missing)}; a labels table has the columns "
            "lesion_id, label"
        )
    out = pd.DataFrame(
        {
            "lesion_id": df["lesion_id"].astype("string").str.strip(),
            "label": df["label"].astype("string").str.strip(),
        }
    )
    if drop_missing:
        out = out[out["label"].notna() & (out["label"] != "")]
    for col in ("lesion_id", "label"):
        bad = out[col].isna() | (out[col] == "")
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise LabelsError(
                f"{source}: row {i + 1} (lesion {out['lesion_id'].iloc[i]!s}), field {col}: empty "
                f"({int(bad.sum())} such rows)"
            )
    out = out.drop_duplicates()
    dup = out["lesion_id"].duplicated(keep=False)
    if dup.any():
        lid = out.loc[dup, "lesion_id"].iloc[0]
        labels = sorted(out.loc[out["lesion_id"] == lid, "label"])
        raise LabelsError(
            f"{source}: lesion {lid} has several labels ({', '.join(labels)}); "
            f"{int(out.loc[dup, 'lesion_id'].nunique())} lesions are labelled more than once"
        )
    if out.empty:
        raise LabelsError(f"{source}: the label set is empty (no lesion_id, label row)")
    return out.reset_index(drop=True)


def read_labels_table(path: str | Path) -> pd.DataFrame:
    """Read a labels table (``.parquet`` or ``.csv`` with ``lesion_id``, ``label``).

    Raises
    ------
    LabelsError
        Missing file or column, an empty id or label (the row is named), one lesion with two
        different labels, or no rows at all.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels table not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            raise LabelsError(f"{path}: a labels table is a .parquet or .csv file")
    except LabelsError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types
        raise LabelsError(f"{path}: cannot be read as a labels table ({exc})") from exc
    return _check_table(df, str(path))


def labels_from_pseudo(pseudo: pd.DataFrame, source: str = "pseudo_labels.parquet") -> pd.DataFrame:
    """The ``lesion_id, label`` table of a pseudo-labels frame (see ``RunDir.load_pseudo_labels``)."""
    return _check_table(pseudo, source)


def labels_from_store(
    db: str | Path,
    snapshot_id: str | int | None = None,
    *,
    user: str = "finetune",
    name: str | None = None,
    namespace: str | None = None,
) -> tuple[pd.DataFrame, str | int]:
    """Labels of a label-store snapshot; without ``snapshot_id``, take a new snapshot first.

    Parameters
    ----------
    db : str or pathlib.Path
        The store (``RUN_DIR/labels.sqlite`` or a ``postgresql://`` URL).
    snapshot_id : optional
        An existing snapshot.
    user, name : str
        Who takes the new snapshot, and its name.
    namespace : str, optional
        PostgreSQL schema of the store (default the store's default).

    Returns
    -------
    (pandas.DataFrame, snapshot id)
    """
    try:
        from ..labels import LabelStore  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LabelsError(
            "the label store (deeplesion_lab.labels) is not available; pass a labels table "
            "with --labels instead"
        ) from exc
    if not str(db).startswith("postgresql") and not Path(db).is_file():
        raise LabelsError(
            f"{db}: no label store; correct labels in the lab first, or pass --labels TABLE"
        )
    store = LabelStore.open(db, namespace=namespace)
    try:
        if snapshot_id is None:
            import time

            snapshot_id = store.snapshot(name or f"finetune {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                         user)
        df = store.snapshot_labels(snapshot_id)
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    return _check_table(df, f"{db} snapshot {snapshot_id}", drop_missing=True), snapshot_id


def parse_class_map(items: Iterable[str] | None) -> dict[str, str]:
    """``["lymph node=mediastinum", ...]`` -> ``{"lymph node": "mediastinum"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            src, sep, dst = part.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise LabelsError(f"class map entry {part!r}: expected LABEL=CLASS")
            out[src.strip()] = dst.strip()
    return out


def apply_class_map(labels: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
    """Rename labels through ``mapping`` (labels not in it are kept)."""
    if not mapping:
        return labels
    unused = sorted(set(mapping) - set(labels["label"]))
    if unused:
        raise LabelsError(
            f"class map names label(s) {', '.join(unused)} that no lesion has; known labels: "
            f"{', '.join(sorted(set(labels['label'])))}"
        )
    out = labels.copy()
    out["label"] = out["label"].map(lambda v: mapping.get(v, v)).astype("string")
    return out


def class_indices(
    lesion_ids: Sequence[str],
    labels: pd.DataFrame | None,
    classes: Sequence[str] | None = None,
    *,
    source: str = "labels",
) -> tuple[list[str], pd.Series]:
    """Detector classes and the class index (``1..K``) of each training lesion.

    Parameters
    ----------
    lesion_ids : sequence of str
        The training lesions.
    labels : pandas.DataFrame or None
        ``lesion_id, label``; ``None`` gives the single class ``"lesion"``.
    classes : sequence of str, optional
        Impose these classes (e.g. a checkpoint's) instead of the sorted labels present.
    source : str
        Named in error messages.

    Returns
    -------
    (list of str, pandas.Series)
        The class names (index ``i`` is class ``i + 1``), and per lesion id its class index:
        ``-1`` for a lesion without a label or with an :data:`IGNORE_LABELS` label (an ignore
        region in training), ``0`` for a :data:`BACKGROUND_LABELS` one (dropped: background).

    Raises
    ------
    LabelsError
        No training lesion labelled; a label that is not one of ``classes`` (with the
        labels and classes listed, and how to map them); a class with no training example.
    """
    ids = pd.Index(pd.array(list(lesion_ids), dtype="string"))
    if labels is None:
        cls = [SINGLE_CLASS] if classes is None else list(classes)
        if cls != [SINGLE_CLASS]:
            raise LabelsError(
                f"a single-class training cannot fill the classes {', '.join(cls)}; "
                "give labels or train a single-class detector"
            )
        return cls, pd.Series(1, index=ids, dtype="int64")
    lab = labels.set_index("lesion_id")["label"]
    present = lab.reindex(ids)
    special = present.isin(BACKGROUND_LABELS | IGNORE_LABELS).fillna(False).to_numpy(bool)
    background = present.isin(BACKGROUND_LABELS).fillna(False).to_numpy(bool)
    present = present.mask(special)
    n_labelled = int(present.notna().sum())
    if n_labelled == 0:
        n_known = int(ids.isin(lab.index).sum())
        raise LabelsError(
            f"{source}: the label set is empty for the {len(ids)} training lesions "
            f"({len(lab)} labels, {n_known} of them on training lesions)"
        )
    found = sorted(set(present.dropna()))
    if classes is None:
        cls = found
    else:
        cls = list(classes)
        unknown = sorted(set(found) - set(cls))
        if unknown:
            raise LabelsError(
                f"{source}: label(s) {', '.join(unknown)} are not classes of the model "
                f"({', '.join(cls)}); map them with --class-map LABEL=CLASS, or retrain the "
                "classification head with --reset-head"
            )
    counts = present.value_counts()
    empty = [c for c in cls if int(counts.get(c, 0)) == 0]
    if empty:
        raise LabelsError(
            f"{source}: class(es) {', '.join(empty)} have no training example among the "
            f"{len(ids)} training lesions; map them onto another class with --class-map, or "
            "drop them with --reset-head"
        )
    index = {c: i + 1 for i, c in enumerate(cls)}
    out = present.map(index).fillna(-1).astype("int64")
    out[background] = 0
    return cls, out


def labels_hash(labels: pd.DataFrame | None) -> str:
    """A short, order-independent content hash of a labels table (``"single"`` for none)."""
    if labels is None:
        return "single"
    part = labels[["lesion_id", "label"]].astype(str).sort_values("lesion_id")
    h = hashlib.sha1(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]
