"""The truth file of the demo data (``truth.parquet``), as the graph steps read it.

Written by :func:`deeplesion_lab.demo.generate_demo`: one row per lesion instance per study,
annotated or not. The graph steps use ``track_id`` (identity of a physical lesion across a
patient's studies, for the matching) and the unannotated rows' boxes on their key image (for
the missing-annotation evaluation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .lesion_table import GraphError

__all__ = ["TRUTH_COLUMNS", "read_truth", "track_ids_for"]

#: Columns the graph steps need from a truth file.
TRUTH_COLUMNS: tuple[str, ...] = (
    "track_id",
    "patient_index",
    "study_index",
    "file_name",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "annotated",
    "lesion_id",
)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read and check a truth file (parquet or CSV).

    Raises
    ------
    GraphError
        Missing file, unreadable file, missing column, or an annotated row without lesion id.
    """
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: truth file not found")
    try:
        df = pd.read_parquet(path) if path.suffix != ".csv" else pd.read_csv(path)
    except Exception as exc:  # pyarrow raises several kinds
        raise GraphError(f"{path}: cannot be read as a truth table ({exc})") from exc
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise GraphError(f"{path}: missing column(s) {', '.join(missing)} in the truth file")
    df = df.copy()
    df["annotated"] = df["annotated"].astype(bool)
    bad = df["annotated"] & df["lesion_id"].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise GraphError(
            f"{path}: row {i}, field lesion_id: empty on an annotated lesion "
            f"({int(bad.sum())} such rows)"
        )
    for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
        num = pd.to_numeric(df[c], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise GraphError(f"{path}: row {i}, field {c}: {df[c].iloc[i]!r} is not a number")
        df[c] = num.astype(float)
    df.attrs["source"] = str(path)
    return df


def track_ids_for(lesion_ids: pd.Series | np.ndarray, truth: pd.DataFrame) -> np.ndarray:
    """The truth ``track_id`` of each lesion id (object array, None where not in the truth)."""
    ann = truth.loc[truth["annotated"] & truth["lesion_id"].notna(), ["lesion_id", "track_id"]]
    ann = ann.drop_duplicates("lesion_id")
    m = pd.Series(ann["track_id"].astype(str).to_numpy(), index=ann["lesion_id"].astype(str))
    out = m.reindex(pd.Index(np.asarray(lesion_ids, dtype=object).astype(str))).to_numpy(
        dtype=object
    )
    return np.where(pd.isna(out), None, out)
