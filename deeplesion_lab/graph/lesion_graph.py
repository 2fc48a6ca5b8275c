"""The lesion graph: lesions as nodes, similar or identical lesions joined by edges.

Nodes are the annotated lesions of the manifest and, when a detector was run, the detected
candidates (unannotated lesion proposals). Edges, stored once per unordered node pair:

- ``similar``: one node is among the other's ``n_neighbors`` nearest neighbours in embedding
  space (cosine distance), over all nodes of all patients: the retrieval graph of Yan et al.
  (CVPR 2018);
- ``same_lesion``: the two lesions were matched across studies of one patient
  (:class:`~deeplesion_lab.graph.matching.LesionMatcher`), with ``match_score``;
- ``candidate``: a detected candidate and the most similar annotated lesion of its patient.

``distance`` is always the cosine distance of the two embeddings (NaN when one is missing).
Saved as ``nodes.parquet`` and ``edges.parquet`` in a folder (``RUN_DIR/graph``);
:meth:`LesionGraph.to_networkx` gives a :class:`networkx.Graph` with the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_parquet
from .lesion_table import GraphError, LesionTable, normalize_rows

__all__ = ["LesionGraph", "build_lesion_graph", "NODE_COLUMNS", "EDGE_COLUMNS"]

NODE_COLUMNS: tuple[str, ...] = (
    "node_id",
    "kind",
    "patient_index",
    "study_index",
    "file_name",
    "x1",
    "y1",
    "x2",
    "y2",
    "long_diameter_mm",
    "coarse_type",
    "track_id",
    "detector_score",
    "has_embedding",
)
EDGE_COLUMNS: tuple[str, ...] = (
    "source",
    "target",
    "distance",
    "similar",
    "same_lesion",
    "match_score",
    "candidate",
)


@dataclass
class LesionGraph:
    """Nodes and edges of the lesion graph (see the module docstring for the columns)."""

    nodes: pd.DataFrame
    edges: pd.DataFrame

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``nodes.parquet`` and ``edges.parquet`` into ``folder`` (atomically each)."""
        folder = Path(folder)
        return {
            "nodes": write_parquet(self.nodes, folder / "nodes.parquet"),
            "edges": write_parquet(self.edges, folder / "edges.parquet"),
        }

    @classmethod
    def load(cls, folder: str | Path) -> LesionGraph:
        """Read a graph saved by :meth:`save`."""
        folder = Path(folder)
        parts = {}
        for name in ("nodes", "edges"):
            path = folder / f"{name}.parquet"
            if not path.is_file():
                raise GraphError(
                    f"{path} not found; build the graph with `deeplesion-lab graph --run RUN_DIR`"
                )
            parts[name] = pd.read_parquet(path)
        return cls(parts["nodes"], parts["edges"])

    def to_networkx(self):
        """A :class:`networkx.Graph`: node attributes from ``nodes``, edge attributes from
        ``edges`` (``distance``, ``similar``, ``same_lesion``, ``match_score``, ``candidate``)."""
        import networkx as nx

        g = nx.Graph()
        attrs = self.nodes.drop(columns=["node_id"]).to_dict("records")
        g.add_nodes_from(zip(self.nodes["node_id"].tolist(), attrs, strict=True))
        e = self.edges
        eattrs = e.drop(columns=["source", "target"]).to_dict("records")
        g.add_edges_from(
            zip(e["source"].tolist(), e["target"].tolist(), eattrs, strict=True)
        )
        return g

    def neighbors(self, node_id: str, relation: str | None = None) -> pd.DataFrame:
        """Edges touching ``node_id`` (optionally only one relation), nearest first, with the
        other end in ``neighbor``."""
        e = self.edges
        hit = (e["source"] == node_id) | (e["target"] == node_id)
        if relation is not None:
            if relation not in ("similar", "same_lesion", "candidate"):
                raise GraphError(f"unknown relation {relation!r}")
            hit &= e[relation]
        out = e.loc[hit].copy()
        out.insert(
            0, "neighbor", np.where(out["source"] == node_id, out["target"], out["source"])
        )
        return out.sort_values("distance", na_position="last").reset_index(drop=True)

    def summary(self) -> str:
        """One line: node and edge counts by kind."""
        kinds = self.nodes["kind"].value_counts()
        e = self.edges
        return (
            f"{len(self.nodes)} nodes ({int(kinds.get('annotated', 0))} annotated, "
            f"{int(kinds.get('detected', 0))} detected), {len(e)} edges "
            f"({int(e['similar'].sum())} similar, {int(e['same_lesion'].sum())} same-lesion, "
            f"{int(e['candidate'].sum())} candidate)"
        )


def _annotated_nodes(table: LesionTable, tracks: pd.DataFrame | None) -> pd.DataFrame:
    les = table.lesions
    n = len(les)

    def col(name: str, dtype=float) -> np.ndarray:
        if name in les.columns:
            return les[name].to_numpy(dtype=dtype, na_value=np.nan if dtype is float else -1)
        return np.full(n, np.nan if dtype is float else -1, dtype=dtype)

    nodes = pd.DataFrame(
        {
            "node_id": les["lesion_id"].astype("string").to_numpy(),
            "kind": pd.array(["annotated"] * n, dtype="string"),
            "patient_index": les["patient_index"].to_numpy(dtype=np.int64),
            "study_index": les["study_index"].to_numpy(dtype=np.int64),
            "file_name": les["file_name"].astype("string").to_numpy(),
            "x1": col("bbox_x1"),
            "y1": col("bbox_y1"),
            "x2": col("bbox_x2"),
            "y2": col("bbox_y2"),
            "long_diameter_mm": les["long_diameter_mm"].to_numpy(dtype=float),
            "coarse_type": col("coarse_type", np.int64),
            "track_id": pd.array([None] * n, dtype="string"),
            "detector_score": np.full(n, np.nan),
            "has_embedding": table.has_embedding,
        }
    )
    if tracks is not None and len(tracks):
        tmap = pd.Series(tracks["track_id"].to_numpy(), index=tracks["lesion_id"].to_numpy())
        nodes["track_id"] = pd.array(
            tmap.reindex(nodes["node_id"].to_numpy()).to_numpy(), dtype="string"
        )
    return nodes


def _candidate_nodes(candidates: pd.DataFrame, has: np.ndarray) -> pd.DataFrame:
    need = ["proposal_id", "patient_index", "study_index", "file_name", "x1", "y1", "x2", "y2",
            "score"]
    missing = [c for c in need if c not in candidates.columns]
    if missing:
        raise GraphError(f"candidates: missing column(s) {', '.join(missing)}")
    n = len(candidates)
    return pd.DataFrame(
        {
            "node_id": candidates["proposal_id"].astype("string").to_numpy(),
            "kind": pd.array(["detected"] * n, dtype="string"),
            "patient_index": candidates["patient_index"].to_numpy(dtype=np.int64),
            "study_index": candidates["study_index"].to_numpy(dtype=np.int64),
            "file_name": candidates["file_name"].astype("string").to_numpy(),
            "x1": candidates["x1"].to_numpy(dtype=float),
            "y1": candidates["y1"].to_numpy(dtype=float),
            "x2": candidates["x2"].to_numpy(dtype=float),
            "y2": candidates["y2"].to_numpy(dtype=float),
            "long_diameter_mm": np.full(n, np.nan),
            "coarse_type": np.full(n, -1, dtype=np.int64),
            "track_id": pd.array([None] * n, dtype="string"),
            "detector_score": candidates["score"].to_numpy(dtype=float),
            "has_embedding": has,
        }
    )


def build_lesion_graph(
    table: LesionTable,
    *,
    n_neighbors: int = 10,
    pairs: pd.DataFrame | None = None,
    tracks: pd.DataFrame | None = None,
    candidates: pd.DataFrame | None = None,
    candidate_vectors: np.ndarray | None = None,
) -> LesionGraph:
    """Build the lesion graph.

    Parameters
    ----------
    table : LesionTable
        Annotated lesions and their embeddings.
    n_neighbors : int, default 10
        Nearest neighbours per node for the ``similar`` edges (0: none).
    pairs : pandas.DataFrame, optional
        :meth:`LesionMatcher.predict` output over ``table``; matched pairs become
        ``same_lesion`` edges.
    tracks : pandas.DataFrame, optional
        :func:`~deeplesion_lab.graph.tracks.build_tracks` output, for the nodes' ``track_id``.
    candidates : pandas.DataFrame, optional
        Detected candidates (:func:`~deeplesion_lab.graph.missing.propose_missing` output):
        ``proposal_id``, ``patient_index``, ``study_index``, ``file_name``, ``x1..y2``,
        ``score`` (the detector's).
    candidate_vectors : numpy.ndarray, optional
        ``(len(candidates), d)`` embeddings of the candidates (NaN rows: none).
    """
    if n_neighbors < 0:
        raise GraphError(f"n_neighbors must be >= 0, got {n_neighbors}")
    nodes = [_annotated_nodes(table, tracks)]
    vecs = [table.vectors]
    if candidates is not None and len(candidates):
        if candidate_vectors is None:
            cv = np.full((len(candidates), table.vectors.shape[1]), np.nan, np.float32)
        else:
            cv = normalize_rows(candidate_vectors)
            if cv.shape != (len(candidates), table.vectors.shape[1]):
                raise GraphError(
                    f"candidate_vectors: shape {cv.shape}, expected "
                    f"({len(candidates)}, {table.vectors.shape[1]})"
                )
        has = np.isfinite(cv).all(axis=1)
        nodes.append(_candidate_nodes(candidates, has))
        vecs.append(cv)
    node_df = pd.concat(nodes, ignore_index=True)
    dup = node_df["node_id"].duplicated()
    if dup.any():
        raise GraphError(f"graph: node id {node_df.loc[dup, 'node_id'].iloc[0]!r} is not unique")
    V = np.vstack(vecs).astype(np.float32)
    has = node_df["has_embedding"].to_numpy(dtype=bool)
    ids = node_df["node_id"].to_numpy(dtype=object)
    parts: list[pd.DataFrame] = []

    # similar: kNN over every node with an embedding
    idx = np.flatnonzero(has)
    k = min(n_neighbors, len(idx) - 1)
    if k > 0:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k + 1).fit(V[idx])
        dist, nbr = nn.kneighbors(V[idx])
        src = np.repeat(idx, k + 1)
        dst = idx[nbr.ravel()]
        d = (dist.ravel() ** 2) / 2.0  # euclidean on unit vectors -> cosine distance
        keep = src != dst
        parts.append(_edge_part(src[keep], dst[keep], d[keep], similar=True))

    # same_lesion: matched cross-study pairs (row positions a, b are node positions too)
    if pairs is not None and len(pairs) and "match" in pairs.columns:
        m = pairs.loc[pairs["match"].to_numpy(dtype=bool)]
        parts.append(
            _edge_part(
                m["a"].to_numpy(), m["b"].to_numpy(), m["embedding_distance"].to_numpy(),
                same_lesion=True, match_score=m["score"].to_numpy(dtype=float),
            )
        )

    # candidate: each detected candidate -> nearest annotated lesion of its patient
    n_ann = len(nodes[0])
    if len(node_df) > n_ann:
        parts.append(_candidate_edges(node_df, V, n_ann))

    edges = _merge_edges(parts, ids)
    return LesionGraph(node_df, edges)


def _edge_part(src, dst, dist, *, similar=False, same_lesion=False, match_score=None,
               candidate=False) -> pd.DataFrame:
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    n = len(src)
    return pd.DataFrame(
        {
            "u": np.minimum(src, dst),
            "v": np.maximum(src, dst),
            "distance": np.asarray(dist, dtype=float),
            "similar": np.full(n, similar),
            "same_lesion": np.full(n, same_lesion),
            "match_score": np.full(n, np.nan) if match_score is None else match_score,
            "candidate": np.full(n, candidate),
        }
    )


def _candidate_edges(node_df: pd.DataFrame, V: np.ndarray, n_ann: int) -> pd.DataFrame:
    has = node_df["has_embedding"].to_numpy(dtype=bool)
    patient = node_df["patient_index"].to_numpy()
    src, dst, dist = [], [], []
    ann = pd.Series(np.arange(n_ann)[has[:n_ann]]).groupby(patient[:n_ann][has[:n_ann]])
    groups = {p: g.to_numpy() for p, g in ann}
    for i in np.flatnonzero(has[n_ann:]) + n_ann:
        cand = groups.get(patient[i])
        if cand is None:
            continue
        d = 1.0 - V[cand] @ V[i]
        j = int(np.argmin(d))
        src.append(i)
        dst.append(cand[j])
        dist.append(float(d[j]))
    return _edge_part(src, dst, np.clip(dist, 0, 2), candidate=True)


def _merge_edges(parts: list[pd.DataFrame], ids: np.ndarray) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(
            {
                "source": pd.array([], dtype="string"),
                "target": pd.array([], dtype="string"),
                "distance": np.zeros(0),
                "similar": np.zeros(0, bool),
                "same_lesion": np.zeros(0, bool),
                "match_score": np.zeros(0),
                "candidate": np.zeros(0, bool),
            }
        )
    e = pd.concat(parts, ignore_index=True)
    e = e.groupby(["u", "v"], sort=True, as_index=False).agg(
        distance=("distance", "min"),
        similar=("similar", "any"),
        same_lesion=("same_lesion", "any"),
        match_score=("match_score", "max"),
        candidate=("candidate", "any"),
    )
    e.insert(0, "source", pd.array(ids[e["u"].to_numpy()], dtype="string"))
    e.insert(1, "target", pd.array(ids[e["v"].to_numpy()], dtype="string"))
    e["distance"] = e["distance"].clip(lower=0.0)
    return e.drop(columns=["u", "v"])[list(EDGE_COLUMNS)].reset_index(drop=True)
