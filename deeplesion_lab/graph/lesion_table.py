"""The lesion table the graph steps share: manifest rows joined to their embeddings.

Every graph step (similarity edges, cross-study matching, tracks, missing-annotation ranking)
reads the same thing: one row per lesion with its patient, study, normalized location, size in
millimetres, and an embedding vector, or none. :func:`lesion_table` builds it and says how many
lesions have no embedding (they stay in the table, flagged, and are never dropped silently).

Embeddings are compared by cosine distance, so the vectors are L2-normalized here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import LabError

__all__ = [
    "GraphError",
    "LesionTable",
    "lesion_table",
    "embedding_columns",
    "normalize_rows",
    "REQUIRED_COLUMNS",
]

#: Manifest columns the graph steps need.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "lesion_id",
    "file_name",
    "patient_index",
    "study_index",
    "location_x",
    "location_y",
    "location_z",
    "long_diameter_px",
)


class GraphError(LabError, ValueError):
    """Inputs to the lesion graph, matching or mining are missing or inconsistent."""


def embedding_columns(df: pd.DataFrame) -> list[str]:
    """The embedding columns ``e0..e{d-1}`` of a table, in numeric order."""
    cols = [c for c in df.columns if isinstance(c, str) and c[:1] == "e" and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize each row (float32); all-zero or non-finite rows become NaN."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    bad = ~np.isfinite(norms) | (norms == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = v / np.where(bad, 1.0, norms)
    out[bad[:, 0]] = np.nan
    return out


@dataclass
class LesionTable:
    """Lesions with their (normalized) embeddings.

    Attributes
    ----------
    lesions : pandas.DataFrame
        The manifest rows (all of them, manifest order, fresh 0..n-1 index) plus
        ``long_diameter_mm``, ``short_diameter_mm`` and ``has_embedding``.
    vectors : numpy.ndarray
        ``(n, d)`` float32, L2-normalized; rows of lesions without an embedding are NaN.
    n_unknown_embeddings : int
        Embedding rows whose lesion id is not in the manifest (ignored).
    messages : list of str
        What could not be used, in words (for the command's output).
    """

    lesions: pd.DataFrame
    vectors: np.ndarray
    n_unknown_embeddings: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def has_embedding(self) -> np.ndarray:
        return self.lesions["has_embedding"].to_numpy(dtype=bool)

    @property
    def n_without_embedding(self) -> int:
        return int((~self.has_embedding).sum())

    def frame(self) -> pd.DataFrame:
        """Lesions and vectors as one DataFrame (``e0..`` columns): the matcher's ``X``."""
        emb = pd.DataFrame(
            self.vectors, columns=[f"e{i}" for i in range(self.vectors.shape[1])],
            index=self.lesions.index,
        )
        return pd.concat([self.lesions, emb], axis=1)


def _check_columns(df: pd.DataFrame, required: tuple[str, ...], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise GraphError(f"{what}: missing column(s) {', '.join(missing)}")


def lesion_table(
    manifest: pd.DataFrame,
    lesion_ids: np.ndarray | list | None,
    vectors: np.ndarray | None,
    *,
    source: str = "embeddings",
) -> LesionTable:
    """Join manifest lesions to their embeddings.

    Parameters
    ----------
    manifest : pandas.DataFrame
        A manifest (:func:`deeplesion_lab.manifest.read_manifest`); needs
        :data:`REQUIRED_COLUMNS`; ``spacing_x`` and ``short_diameter_px`` are used when present.
    lesion_ids, vectors : array-like
        The embeddings (:meth:`deeplesion_lab.run.RunDir.load_embeddings`). ``None`` means no
        embeddings at all: every lesion is kept, without a vector.
    source : str
        Name of the embeddings' origin, used in messages.

    Returns
    -------
    LesionTable

    Raises
    ------
    GraphError
        Missing columns, duplicate lesion ids, or ids and vectors of different lengths.
    """
    _check_columns(manifest, REQUIRED_COLUMNS, "manifest")
    les = manifest.reset_index(drop=True).copy()
    dup = les["lesion_id"].duplicated()
    if dup.any():
        raise GraphError(
            f"manifest: lesion_id {les.loc[dup, 'lesion_id'].iloc[0]!r} appears more than once"
        )
    spacing = (
        pd.to_numeric(les["spacing_x"], errors="coerce").to_numpy(dtype=float)
        if "spacing_x" in les.columns
        else np.full(len(les), np.nan)
    )
    spacing = np.where(np.isfinite(spacing) & (spacing > 0), spacing, 1.0)
    les["long_diameter_mm"] = les["long_diameter_px"].to_numpy(dtype=float) * spacing
    short = (
        les["short_diameter_px"].to_numpy(dtype=float)
        if "short_diameter_px" in les.columns
        else np.full(len(les), np.nan)
    )
    les["short_diameter_mm"] = short * spacing
    messages: list[str] = []

    if lesion_ids is None or vectors is None:
        les["has_embedding"] = False
        messages.append(f"{source}: none given; all {len(les)} lesions lack an embedding")
        return LesionTable(les, np.full((len(les), 1), np.nan, np.float32), 0, messages)

    ids = np.asarray(lesion_ids, dtype=object)
    vec = np.asarray(vectors, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[1] == 0:
        raise GraphError(f"{source}: expected a 2-D array of vectors, got shape {vec.shape}")
    if len(ids) != len(vec):
        raise GraphError(f"{source}: {len(ids)} lesion ids but {len(vec)} vectors")
    id_series = pd.Series(ids)
    dup = id_series.duplicated()
    if dup.any():
        raise GraphError(
            f"{source}: lesion_id {id_series[dup].iloc[0]!r} has more than one embedding"
        )
    pos = pd.Index(ids).get_indexer(les["lesion_id"].astype(object).to_numpy())
    out = np.full((len(les), vec.shape[1]), np.nan, dtype=np.float32)
    found = pos >= 0
    out[found] = normalize_rows(vec[pos[found]])
    has = found & np.isfinite(out).all(axis=1)
    n_bad = int((found & ~has).sum())
    n_missing = int((~found).sum())
    les["has_embedding"] = has
    n_unknown = int(len(ids) - found.sum())
    if n_missing:
        ex = les.loc[~found, "lesion_id"].iloc[0]
        messages.append(
            f"{source}: {n_missing} of {len(les)} lesions have no embedding (e.g. {ex}); "
            "they stay in the graph as unconnected nodes and are not matched"
        )
    if n_bad:
        ex = les.loc[found & ~has, "lesion_id"].iloc[0]
        messages.append(
            f"{source}: {n_bad} embeddings are all-zero or not finite (e.g. {ex}); "
            "those lesions are treated as having no embedding"
        )
    if n_unknown:
        messages.append(
            f"{source}: {n_unknown} embeddings belong to lesion ids not in the manifest; ignored"
        )
    return LesionTable(les, out, n_unknown, messages)
