"""Typing detections with the lesion embedder (``deeplesion_lab.detection.typer``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from embedding_fixtures import session_run

from deeplesion_lab.detection.typer import (
    EmbeddingTyper,
    body_box,
    detection_rows,
    type_predictions,
)
from deeplesion_lab.errors import LabError
from deeplesion_lab.run import RunDir

torch.set_num_threads(1)


def _boxes_as_predictions(m: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"file_name": m["file_name"].to_numpy(),
                         "x1": m["bbox_x1"].to_numpy(), "y1": m["bbox_y1"].to_numpy(),
                         "x2": m["bbox_x2"].to_numpy(), "y2": m["bbox_y2"].to_numpy(),
                         "score": np.linspace(1.0, 0.5, len(m)), "label": "lesion"})


def test_body_box_is_the_largest_region_above_the_threshold():
    hu = np.full((40, 50), -1000.0)
    hu[5:30, 10:45] = 40.0      # the body
    hu[35:38, 0:50] = 200.0     # a thin table apart from it: smaller, left out
    hu[12:15, 20:24] = -900.0   # air inside the body does not cut the box
    assert body_box(hu) == (10.0, 5.0, 45.0, 30.0)
    assert body_box(np.stack([hu - 2000, hu, hu - 2000])) == (10.0, 5.0, 45.0, 30.0)
    assert body_box(np.full((8, 8), -1000.0)) is None


def test_typer_votes_of_labelled_neighbours():
    rng = np.random.default_rng(0)
    centres = {"liver": [1.0, 0.0], "lung": [0.0, 1.0], "bone": [-1.0, 0.0]}
    X = np.concatenate([rng.normal(c, 0.1, (10, 2)) for c in centres.values()])
    y = np.repeat(list(centres), 10).astype(object)
    y[:3] = "unlabeled"  # no type: left out of the votes
    t = EmbeddingTyper(n_neighbors=5).fit(X, y)
    assert t.classes_ == ["bone", "liver", "lung"] and t.n_fit_ == 27 and t.n_untyped_ == 3
    q = np.array([[0.9, 0.1], [0.1, 0.9], [-0.9, 0.0]])
    assert t.predict(q).tolist() == ["liver", "lung", "bone"]
    p = t.predict_proba(q)
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1.0)
    # more neighbours than labelled lesions: all of them vote
    assert EmbeddingTyper(n_neighbors=50).fit(X[:12], y[:12]).predict(q[:1]).tolist() == ["liver"]
    assert t.predict(np.zeros((0, 2))).shape == (0,)


def test_typer_bad_input():
    with pytest.raises(LabError, match="not fitted"):
        EmbeddingTyper().predict(np.zeros((1, 2)))
    with pytest.raises(LabError, match="no lesion has a type"):
        EmbeddingTyper().fit(np.zeros((2, 2)), ["unlabeled", ""])
    with pytest.raises(LabError, match="3 labels"):
        EmbeddingTyper().fit(np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(LabError, match="weights"):
        EmbeddingTyper(weights="cosine").fit(np.zeros((2, 2)), ["a", "b"])


def test_detection_rows_locate_boxes_on_their_key_slice(tmp_path_factory):
    run = RunDir(session_run(tmp_path_factory)["run"])
    m = run.load_manifest()
    from deeplesion_lab.manifest import manifest_images_root

    root = manifest_images_root(m)
    pred = _boxes_as_predictions(m)
    rows = detection_rows(pred, m, root)
    assert len(rows) == len(m) and rows["lesion_id"].tolist()[:2] == ["det-0", "det-1"]
    assert (rows["coarse_type"] == -1).all()
    np.testing.assert_array_equal(rows["bbox_x1"], m["bbox_x1"])
    # on the demo, x and y relative to the body's box in the image come close to DL_info's
    # normalised location; z is the slice's level, from its rows
    err = np.abs(rows[["location_x", "location_y"]].to_numpy()
                 - m[["location_x", "location_y"]].to_numpy())
    assert np.median(err) < 0.03
    z = m.groupby("file_name")["location_z"].median()
    np.testing.assert_allclose(rows["location_z"], z.loc[m["file_name"]].to_numpy())
    # a detection off the manifest's key slices: its row and field are named, nothing typed
    bad = pd.concat([pred.iloc[:2], pred.iloc[:1].assign(file_name="999999_01_01_001.png")],
                    ignore_index=True)
    with pytest.raises(LabError, match=r"preds.csv: row 3, field file_name.*999999_01_01_001"):
        detection_rows(bad, m, root, source="preds.csv")
    assert len(detection_rows(pred.iloc[:0], m, root)) == 0


def test_type_predictions_names_a_lesion_box_as_its_embedding_would(tmp_path_factory):
    from deeplesion_lab.embedding import LesionEmbedder
    from deeplesion_lab.manifest import manifest_images_root

    run = RunDir(session_run(tmp_path_factory)["run"])
    m = run.load_manifest()
    ids, vecs = run.load_embeddings()
    pseudo = run.load_pseudo_labels().set_index("lesion_id").loc[ids, "label"]
    typer = EmbeddingTyper(n_neighbors=3).fit(vecs, pseudo.to_numpy())
    emb = LesionEmbedder.load(run.embedder)
    emb.progress, emb.num_threads = False, 1
    pred = _boxes_as_predictions(m.set_index("lesion_id").loc[ids].reset_index())
    out = type_predictions(pred, m, emb, typer, manifest_images_root(m))
    assert list(out.columns) == [*pred.columns, "typer_confidence"]
    pd.testing.assert_frame_equal(out[["file_name", "x1", "y1", "x2", "y2", "score"]],
                                  pred[["file_name", "x1", "y1", "x2", "y2", "score"]])
    assert set(out["label"]) <= set(typer.classes_)
    assert out["typer_confidence"].between(0, 1).all()
    # a lesion's own box, embedded from the image, gets the name of its stored embedding
    # (same patch; only the location differs a little: estimated from the body in the image)
    agree = np.mean(out["label"].to_numpy() == typer.predict(vecs))
    assert agree >= 0.8, agree
    # rescored: each score times the vote share of its name, names unchanged
    re = type_predictions(pred, m, emb, typer, manifest_images_root(m), rescore=True)
    np.testing.assert_allclose(re["score"], pred["score"] * out["typer_confidence"])
    assert re["label"].equals(out["label"])
    # and the names follow the labels the typer was fitted on
    flipped = EmbeddingTyper(n_neighbors=1).fit(vecs, np.where(pseudo == "lung", "bone", "lung"))
    out2 = type_predictions(pred, m, emb, flipped, manifest_images_root(m))
    assert set(out2["label"]) <= {"bone", "lung"}


def test_body_box_location_on_real_key_slices(real_dir):
    """On real DeepLesion key slices, x and y from the body's box in the image are close to
    DL_info's ``Normalized_lesion_location`` (the CT table makes y a little off)."""
    from deeplesion_lab.dl_info import read_dl_info
    from deeplesion_lab.images import key_slice_path

    df = read_dl_info(real_dir / "DL_info_test.csv").lesions
    df = df[[key_slice_path(real_dir / "Images_png", f).is_file() for f in df["file_name"]]]
    assert len(df) >= 10
    rows = detection_rows(_boxes_as_predictions(df), df, real_dir / "Images_png")
    err = np.abs(rows[["location_x", "location_y"]].to_numpy()
                 - df[["location_x", "location_y"]].to_numpy())
    assert np.median(err[:, 0]) < 0.05 and np.median(err[:, 1]) < 0.1, np.median(err, 0)
