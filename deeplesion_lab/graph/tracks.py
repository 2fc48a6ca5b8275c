"""Lesion tracks: one physical lesion followed through a patient's studies.

Matched pairs (:class:`~deeplesion_lab.graph.matching.LesionMatcher`) are joined into tracks,
strongest match first, with one rule: a track never holds two lesions of the same study (a
weaker match that would break it is left out). Every lesion of the table gets a row, so a
lesion seen once is a track of length one; lesions that could not be matched say why in
``status``.

Track table columns (one row per lesion, sorted by patient, track, study):

==================  ===========================================================================
track_id            ``P{patient:06d}-T{k:03d}``, numbered per patient by first appearance
patient_index       patient
lesion_id           manifest lesion id
study_index         the study (time point; DeepLesion numbers a patient's studies in order)
file_name           key image of the lesion in that study
time_point          1, 2, ... position of the study within the track
n_time_points       how many studies the track spans
long_diameter_mm    long RECIST diameter (px * spacing_x)
short_diameter_mm   short RECIST diameter
size_change         long diameter / long diameter at the track's first time point
match_score         best score of the matches joining it to an earlier time point of the
                    track (NaN at the first)
status              ``tracked`` (in a track of 2+), ``single`` (no match found),
                    ``single-study patient`` (nothing to match with), ``no embedding``
==================  ===========================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .lesion_table import GraphError

__all__ = ["build_tracks", "TRACK_COLUMNS"]

TRACK_COLUMNS: tuple[str, ...] = (
    "track_id",
    "patient_index",
    "lesion_id",
    "study_index",
    "file_name",
    "time_point",
    "n_time_points",
    "long_diameter_mm",
    "short_diameter_mm",
    "size_change",
    "match_score",
    "status",
)


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name in df.columns:
        return df[name].to_numpy(dtype=float)
    return np.full(len(df), np.nan)


def build_tracks(lesions: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Group lesions into tracks from matched pairs.

    Parameters
    ----------
    lesions : pandas.DataFrame
        The lesion table (:attr:`LesionTable.lesions <deeplesion_lab.graph.LesionTable>`):
        ``lesion_id``, ``patient_index``, ``study_index``, ``file_name``,
        ``long_diameter_mm``, ``short_diameter_mm``; ``has_embedding`` when present.
    pairs : pandas.DataFrame
        :meth:`LesionMatcher.predict` output over the same table (``a``, ``b`` are row
        positions in ``lesions``), with ``match`` and ``score``.

    Returns
    -------
    pandas.DataFrame
        :data:`TRACK_COLUMNS`, one row per lesion.
    """
    n = len(lesions)
    for c in ("lesion_id", "patient_index", "study_index", "file_name"):
        if c not in lesions.columns:
            raise GraphError(f"lesion table: missing column {c}")
    m = pairs.loc[pairs["match"].to_numpy(dtype=bool)] if len(pairs) else pairs
    a_all = m["a"].to_numpy(dtype=np.int64) if len(m) else np.zeros(0, np.int64)
    if len(a_all) and (max(a_all.max(), m["b"].max()) >= n):
        raise GraphError("tracks: pair rows point past the lesion table (another table's pairs?)")
    study = lesions["study_index"].to_numpy(dtype=np.int64)
    patient = lesions["patient_index"].to_numpy(dtype=np.int64)

    # union-find over lesions; each root keeps the set of studies in its component
    parent = np.arange(n)
    studies: dict[int, set[int]] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    link_score = np.full(n, np.nan)
    if len(m):
        order = np.argsort(-m["score"].to_numpy(dtype=float), kind="stable")
        aa, bb = m["a"].to_numpy()[order], m["b"].to_numpy()[order]
        ss = m["score"].to_numpy(dtype=float)[order]
        for a, b, s in zip(aa.tolist(), bb.tolist(), ss.tolist(), strict=True):
            ra, rb = root(a), root(b)
            if ra == rb:
                continue
            sa = studies.get(ra, {int(study[ra])})
            sb = studies.get(rb, {int(study[rb])})
            if sa & sb:
                continue  # would put two lesions of one study in one track
            parent[rb] = ra
            studies[ra] = sa | sb
            studies.pop(rb, None)
            # the later lesion of the pair remembers the score of its link
            later = b if study[b] > study[a] else a
            link_score[later] = s if np.isnan(link_score[later]) else max(link_score[later], s)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)

    out = pd.DataFrame(
        {
            "patient_index": patient,
            "lesion_id": lesions["lesion_id"].astype("string").to_numpy(),
            "study_index": study,
            "file_name": lesions["file_name"].astype("string").to_numpy(),
            "long_diameter_mm": _column(lesions, "long_diameter_mm"),
            "short_diameter_mm": _column(lesions, "short_diameter_mm"),
            "_root": roots,
        }
    )
    out = out.sort_values(["patient_index", "study_index", "lesion_id"], kind="stable")
    # number tracks per patient by first appearance
    first = out.drop_duplicates("_root")[["patient_index", "_root"]].copy()
    first["k"] = first.groupby("patient_index").cumcount() + 1
    kmap = dict(zip(first["_root"].to_numpy(), first["k"].to_numpy(), strict=True))
    out["track_id"] = pd.array(
        [f"P{p:06d}-T{kmap[r]:03d}" for p, r in zip(out["patient_index"], out["_root"], strict=True)],
        dtype="string",
    )
    out = out.sort_values(["patient_index", "track_id", "study_index"], kind="stable")
    out["time_point"] = out.groupby("track_id").cumcount() + 1
    out["n_time_points"] = out.groupby("track_id")["study_index"].transform("size")
    first_size = out.groupby("track_id")["long_diameter_mm"].transform("first")
    with np.errstate(invalid="ignore", divide="ignore"):
        out["size_change"] = out["long_diameter_mm"] / first_size
    out["match_score"] = link_score[out.index.to_numpy()]
    out.loc[out["time_point"] == 1, "match_score"] = np.nan

    n_studies = pd.Series(study).groupby(patient).nunique()
    single_study = n_studies.reindex(out["patient_index"]).to_numpy() < 2
    has_emb = (
        lesions["has_embedding"].to_numpy(dtype=bool)[out.index.to_numpy()]
        if "has_embedding" in lesions.columns
        else np.ones(len(out), bool)
    )
    status = np.where(out["n_time_points"].to_numpy() > 1, "tracked", "single").astype(object)
    status[single_study] = "single-study patient"
    status[~has_emb] = "no embedding"
    out["status"] = pd.array(status, dtype="string")
    return out[list(TRACK_COLUMNS)].reset_index(drop=True)
