"""Lesion tracks and the truth file, on hand-made tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deeplesion_lab.graph import GraphError, build_tracks
from deeplesion_lab.graph.tracks import TRACK_COLUMNS
from deeplesion_lab.graph.truth import TRUTH_COLUMNS, read_truth, track_ids_for


def _lesions() -> pd.DataFrame:
    # patient 1: lesion A in studies 1, 2, 3 (a, b, c) and B in studies 1, 2 (d, e);
    # patient 2: one study only (f)
    rows = [("a", 1, 1, 10.0), ("d", 1, 1, 8.0), ("b", 1, 2, 12.0), ("e", 1, 2, 4.0),
            ("c", 1, 3, 15.0), ("f", 2, 1, 9.0)]
    return pd.DataFrame({
        "lesion_id": [r[0] for r in rows], "patient_index": [r[1] for r in rows],
        "study_index": [r[2] for r in rows],
        "file_name": [f"{r[1]:06d}_{r[2]:02d}_01_010.png" for r in rows],
        "long_diameter_mm": [r[3] for r in rows], "short_diameter_mm": [r[3] / 2 for r in rows],
    })


def _pairs(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["a", "b", "score", "match"])


def test_matched_pairs_become_tracks():
    les = _lesions()
    # a-b, b-c (lesion A), d-e (lesion B); a-e is a weak wrong match that would put d and a
    # (both study 1) into one track: it is left out; d-c is not a match at all
    pairs = _pairs([(0, 2, 0.9, True), (2, 4, 0.8, True), (1, 3, 0.7, True), (0, 3, 0.6, True),
                    (1, 4, 0.95, False)])
    tr = build_tracks(les, pairs)
    assert list(tr.columns) == list(TRACK_COLUMNS) and len(tr) == len(les)
    t = tr.set_index("lesion_id")
    assert t.loc["a", "track_id"] == t.loc["b", "track_id"] == t.loc["c", "track_id"] \
        == "P000001-T001"
    assert t.loc["d", "track_id"] == t.loc["e", "track_id"] == "P000001-T002"
    assert t.loc[["a", "b", "c"], "time_point"].tolist() == [1, 2, 3]
    assert (t.loc[["a", "b", "c"], "n_time_points"] == 3).all()
    assert t.loc[["a", "b", "c"], "size_change"].tolist() == pytest.approx([1.0, 1.2, 1.5])
    assert np.isnan(t.loc["a", "match_score"]) and t.loc["b", "match_score"] == 0.9
    assert t.loc["c", "match_score"] == 0.8 and t.loc["e", "match_score"] == 0.7
    assert (t.loc[["a", "b", "c", "d", "e"], "status"] == "tracked").all()
    assert t.loc["f", "status"] == "single-study patient" and t.loc["f", "n_time_points"] == 1


def test_unmatched_and_unembedded_lesions_say_why():
    les = _lesions().assign(has_embedding=[True, True, True, False, True, True])
    tr = build_tracks(les, _pairs([(0, 2, 0.9, True)])).set_index("lesion_id")
    assert tr.loc["c", "status"] == "single" and tr.loc["e", "status"] == "no embedding"
    assert tr["track_id"].nunique() == 5  # a+b, c, d, e, f
    assert build_tracks(les, _pairs([]))["track_id"].nunique() == len(les)


def test_bad_tables_are_clear_errors():
    with pytest.raises(GraphError, match="missing column study_index"):
        build_tracks(_lesions().drop(columns="study_index"), _pairs([]))
    with pytest.raises(GraphError, match="past the lesion table"):
        build_tracks(_lesions(), _pairs([(0, 17, 0.9, True)]))


def _truth(tmp_path, **change) -> pd.DataFrame:
    t = pd.DataFrame({
        "track_id": ["T1", "T1", "T2", "T3"], "patient_index": [1, 1, 1, 1],
        "study_index": [1, 2, 1, 1], "file_name": ["x.png"] * 4,
        "bbox_x1": [1.0, 2, 3, 4], "bbox_y1": [1.0, 2, 3, 4], "bbox_x2": [9.0, 9, 9, 9],
        "bbox_y2": [9.0, 9, 9, 9], "annotated": [True, True, True, False],
        "lesion_id": ["L1", "L2", "L3", None],
    })
    for k, v in change.items():
        t[k] = v
    return t


def test_read_truth_and_track_ids(tmp_path):
    p = tmp_path / "truth.parquet"
    _truth(tmp_path).to_parquet(p)
    t = read_truth(p)
    assert set(TRUTH_COLUMNS) <= set(t.columns) and t.attrs["source"] == str(p)
    ids = track_ids_for(pd.Series(["L2", "nope", "L1", "L3"]), t)
    assert ids.tolist() == ["T1", None, "T1", "T2"]
    csv = tmp_path / "truth.csv"
    _truth(tmp_path).to_csv(csv, index=False)
    assert read_truth(csv)["bbox_x1"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_bad_truth_files_name_file_row_and_field(tmp_path):
    with pytest.raises(GraphError, match="truth file not found"):
        read_truth(tmp_path / "none.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(GraphError, match="cannot be read"):
        read_truth(bad)
    p = tmp_path / "t.csv"
    _truth(tmp_path).drop(columns="track_id").to_csv(p, index=False)
    with pytest.raises(GraphError, match="missing column.*track_id"):
        read_truth(p)
    _truth(tmp_path, lesion_id=["L1", None, "L3", None]).to_csv(p, index=False)
    with pytest.raises(GraphError, match=r"t\.csv: row 1, field lesion_id"):
        read_truth(p)
    _truth(tmp_path, bbox_y2=[9, 9, "wide", 9]).to_csv(p, index=False)
    with pytest.raises(GraphError, match=r"row 2, field bbox_y2: 'wide' is not a number"):
        read_truth(p)
