"""The lesion graph: lesion table, kNN/match/candidate edges, parquet round trip, networkx,
and the ``deeplesion-lab graph`` command on a run directory."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from graph_fixtures import make_run, synthetic_lesions

from deeplesion_lab.cli import main
from deeplesion_lab.graph import (
    GraphError,
    LesionGraph,
    LesionMatcher,
    build_lesion_graph,
    build_tracks,
    lesion_table,
)
from deeplesion_lab.run import RunDir


def _table(n_patients=15, seed=0, drop=()):
    X, y = synthetic_lesions(n_patients, seed=seed)
    ecols = [c for c in X.columns if c.startswith("e") and c[1:].isdigit()]
    keep = ~X.index.isin(drop)
    man = X.drop(columns=ecols)
    t = lesion_table(man, X.loc[keep, "lesion_id"].to_numpy(), X.loc[keep, ecols].to_numpy())
    return t, X, y


def test_lesion_table_joins_and_reports_missing_embeddings():
    t, X, _ = _table(drop=[0, 5])
    assert len(t.lesions) == len(X)
    assert t.n_without_embedding == 2
    assert not t.has_embedding[[0, 5]].any() and t.has_embedding[1]
    assert np.isnan(t.vectors[0]).all()
    assert np.linalg.norm(t.vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert any("2 of" in m and "no embedding" in m for m in t.messages)
    assert t.lesions["long_diameter_mm"].to_numpy() == pytest.approx(
        X["long_diameter_px"].to_numpy() * 0.8)
    man = X[["lesion_id", "file_name", "patient_index", "study_index", "location_x",
             "location_y", "location_z", "long_diameter_px"]]
    with pytest.raises(GraphError, match="more than one embedding"):
        lesion_table(man, ["a", "a"], np.ones((2, 3)))
    with pytest.raises(GraphError, match="2 lesion ids but 1 vectors"):
        lesion_table(man, ["a", "b"], np.ones((1, 3)))
    with pytest.raises(GraphError, match="missing column"):
        lesion_table(man.drop(columns=["location_z"]), None, None)
    # zero / NaN vectors are treated as missing, unknown ids are counted
    ids = list(man["lesion_id"][:3]) + ["not-a-lesion"]
    v = np.ones((4, 3))
    v[1] = 0
    v[2, 0] = np.nan
    t2 = lesion_table(man, ids, v)
    assert t2.has_embedding[:3].tolist() == [True, False, False]
    assert t2.n_unknown_embeddings == 1
    assert any("not finite" in m for m in t2.messages)


def test_graph_edges_are_true_neighbours_matches_and_candidates(tmp_path):
    t, X, y = _table(n_patients=20, seed=1, drop=[3])
    pairs = LesionMatcher().fit(t.frame(), y).predict(t.frame())
    tracks = build_tracks(t.lesions, pairs)
    # two detected candidates of patient 1, one without embedding
    p1 = t.lesions.index[t.lesions["patient_index"] == 1][0]
    cand = pd.DataFrame({
        "proposal_id": ["cand-a", "cand-b"], "patient_index": [1, 1],
        "study_index": [1, 1], "file_name": [t.lesions.file_name[p1]] * 2,
        "x1": [10.0, 50.0], "y1": [10.0, 50.0], "x2": [30.0, 80.0], "y2": [30.0, 80.0],
        "score": [0.9, 0.4],
    })
    cv = np.vstack([t.vectors[p1] + 0.01, np.full(t.vectors.shape[1], np.nan)])
    g = build_lesion_graph(t, n_neighbors=4, pairs=pairs, tracks=tracks, candidates=cand,
                           candidate_vectors=cv)
    n = len(t.lesions)
    assert len(g.nodes) == n + 2
    assert set(g.nodes["kind"]) == {"annotated", "detected"}
    assert g.nodes.set_index("node_id").loc["cand-b", "has_embedding"] == np.False_
    e = g.edges
    # no self loops, one row per unordered pair
    assert (e["source"] != e["target"]).all()
    key = e[["source", "target"]].apply(lambda r: tuple(sorted(r)), axis=1)
    assert key.is_unique
    # kNN edges: every node's 4 nearest (brute force) are linked with the cosine distance
    V = np.vstack([t.vectors, cv])
    ids = g.nodes["node_id"].to_numpy()
    has = g.nodes["has_embedding"].to_numpy()
    sim = e.loc[e["similar"]]
    linked = set(zip(sim["source"], sim["target"], strict=True))
    linked |= {(b, a) for a, b in linked}
    idx = np.flatnonzero(has)
    for i in idx[::7]:
        d = 1 - V[idx] @ V[i]
        d[idx == i] = np.inf
        for j in idx[np.argsort(d)[:4]]:
            assert (ids[i], ids[j]) in linked
    row = sim.iloc[0]
    i, j = (np.flatnonzero(ids == row.source)[0], np.flatnonzero(ids == row.target)[0])
    assert row.distance == pytest.approx(1 - V[i] @ V[j], abs=1e-4)
    # nodes without embedding have no similarity edge
    no_emb = set(ids[~has])
    assert not (set(sim["source"]) | set(sim["target"])) & no_emb
    # match edges are exactly the matched pairs
    same = e.loc[e["same_lesion"]]
    assert len(same) == int(pairs["match"].sum())
    assert same["match_score"].notna().all()
    # the candidate with an embedding is linked to its nearest annotated lesion of patient 1
    c = e.loc[e["candidate"]]
    assert len(c) == 1
    other = c.iloc[0].target if c.iloc[0].source == "cand-a" else c.iloc[0].source
    assert other == t.lesions.lesion_id[p1]
    # track ids are on the annotated nodes
    assert g.nodes.loc[: n - 1, "track_id"].notna().all()

    # parquet round trip and networkx
    g.save(tmp_path / "g")
    g2 = LesionGraph.load(tmp_path / "g")
    pd.testing.assert_frame_equal(g.edges, g2.edges)
    G = g2.to_networkx()
    assert isinstance(G, nx.Graph)
    assert G.number_of_nodes() == len(g.nodes) and G.number_of_edges() == len(g.edges)
    a, b = same.iloc[0].source, same.iloc[0].target
    assert G.edges[a, b]["same_lesion"] and G.nodes[a]["kind"] == "annotated"
    nb = g2.neighbors(a, relation="same_lesion")
    assert b in set(nb["neighbor"])
    with pytest.raises(GraphError, match="not found"):
        LesionGraph.load(tmp_path / "nowhere")
    assert "nodes" in g.summary()


def test_graph_command_writes_everything_and_metrics(tmp_path, capsys):
    run_dir, truth, X = make_run(tmp_path, 24, seed=0, drop_embeddings=2)
    code = main(["graph", "--run", str(run_dir), "--neighbors", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mining skipped" in out and "no --predictions" in out
    assert "2 of" in out and "no embedding" in out
    gdir = RunDir(run_dir).graph_dir
    for f in ("nodes", "edges", "pairs", "tracks"):
        assert (gdir / f"{f}.parquet").is_file()
    assert not (gdir / "proposals.parquet").exists()
    m = json.loads((run_dir / "metrics.json").read_text())
    mt = m["matching"]
    for k in ("precision", "recall", "f1", "auc"):
        assert 0.0 <= mt[k] <= 1.0
    assert mt["f1"] > 0.9 and mt["lesions_without_embedding"] == 2
    assert "split 2" in mt["split_rule"]
    # the single-cue baselines: the same matcher on one feature, same fit and evaluation patients
    assert "location only F1" in out and "appearance (embedding) only F1" in out
    from deeplesion_lab.graph import lesion_table, matching_metrics, pair_labels
    from deeplesion_lab.graph.truth import read_truth, track_ids_for

    run = RunDir(run_dir)
    table = lesion_table(run.load_manifest(), *run.load_embeddings())
    Xt = table.frame()
    y = track_ids_for(table.lesions["lesion_id"], read_truth(truth))
    sp = Xt["split"].to_numpy()
    for name, feat in (("location_only", "location_distance"),
                       ("appearance_only", "embedding_distance")):
        fm, em = sp == 2, sp == 3
        bm = LesionMatcher(features=[feat]).fit(Xt.loc[fm].reset_index(drop=True), y[fm])
        pb = bm.predict(Xt.loc[em].reset_index(drop=True))
        want = matching_metrics(pb, pair_labels(pb, y[em]))
        assert mt[f"split_{name}_f1"] == pytest.approx(want["f1"])
        assert 0.0 <= mt[f"{name}_f1"] <= 1.0 and 0.0 <= mt[f"{name}_auc"] <= 1.0
    # the headline figures are cross-fitted: every patient with identities evaluated once, by a
    # matcher fitted on the other half, so more pairs than the test split alone
    assert "cross-fitting" in mt["evaluation"] and "cross-fitting" in out
    assert mt["eval_pairs"] > mt["split_eval_pairs"]
    assert mt["eval_patients"] == len(np.unique(Xt.loc[pd.Series(y).notna().to_numpy(),
                                                        "patient_index"]))
    assert "skipped" in m["missing_annotations"]
    tracks = pd.read_parquet(gdir / "tracks.parquet")
    assert len(tracks) == len(X) and (tracks["status"] == "no embedding").sum() == 2
    rec = json.loads((gdir / "graph.json").read_text())
    assert rec["matcher"]["fitted_on"] == "labels" and rec["messages"]


def test_graph_command_without_truth_uses_prior_and_says_so(tmp_path, capsys):
    run_dir, truth, _ = make_run(tmp_path, 8, seed=1)
    info = json.loads((run_dir / "run.json").read_text())
    info["truth"] = None
    (run_dir / "run.json").write_text(json.dumps(info))
    assert main(["graph", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no truth file" in out and "prior" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["matching"]["evaluated"] is False
    assert "f1" not in m["matching"]


def test_graph_command_bad_inputs_exit_2(tmp_path, capsys):
    run_dir, truth, _ = make_run(tmp_path, 6, seed=2)
    assert main(["graph", "--run", str(tmp_path / "not-a-run")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bad_truth = tmp_path / "bad_truth.parquet"
    pd.read_parquet(truth).drop(columns=["track_id"]).to_parquet(bad_truth)
    assert main(["graph", "--run", str(run_dir), "--truth", str(bad_truth)]) == 2
    err = capsys.readouterr().err
    assert "track_id" in err and "bad_truth.parquet" in err
    RunDir(run_dir).embeddings.unlink()
    assert main(["graph", "--run", str(run_dir)]) == 2
    assert "embeddings.parquet" in capsys.readouterr().err


def test_end_to_end_on_demo_data_with_the_real_embedder(tmp_path, capsys):
    """Demo generator -> manifest -> embed (real network, untrained: seconds) -> graph, with
    detections made from the demo's truth boxes (a stand-in for `detect`, which needs a trained
    detector) plus false positives; the proposals are embedded by the run's embedder."""
    from deeplesion_lab.demo import generate_demo

    demo = generate_demo(tmp_path / "demo", n_patients=4, seed=1, size=128)
    man = tmp_path / "manifest.parquet"
    run_dir = tmp_path / "run"
    assert main(["manifest", str(demo.csv_path), "--out", str(man)]) == 0
    assert main(["embed", str(man), "--run", str(run_dir), "--epochs", "0", "--truth",
                 str(demo.truth_path), "--no-progress"]) == 0
    truth = pd.read_parquet(demo.truth_path)
    keys = set(pd.read_parquet(man)["file_name"])
    rng = np.random.default_rng(0)
    rows = []
    for r in truth.loc[truth["file_name"].isin(keys)].itertuples(index=False):
        box = np.array([r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]) + rng.uniform(-1, 1, 4)
        rows.append((r.file_name, *box, 0.9 if r.annotated else 0.7, "lesion"))
    for f in sorted(keys):
        x, y = rng.uniform(10, 100, 2)
        rows.append((f, x, y, x + 12, y + 12, 0.5, "lesion"))
    pred = tmp_path / "pred.csv"
    pd.DataFrame(rows, columns=["file_name", "x1", "y1", "x2", "y2", "score", "label"]).to_csv(
        pred, index=False)
    capsys.readouterr()
    assert main(["graph", "--run", str(run_dir), "--predictions", str(pred)]) == 0
    out = capsys.readouterr().out
    assert "embedded" in out and "proposals with embedder.pt" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "matching" in m and "pairs" in m["matching"]
    mm = m["missing_annotations"]
    assert mm["embedding_similarity"] is True
    n_unann = int((~truth["annotated"] & truth["file_name"].isin(keys)).sum())
    assert n_unann > 0
    # every unannotated lesion on an annotated key image was detected, so all are found
    assert mm["recall_all"] == 1.0
    props = pd.read_parquet(run_dir / "graph" / "proposals.parquet")
    assert props["similarity"].notna().all()
    g = LesionGraph.load(run_dir / "graph")
    assert (g.nodes["kind"] == "detected").sum() == len(props)
    assert g.edges["candidate"].sum() == len(props)


def test_unusable_detector_in_the_run_does_not_stop_the_graph(tmp_path, capsys):
    run_dir, _, _ = make_run(tmp_path, 6, seed=3)
    bad = RunDir(run_dir).detector_dir / "broken" / "model.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    assert main(["graph", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "detector could not be run" in out and "mining skipped" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "could not be run" in m["missing_annotations"]["skipped"]
    assert "matching" in m and (RunDir(run_dir).graph_dir / "tracks.parquet").is_file()
