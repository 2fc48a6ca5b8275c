"""The lesion table of the graph: manifest rows joined to their normalised embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deeplesion_lab.graph.lesion_table import (
    GraphError,
    embedding_columns,
    lesion_table,
    normalize_rows,
)


def _manifest(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({
        "lesion_id": [f"L{i}" for i in range(n)], "file_name": [f"f{i}.png" for i in range(n)],
        "patient_index": [1] * n, "study_index": list(range(1, n + 1)),
        "location_x": [0.5] * n, "location_y": [0.5] * n, "location_z": [0.5] * n,
        "long_diameter_px": [10.0 * (i + 1) for i in range(n)],
        "short_diameter_px": [5.0] * n, "spacing_x": [0.5, 0.8, 0.0, np.nan][:n],
    }, index=[10, 11, 12, 13][:n])


def test_embedding_columns_in_numeric_order():
    df = pd.DataFrame(columns=["lesion_id", "e10", "e2", "e0", "e1", "extra", "ex", 3])
    assert embedding_columns(df) == ["e0", "e1", "e2", "e10"]


def test_normalize_rows_marks_unusable_rows_nan():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0], [np.inf, 1.0], [-2.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(out[3], [-1.0, 0.0])
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()


def test_join_keeps_every_manifest_lesion_and_says_what_is_missing():
    man = _manifest()
    # L0 and L3 embedded, L1 all-zero, L2 absent; X9 is not in the manifest
    ids = ["L3", "L1", "X9", "L0"]
    vec = np.array([[0.0, 2.0], [0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    t = lesion_table(man, ids, vec)
    assert t.lesions.index.tolist() == [0, 1, 2, 3]
    assert t.lesions["lesion_id"].tolist() == ["L0", "L1", "L2", "L3"]
    assert t.has_embedding.tolist() == [True, False, False, True]
    assert t.n_without_embedding == 2 and t.n_unknown_embeddings == 1
    np.testing.assert_allclose(t.vectors[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(t.vectors[3], [0.0, 1.0])
    assert np.isnan(t.vectors[1]).all() and np.isnan(t.vectors[2]).all()
    text = " ".join(t.messages)
    assert "1 of 4 lesions have no embedding (e.g. L2)" in text
    assert "1 embeddings are all-zero or not finite (e.g. L1)" in text
    assert "1 embeddings belong to lesion ids not in the manifest" in text
    # diameters in mm: spacing where it is a positive number, else 1 mm per pixel
    assert t.lesions["long_diameter_mm"].tolist() == pytest.approx([5.0, 16.0, 30.0, 40.0])
    assert t.lesions["short_diameter_mm"].tolist() == pytest.approx([2.5, 4.0, 5.0, 5.0])
    frame = t.frame()
    assert embedding_columns(frame) == ["e0", "e1"] and len(frame) == 4


def test_no_embeddings_at_all():
    t = lesion_table(_manifest(), None, None, source="run/embeddings.parquet")
    assert not t.has_embedding.any() and t.vectors.shape == (4, 1)
    assert t.messages == ["run/embeddings.parquet: none given; all 4 lesions lack an embedding"]


def test_bad_inputs_are_clear_errors():
    man = _manifest()
    with pytest.raises(GraphError, match="appears more than once"):
        lesion_table(pd.concat([man, man.iloc[:1]]), None, None)
    with pytest.raises(GraphError, match="missing column"):
        lesion_table(man.drop(columns="long_diameter_px"), None, None)
    with pytest.raises(GraphError, match="more than one embedding"):
        lesion_table(man, ["L0", "L0"], np.ones((2, 3)))
    with pytest.raises(GraphError, match="2-D array"):
        lesion_table(man, ["L0"], np.ones(3))
