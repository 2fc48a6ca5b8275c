"""Missing-annotation mining: proposals from detections, ranking, evaluation, acceptance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from graph_fixtures import make_run

from deeplesion_lab.cli import main
from deeplesion_lab.detection.froc import box_iou
from deeplesion_lab.graph import (
    GraphError,
    accept_proposals,
    evaluate_proposals,
    lesion_table,
    pairwise_iou,
    proposal_similarity,
    propose_missing,
    rank_proposals,
    read_accepted,
)
from deeplesion_lab.labels import LabelStore, LabelStoreError
from deeplesion_lab.manifest import read_manifest
from deeplesion_lab.run import RunDir


def _jitter(box, rng, px=2.0):
    return np.asarray(box, float) + rng.uniform(-px, px, 4)


def make_predictions(X: pd.DataFrame, seed: int = 0, n_fp: int = 2) -> pd.DataFrame:
    """Detections a detector could give: the annotated lesions, the unannotated ones (also on
    the neighbouring slices), and false positives (key slice only)."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(f, box, score):
        rows.append((f, *np.asarray(box, float).tolist(), float(score), "lesion"))

    for r in X.itertuples(index=False):
        add(r.file_name, _jitter([r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2], rng), 0.95)
    for r in X.attrs["missing_boxes"].itertuples(index=False):
        box = [r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]
        add(r.file_name, _jitter(box, rng), rng.uniform(0.4, 0.8))
        stem, sl = r.file_name[:-4].rsplit("_", 1)
        for off in (-1, 1):
            add(f"{stem}_{int(sl) + off:03d}.png", _jitter(box, rng, 4), rng.uniform(0.3, 0.7))
    for f in X["file_name"].unique():
        for _ in range(n_fp):
            x, y = rng.uniform(30, 420, 2)
            s = rng.uniform(10, 40)
            add(f, [x, y, x + s, y + s], rng.uniform(0.3, 0.9))
    return pd.DataFrame(rows, columns=["file_name", "x1", "y1", "x2", "y2", "score", "label"])


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("missing")
    run_dir, truth, X = make_run(tmp, 18, seed=7, missing_share=0.6)
    pred = make_predictions(X, seed=7)
    pred_csv = tmp / "pred.csv"
    pred.to_csv(pred_csv, index=False)
    man = read_manifest(RunDir(run_dir).manifest_path())
    return run_dir, truth, X, pred, pred_csv, man


def test_pairwise_iou_agrees_with_the_detection_evaluation():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 100, (6, 4)).reshape(6, 2, 2), axis=1).transpose(0, 2, 1)
    a = a.reshape(6, 4)[:, [0, 2, 1, 3]]
    b = a[::-1] + rng.uniform(-5, 5, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    m = pairwise_iou(a, b)
    for i in range(len(a)):
        assert m[i] == pytest.approx(box_iou(a[i], b))


def test_proposals_drop_annotated_lesions_and_keep_the_rest(mined):
    _, _, X, pred, _, man = mined
    props = propose_missing(man, pred)
    assert props["proposal_id"].is_unique
    # only key images, never the neighbouring slices
    assert set(props["file_name"]) <= set(man["file_name"])
    # no proposal overlaps an annotated box of its image
    for f, g in props.groupby("file_name"):
        ann = man.loc[man["file_name"] == f, ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]]
        assert pairwise_iou(g[["x1", "y1", "x2", "y2"]].to_numpy(), ann.to_numpy()).max() < 0.3
    # every unannotated truth lesion still has a proposal on it
    miss = X.attrs["missing_boxes"]
    for r in miss.itertuples(index=False):
        g = props.loc[props["file_name"] == r.file_name, ["x1", "y1", "x2", "y2"]].to_numpy()
        assert pairwise_iou(g, [[r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]]).max() >= 0.5
    # neighbour support: the unannotated lesions are seen on the 2 nearest of the 4 neighbour
    # slices (scores 0.3-0.7), the FPs on none
    on_miss = []
    for r in props.itertuples(index=False):
        m = miss.loc[miss["file_name"] == r.file_name]
        hit = len(m) and pairwise_iou([[r.x1, r.y1, r.x2, r.y2]],
                                      m[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]]).max() >= .5
        on_miss.append(bool(hit))
    on_miss = np.array(on_miss)
    assert props.loc[on_miss, "neighbour_support"].between(0.6 / 4, 1.4 / 4).all()
    assert props.loc[~on_miss, "neighbour_support"].mean() < 0.05
    # min_score and NMS
    assert (propose_missing(man, pred, min_score=0.85)["score"] >= 0.85).all()
    dup = pd.concat([pred, pred.assign(score=pred["score"] - 0.01)], ignore_index=True)
    assert len(propose_missing(man, dup)) == len(props)
    # at most max_per_image per image, the best-scored ones
    one = propose_missing(man, pred, max_per_image=1)
    assert one["file_name"].is_unique and set(one["file_name"]) == set(props["file_name"])
    best = props.groupby("file_name")["score"].max()
    assert (one.set_index("file_name")["score"] == best.loc[one["file_name"]].to_numpy()).all()


def test_neighbour_rows_point_at_the_slices_around_each_key_slice(mined):
    from deeplesion_lab.graph import neighbour_rows

    man = mined[5]
    nb = neighbour_rows(man, 2)
    keys = man.drop_duplicates("file_name")
    assert not set(nb["file_name"]) & set(keys["file_name"])
    assert nb["file_name"].is_unique and nb["lesion_id"].is_unique
    # the fixture's series span key +- 5 slices: all four neighbours exist (minus key images)
    r = keys.iloc[0]
    stem, sl = r.file_name[:-4].rsplit("_", 1)
    want = {f"{stem}_{int(sl) + o:03d}.png" for o in (-2, -1, 1, 2)} - set(keys["file_name"])
    got = nb.loc[nb["file_name"].str.startswith(stem + "_"), "file_name"]
    assert want <= set(got)
    row = nb.loc[nb["file_name"] == sorted(want)[0]].iloc[0]
    assert row["key_slice_index"] == int(sorted(want)[0][-7:-4])
    assert len(neighbour_rows(man, 0)) == 0
    # with an images folder, only slices on disk (the fixture has none)
    assert len(neighbour_rows(man, 1, images_root=mined[0])) == 0


def test_ranking_by_support_and_similarity_beats_the_score_alone(mined):
    run_dir, truth, X, pred, _, man = mined
    from deeplesion_lab.graph import read_truth

    t = read_truth(truth)
    props = propose_missing(man, pred)
    images = man["file_name"].unique()
    by_score = evaluate_proposals(props, t, images, score="score")
    ranked = rank_proposals(props)
    by_rank = evaluate_proposals(ranked, t, images)
    assert by_rank["n_missing"] == len(X.attrs["missing_boxes"])
    assert by_rank["recall_at_1"] > by_score["recall_at_1"]
    assert by_rank["recall_all"] == pytest.approx(1.0)
    # similarity: give proposals on a truth lesion a vector close to the patient's lesions
    ids, vecs = RunDir(run_dir).load_embeddings()
    table = lesion_table(man, ids, vecs)
    rng = np.random.default_rng(0)
    miss = X.attrs["missing_boxes"]
    pv = rng.normal(size=(len(props), table.vectors.shape[1]))
    for i, r in enumerate(props.itertuples(index=False)):
        m = miss.loc[miss["file_name"] == r.file_name]
        if len(m) and pairwise_iou([[r.x1, r.y1, r.x2, r.y2]],
                                   m[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]]).max() >= .5:
            j = np.flatnonzero(table.lesions["patient_index"] == r.patient_index)[0]
            pv[i] = table.vectors[j] * 5 + rng.normal(size=pv.shape[1]) * 0.1
    ps = proposal_similarity(props, pv, table)
    assert ps["similarity"].between(-1, 1).all() and ps["nearest_lesion_id"].notna().all()
    near = ps["nearest_lesion_id"].map(table.lesions.set_index("lesion_id")["patient_index"])
    assert (near.to_numpy() == ps["patient_index"].to_numpy()).all()
    with_sim = evaluate_proposals(rank_proposals(ps, weight_support=0.0), t, images)
    no_sim = evaluate_proposals(rank_proposals(props, weight_support=0.0), t, images)
    assert with_sim["recall_at_0_5"] > no_sim["recall_at_0_5"]
    with pytest.raises(GraphError, match="weights"):
        rank_proposals(props, weight_similarity=0.8, weight_support=0.5)


def test_evaluation_counts_by_the_definition():
    truth = pd.DataFrame({
        "file_name": ["A.png", "B.png", "A.png"], "annotated": [False, False, True],
        "bbox_x1": [10.0, 10.0, 200.0], "bbox_y1": [10.0, 10.0, 200.0],
        "bbox_x2": [40.0, 40.0, 230.0], "bbox_y2": [40.0, 40.0, 230.0],
    })
    props = pd.DataFrame({
        "file_name": ["A.png", "B.png", "A.png", "B.png", "C.png"],
        "x1": [11.0, 300.0, 12.0, 9.0, 10.0], "y1": [11.0, 300.0, 12.0, 9.0, 10.0],
        "x2": [40.0, 330.0, 41.0, 41.0, 40.0], "y2": [40.0, 330.0, 41.0, 41.0, 40.0],
        "rank_score": [0.9, 0.8, 0.7, 0.6, 0.95],
    })
    # C.png is not an evaluated image; p3 is a second hit on A's lesion (a false positive)
    ev = evaluate_proposals(props, truth, ["A.png", "B.png"])
    assert (ev["n_images"], ev["n_missing"], ev["n_proposals"]) == (2, 2, 4)
    assert ev["recall_at_0_5"] == 0.5 and ev["precision_at_0_5"] == 1.0  # top 1
    assert ev["recall_at_1"] == 0.5 and ev["precision_at_1"] == 0.5  # top 2
    assert ev["recall_at_2"] == 1.0 and ev["precision_at_2"] == 0.5  # top 4
    assert ev["precision_at_top"] == 0.5
    # IoU vs centre rule: a small box centred in the lesion is a hit only by centre
    small = pd.DataFrame({"file_name": ["A.png"], "x1": [20.0], "y1": [20.0], "x2": [30.0],
                          "y2": [30.0], "rank_score": [1.0]})
    assert evaluate_proposals(small, truth, ["A.png"])["recall_all"] == 0.0
    assert evaluate_proposals(small, truth, ["A.png"], hit="centre")["recall_all"] == 1.0
    with pytest.raises(GraphError, match="hit"):
        evaluate_proposals(small, truth, ["A.png"], hit="area")


def test_graph_command_mines_and_evaluates(mined, capsys):
    run_dir, truth, X, pred, pred_csv, man = mined
    assert main(["graph", "--run", str(run_dir), "--predictions", str(pred_csv)]) == 0
    out = capsys.readouterr().out
    assert "recall@0.5" in out
    assert "embedder.pt not found" in out  # the synthetic run has no embedding network
    gdir = RunDir(run_dir).graph_dir
    props = pd.read_parquet(gdir / "proposals.parquet")
    assert len(props) and {"file_name", "x1", "y1", "x2", "y2", "score", "label"} <= set(props)
    nodes = pd.read_parquet(gdir / "nodes.parquet")
    assert (nodes["kind"] == "detected").sum() == len(props)
    m = json.loads((run_dir / "metrics.json").read_text())["missing_annotations"]
    for k in ("recall_at_0_5", "recall_at_1", "recall_at_2", "precision_at_top"):
        assert 0.0 <= m[k] <= 1.0
    assert m["recall_at_2"] >= m["recall_at_1"] >= m["recall_at_0_5"]
    assert m["evaluated_on"].endswith("split 3") and m["n_missing"] > 0
    assert "by_detector_score" in m and m.get("skipped") is None


def test_bad_predictions_are_reported_by_row_and_field(mined, tmp_path, capsys):
    run_dir, _, _, pred, _, man = mined
    bad = pred.copy()
    bad.loc[3, "file_name"] = "slice.png"
    with pytest.raises(GraphError, match=r"row 3, field file_name: 'slice.png'"):
        propose_missing(man, bad)
    with pytest.raises(GraphError, match="missing column score"):
        propose_missing(man, pred.drop(columns=["score"]))
    csv = tmp_path / "bad.csv"
    bad2 = pred.copy().astype({"x1": object})
    bad2.loc[2, "x1"] = "abc"
    bad2.to_csv(csv, index=False)
    assert main(["graph", "--run", str(run_dir), "--predictions", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "line 4" in err and "x1" in err
    empty = propose_missing(man, pred.iloc[0:0])
    assert len(empty) == 0 and list(empty.columns)[0] == "proposal_id"


def test_accepting_proposals_records_who_and_when(mined, capsys):
    run_dir, _, _, _, pred_csv, _ = mined
    gdir = RunDir(run_dir).graph_dir
    if not (gdir / "proposals.parquet").is_file():
        assert main(["graph", "--run", str(run_dir), "--predictions", str(pred_csv)]) == 0
    props = pd.read_parquet(gdir / "proposals.parquet").sort_values("rank_score", ascending=False)
    ids = props["proposal_id"].head(3).tolist()
    with pytest.raises(GraphError, match="not a proposal"):
        accept_proposals(run_dir, [ids[0], "nope"], "ana")
    assert read_accepted(run_dir).empty  # nothing written half-way
    with pytest.raises(LabelStoreError, match="unknown class 'tumour'"):
        accept_proposals(run_dir, ids[:2], "ana", label="tumour")
    assert read_accepted(run_dir).empty
    added = accept_proposals(run_dir, ids[:2], "ana", label="liver", comment="clearly a lesion")
    assert len(added) == 2
    acc = read_accepted(run_dir)
    assert acc["lesion_id"].tolist() == sorted(ids[:2])
    assert (acc["added_by"] == "ana").all() and acc["added_at"].notna().all()
    assert (acc["label"] == "liver").all() and (acc["origin"] == "proposal").all()
    r, p = acc.set_index("lesion_id").loc[ids[0]], props.set_index("proposal_id").loc[ids[0]]
    assert (r.bbox_x1, r.bbox_y2) == (p.x1, p.y2)
    assert r.recist_x1 >= r.bbox_x1 and r.recist_x2 <= r.bbox_x2
    # the ids are those the lesions get when written back with their RECIST points
    from deeplesion_lab.dl_info import make_lesion_id
    rec = [r[f"recist_{a}{i}"] for i in range(1, 5) for a in "xy"]
    assert make_lesion_id(r.file_name, rec) == ids[0]
    # one event in the store's history, with who and the comment
    with LabelStore.for_run(run_dir) as store:
        ev = store.events(limit=1).iloc[0]
        assert (ev["op"], ev["user"], ev["comment"]) == ("add_lesions", "ana", "clearly a lesion")
    # accepting again is a no-op for those; the CLI adds the third
    assert len(accept_proposals(run_dir, ids[:2], "bob")) == 0
    assert main(["accept-proposals", "--run", str(run_dir), *ids, "--user", "bob"]) == 0
    assert "accepted 1 proposals" in capsys.readouterr().out
    acc = read_accepted(run_dir).set_index("lesion_id").loc[ids]
    assert acc["added_by"].tolist() == ["ana", "ana", "bob"]
    assert main(["accept-proposals", "--run", str(run_dir), "zzz"]) == 2


def test_proposal_manifest_locates_the_proposals_own_box(tmp_path_factory):
    """``location="annotated"`` copies the location of an annotated lesion of the key image;
    ``"body"`` locates the proposal's own box relative to the body in the image."""
    from embedding_fixtures import session_demo

    from deeplesion_lab.graph import proposal_manifest
    from deeplesion_lab.graph.lesion_table import GraphError

    m = read_manifest(session_demo(tmp_path_factory)["manifest"])
    r = m.iloc[0]
    w = r["bbox_x2"] - r["bbox_x1"]
    # one proposal on the annotated lesion, one shifted right by four box widths
    props = pd.DataFrame({"proposal_id": ["p0", "p1"], "file_name": [r["file_name"]] * 2,
                          "x1": [r["bbox_x1"], r["bbox_x1"] + 4 * w],
                          "x2": [r["bbox_x2"], r["bbox_x2"] + 4 * w],
                          "y1": [r["bbox_y1"]] * 2, "y2": [r["bbox_y2"]] * 2})
    ann = proposal_manifest(props, m, location="annotated")
    assert (ann["location_x"] == r["location_x"]).all()
    body = proposal_manifest(props, m, location="body")
    assert body["lesion_id"].tolist() == ["p0", "p1"]
    assert abs(body["location_x"].iloc[0] - r["location_x"]) < 0.03
    assert body["location_x"].iloc[1] > body["location_x"].iloc[0] + 0.05
    assert body["location_z"].tolist() == [r["location_z"]] * 2
    with pytest.raises(GraphError, match="location"):
        proposal_manifest(props, m, location="elsewhere")
