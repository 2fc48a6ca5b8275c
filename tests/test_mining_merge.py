"""Merging fine clusters by the known types: label spreading (Zhou et al. 2004), clusters
without a known member assigned to a named one, ``mine --merge``."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from embedding_fixtures import session_run
from sklearn.datasets import make_blobs

from deeplesion_lab.cli import main
from deeplesion_lab.evaluation import nmi
from deeplesion_lab.mining import (
    DeepClusterMiner,
    MiningError,
    assign_unnamed,
    knn_graph,
    merge_by_known_type,
    merge_by_spread,
    spread_labels,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=150, centers=5, n_features=16, cluster_std=0.6, random_state=2)
    return X, y


def _known(y, every=10):
    """Type code y + 1 on every ``every``-th lesion, -1 elsewhere."""
    return np.where(np.arange(len(y)) % every == 0, y + 1, -1)


def test_knn_graph_is_symmetric_without_self_loops():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]])
    W = knn_graph(X, 1).toarray()
    assert (W == W.T).all() and (np.diag(W) == 0).all()
    assert W[0, 1] == 1 and W[2, 3] == 1 and W[0, 2] == 0
    assert set(np.unique(W)) <= {0.0, 1.0}


def test_spread_labels_fills_each_blob_from_a_few_known_lesions(blobs):
    X, y = blobs
    known = _known(y)
    types, scores = spread_labels(X, known, n_neighbors=10, alpha=0.5)
    assert (types == y + 1).all()
    assert (types[known > 0] == known[known > 0]).all()  # known lesions keep their type
    assert scores.shape == (len(y), 8)
    np.testing.assert_allclose(scores.sum(1), 1.0)
    assert (scores[:, 5:] == 0).all()  # types 6-8: no known lesion, no score


def test_spread_labels_leaves_an_unreachable_blob_unlabelled(blobs):
    X, y = blobs
    known = np.where(y == 4, -1, _known(y))  # nobody knows blob 4, far from the rest
    types, scores = spread_labels(X, known, n_neighbors=5, alpha=0.9)
    assert (types[y == 4] == -1).all() and (scores[y == 4] == 0).all()
    assert (types[y != 4] == y[y != 4] + 1).all()
    with pytest.raises(MiningError, match="alpha must be in"):
        spread_labels(X, known, alpha=1.0)


def test_merge_by_spread_numbering_and_min_share():
    clusters = np.array([0, 0, 1, 1, 2, 3, 3])
    s = np.zeros((7, 8))
    s[[0, 1], 3] = 1.0  # cluster 0: liver (4)
    s[2, 3], s[3, 0] = 0.7, 0.3  # cluster 1: liver by 0.7 + 0.0 vs 0.3 of bone
    s[3, 3] = 0.0
    s[4, 0] = 1.0  # cluster 2: bone (1)
    s[5, 0], s[5, 4] = 0.5, 0.5  # cluster 3: 1.0 bone, 1.0 kidney: no type has over half...
    s[6, 4] = 0.4  # ... 0.5 bone vs 0.9 kidney: kidney's share 0.64
    groups, cg = merge_by_spread(clusters, s, min_share=0.5)
    assert cg.tolist() == [1, 1, 0, 2] and groups.tolist() == [1, 1, 1, 1, 0, 2, 2]
    # a higher bar: cluster 1 (share 0.7) and cluster 3 (0.64) stay apart, numbered after
    groups, cg = merge_by_spread(clusters, s, min_share=0.75)
    assert cg.tolist() == [1, 2, 0, 3]
    # no score at all: a group of its own
    _, cg = merge_by_spread(np.array([0, 1]), np.array([[1.0] + [0] * 7, [0.0] * 8]))
    assert cg.tolist() == [0, 1]


def test_assign_unnamed_joins_the_nearest_named_cluster():
    fine = np.array([0, 0, 1, 1, 2, 2, 3])
    known = np.array([4, -1, 1, -1, -1, -1, -1])
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [9.0, 1.0], [0.5, 0.5]])
    _, cg = merge_by_known_type(fine, known)
    assert cg.tolist() == [1, 0, 2, 3]  # 2 and 3 know no type
    assert assign_unnamed(cg, fine, known, centers).tolist() == [1, 0, 0, 1]
    X = np.array([[0, 0], [0, 0], [10, 0], [10, 0], [9, 1], [9, 1], [0.5, 0.5]], float)
    assert assign_unnamed(cg, fine, known, centers, X, by="knn", n_neighbors=1).tolist() == [
        1, 0, 0, 1]
    # nobody typed: unchanged
    none = np.full(7, -1)
    _, cg0 = merge_by_known_type(fine, none)
    assert assign_unnamed(cg0, fine, none, centers).tolist() == cg0.tolist()
    with pytest.raises(MiningError, match="unknown assignment"):
        assign_unnamed(cg, fine, known, centers, by="vote")


def test_miner_vote_assign_has_one_cluster_per_known_type(blobs):
    X, y = blobs
    known = np.where(y == 4, -1, _known(y, 3))  # nobody knows blob 4's type
    vote = DeepClusterMiner(k_range=(5, 5), lesions_per_cluster=15).fit(X, known)
    # blob 4's fine clusters stay apart, one group each
    assert vote.n_clusters_ == 4 + len(np.unique(vote.fine_labels_[y == 4])) > 4
    m = DeepClusterMiner(k_range=(5, 5), lesions_per_cluster=15, merge="vote-assign").fit(
        X, known)
    assert m.merged_ and m.n_clusters_ == 4 and m.n_fine_clusters_ == 10
    assert len(np.unique(m.labels_[y == 4])) == 1  # blob 4 went whole to one named group
    ok = y != 4
    assert nmi(y[ok], m.labels_[ok]) == pytest.approx(1.0)
    np.testing.assert_array_equal(m.predict(X), m.labels_)


def test_miner_spread_merges_by_spread_types(blobs):
    X, y = blobs
    known = np.where(y == 4, -1, _known(y, 10))  # 3 known lesions a blob; blob 4 none
    m = DeepClusterMiner(k_range=(5, 5), lesions_per_cluster=15, merge="spread",
                         spread_neighbors=5).fit(X, known)
    assert m.merged_ and m.n_fine_clusters_ == 10
    # the four typed blobs one group each (their fine clusters merged), blob 4 unreached by
    # the graph: its fine clusters stay apart, numbered after
    assert nmi(y[y != 4], m.labels_[y != 4]) == pytest.approx(1.0)
    assert len(np.unique(m.labels_[y != 4])) == 4 and m.labels_[y == 4].min() >= 4
    pl = m.pseudo_labels([f"L{i}" for i in range(len(y))], known)
    assert len(pl) == len(y) and pl["confidence"].between(0, 1).all()
    # deterministic
    again = DeepClusterMiner(k_range=(5, 5), lesions_per_cluster=15, merge="spread",
                             spread_neighbors=5).fit(X, known)
    np.testing.assert_array_equal(again.labels_, m.labels_)


def test_merge_modes_without_known_types_cluster_alone(blobs):
    X, y = blobs
    plain = DeepClusterMiner(k_range=(2, 8)).fit(X)
    for merge in ("vote-assign", "spread"):
        m = DeepClusterMiner(k_range=(2, 8), merge=merge).fit(X, np.full(len(y), -1))
        assert not m.merged_
        np.testing.assert_array_equal(m.labels_, plain.labels_)
        again = DeepClusterMiner(k_range=(2, 8), merge=merge).fit(X)
        np.testing.assert_array_equal(again.labels_, plain.labels_)
    with pytest.raises(MiningError, match="'merge' parameter"):
        DeepClusterMiner(merge="majority").fit(X, _known(y))
    with pytest.raises(MiningError, match="'spread_alpha' parameter"):
        DeepClusterMiner(merge="spread", spread_alpha=1.0).fit(X, _known(y))


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_mine_merge_option(tmp_path_factory, tmp_path):
    made = session_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    before = json.loads((run / "metrics.json").read_text())["mining"]
    assert before["merge"] == "vote"
    for merge in ("vote-assign", "spread"):
        code, out, err = cli("mine", "--run", run, "--merge", merge, "--k-min", "3",
                             "--k-max", "6", "--no-progress")
        assert code == 0, err
        mining = json.loads((run / "metrics.json").read_text())["mining"]
        assert mining["merge"] == merge and mining["merged_by_known_type"]
        assert mining["k_fine"] >= mining["k"]
    with pytest.raises(SystemExit):
        cli("mine", "--run", run, "--merge", "majority", "--no-progress")


def _mine(run, *extra) -> dict:
    code, out, err = cli("mine", "--run", run, "--k-min", "3", "--k-max", "6", "--no-progress",
                         *extra)
    assert code == 0, err
    return json.loads((run / "metrics.json").read_text())["mining"]


def test_mine_hold_out_ignores_the_held_out_types(tmp_path_factory, tmp_path):
    """``mine --hold-out test``: the test lesions' manifest types make no pseudo-label (scrambling
    them changes nothing), while without it they do name clusters."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deeplesion_lab.lesion_types import SPLIT_CODES
    from deeplesion_lab.run import RunDir

    made = session_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    manifest = RunDir(run).load_manifest()
    test = manifest["split"] == SPLIT_CODES["test"]
    n_known_test = int((test & (manifest["coarse_type"] > 0)).sum())
    assert n_known_test > 0
    mining = _mine(run, "--hold-out", "test")
    assert mining["hold_out"] == "test" and mining["n_types_held_out"] == n_known_test
    held = pd.read_parquet(run / "pseudo_labels.parquet")

    # the same run with every test lesion's type replaced by another one
    info = json.loads((run / "run.json").read_text())
    table = pq.read_table(info["manifest"])
    df = table.to_pandas()
    df.loc[test.to_numpy() & (df["coarse_type"] > 0), "coarse_type"] = (
        df.loc[test.to_numpy() & (df["coarse_type"] > 0), "coarse_type"] % 8 + 1)
    scrambled = tmp_path / "manifest_scrambled.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False)
                   .replace_schema_metadata(table.schema.metadata), scrambled)
    info["manifest"] = str(scrambled)
    (run / "run.json").write_text(json.dumps(info))
    _mine(run, "--hold-out", "test")
    pd.testing.assert_frame_equal(pd.read_parquet(run / "pseudo_labels.parquet"), held)
    # without --hold-out the (scrambled) test types name clusters: other pseudo-labels
    assert _mine(run)["n_types_held_out"] == 0
    assert not pd.read_parquet(run / "pseudo_labels.parquet")["label"].equals(held["label"])

    code, _, err = cli("mine", "--run", run, "--hold-out", "tset", "--no-progress")
    assert code != 0 and "tset" in err and "--hold-out" in err
