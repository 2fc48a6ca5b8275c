"""Deep clustering into pseudo-labels: K selection, rounds, naming, confidence, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from embedding_fixtures import session_patches
from sklearn.datasets import make_blobs

from deeplesion_lab.embedding import LesionEmbedder
from deeplesion_lab.evaluation import nmi
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.mining import DeepClusterMiner, MiningError, choose_k, name_clusters

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=150, centers=5, n_features=16, cluster_std=0.6, random_state=2)
    return X, y


def test_choose_k_finds_the_blobs(blobs):
    X, _ = blobs
    k, table = choose_k(X, (2, 8), "silhouette", seed=0)
    assert k == 5
    assert list(table["k"]) == list(range(2, 9))
    assert {"silhouette", "stability", "inertia"} <= set(table.columns)
    assert table["silhouette"].between(-1, 1).all()
    k2, table2 = choose_k(X, (2, 8), "stability", seed=0)
    assert table2["stability"].max() == pytest.approx(table2.set_index("k").loc[k2, "stability"])
    with pytest.raises(MiningError, match="criterion"):
        choose_k(X, (2, 8), "elbow")
    with pytest.raises(MiningError, match="cannot choose K"):
        choose_k(X[:2], (4, 8))
    k3, t3 = choose_k(X[:5], (8, 16))  # few lesions: the range shrinks to K < 5
    assert list(t3["k"]) == [4] and k3 == 4


def test_miner_on_features(blobs):
    X, y = blobs
    m = DeepClusterMiner(k_range=(2, 8)).fit(X)
    assert m.n_clusters_ == 5 and m.k_scores_ is not None
    assert nmi(y, m.labels_) > 0.95
    assert m.confidence_.shape == (150,)
    assert ((m.confidence_ > 0) & (m.confidence_ <= 1)).all()
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    # user override of K
    m3 = DeepClusterMiner(n_clusters=3).fit(X)
    assert m3.n_clusters_ == 3 and m3.k_scores_ is None and len(np.unique(m3.labels_)) == 3
    np.testing.assert_array_equal(DeepClusterMiner(k_range=(2, 8)).fit_predict(X), m.labels_)


def test_confidence_is_lower_between_clusters():
    X = np.array([[0.0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [10, 10.1], [5, 5.2]])
    m = DeepClusterMiner(n_clusters=2).fit(X)
    assert m.confidence_[-1] < m.confidence_[:-1].min()


def test_name_clusters_by_majority():
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    types = np.array([4, 4, 5, -1, 1, 1, -1, -1])
    centers = np.array([[0.0, 0], [10, 0], [9, 1]])
    names, share = name_clusters(clusters, types, centers)
    assert names == {0: "liver", 1: "bone", 2: "bone"}  # 2: no known type, nearest is 1
    assert share[0] == pytest.approx(2 / 3) and share[1] == 1.0 and share[2] == 0.0
    with pytest.raises(MiningError, match="no lesion of known coarse type"):
        name_clusters(clusters, np.full(8, -1))


def test_pseudo_labels_contract(blobs):
    X, y = blobs
    m = DeepClusterMiner(n_clusters=5).fit(X)
    known = np.where(np.arange(150) % 3 == 0, y + 1, -1)  # a third of the types known
    ids = [f"L{i:03d}" for i in range(150)]
    pl = m.pseudo_labels(ids, known)
    assert list(pl.columns) == ["lesion_id", "cluster", "label", "confidence"]
    assert pl["lesion_id"].tolist() == ids
    assert pl["cluster"].dtype == np.int64
    assert set(pl["label"]) <= set(COARSE_TYPES.values())
    assert pl["confidence"].between(0, 1).all()
    # blobs are pure, so each cluster is named after its own blob's type
    true_names = pd.Series(y + 1).map(COARSE_TYPES)
    assert (pl["label"].to_numpy() == true_names.to_numpy()).mean() > 0.95


def test_bad_input(blobs):
    X, _ = blobs
    with pytest.raises(MiningError, match="at least 2 lesions"):
        DeepClusterMiner(n_clusters=2).fit(X[:1])
    with pytest.raises(MiningError, match="K=200 clusters is impossible for 150 lesions"):
        DeepClusterMiner(n_clusters=200).fit(X)
    bad = X.copy()
    bad[17, 3] = np.nan
    with pytest.raises(MiningError, match="row 17 has NaN"):
        DeepClusterMiner(n_clusters=3).fit(bad)
    with pytest.raises(MiningError, match="not fitted"):
        DeepClusterMiner().predict(X)
    m = DeepClusterMiner(n_clusters=3).fit(X)
    with pytest.raises(MiningError, match="dimensions"):
        m.predict(X[:, :4])


@pytest.mark.parametrize("params, match", [
    ({"n_clusters": 1}, "'n_clusters' parameter of DeepClusterMiner"),
    ({"criterion": "elbow"}, "'criterion' parameter"),
    ({"stop_nmi": -0.5}, "'stop_nmi' parameter"),
    ({"max_rounds": -1}, "'max_rounds' parameter"),
    ({"progress": "yes"}, "'progress' parameter"),
    ({"k_range": (9, 4)}, "k_range must be"),
    ({"k_range": (1, 4)}, "k_range must be"),
    ({"k_range": (2, 3, 4)}, "k_range must be"),
])
def test_parameters_are_checked_by_fit(blobs, params, match):
    X, _ = blobs
    est = DeepClusterMiner(**params)  # __init__ only stores them
    assert est.get_params()[next(iter(params))] == next(iter(params.values()))
    with pytest.raises(MiningError, match=match):
        est.fit(X)


def test_deep_rounds_refine_a_copy_of_the_network(tmp_path_factory):
    patches = session_patches(tmp_path_factory)
    emb = LesionEmbedder(epochs=1, batch_size=8, num_threads=1).fit(patches)
    before = emb.model_hash()
    m = DeepClusterMiner(embedder=emb, n_clusters=4, max_rounds=2, finetune_epochs=1,
                         stop_nmi=1.01).fit(patches)
    assert m.n_rounds_ == 2 and len(m.round_nmi_) == 2
    assert all(0.0 <= v <= 1.0 for v in m.round_nmi_)
    # the assignment before the rounds and after each, the last one the result
    assert len(m.round_labels_) == 3 and (m.round_labels_[-1] == m.labels_).all()
    assert nmi(m.round_labels_[1], m.round_labels_[2]) == pytest.approx(m.round_nmi_[1])
    assert emb.model_hash() == before  # the caller's embedder is untouched
    assert m.embedder_.model_hash() != before  # the copy was fine-tuned
    assert m.features_.shape == (len(patches), 128)
    # new lesions are assigned through the fine-tuned network
    pred = m.predict(patches.subset(np.arange(5)))
    assert pred.shape == (5,) and set(pred) <= set(range(4))
    with pytest.raises(MiningError, match="expects a PatchSet"):
        DeepClusterMiner(embedder=emb, n_clusters=2).fit(np.zeros((10, 128)))


def test_map_is_aligned_to_the_previous_one():
    from deeplesion_lab.steps import align_to_previous

    rng = np.random.default_rng(0)
    old = rng.normal(size=(30, 2))
    ids = np.array([f"L{i}" for i in range(30)], dtype=object)
    prev = pd.DataFrame({"lesion_id": ids, "x": old[:, 0], "y": old[:, 1]})
    a = np.pi / 3
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([1, -1])
    new = (old @ rot) * 2.5 + np.array([7.0, -3.0])  # turned, mirrored, scaled, shifted
    new[:5] += rng.normal(0, 0.05, (5, 2))
    order = rng.permutation(30)  # another lesion order, and one new lesion
    new_ids = np.append(ids[order], "NEW")
    moved = np.vstack([new[order], [[0.0, 0.0]]])
    out, rec = align_to_previous(moved, new_ids, prev)
    assert rec["shared_lesions"] == 30 and rec["rms_after"] < 0.05 < rec["rms_before"]
    np.testing.assert_allclose(out[5:30], old[order][5:], atol=0.05)
    # too few shared lesions: unchanged
    same, none = align_to_previous(moved[:2], np.array(["X", "L1"]), prev)
    assert none is None and (same == moved[:2]).all()


def test_merge_by_known_type_numbering():
    from deeplesion_lab.mining import merge_by_known_type

    clusters = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    types = np.array([4, -1, 4, 4, 1, 5, -1, -1, 0])  # 2: a tie of bone and kidney
    groups, cluster_group = merge_by_known_type(clusters, types)
    # 0 and 1 vote liver (4), 2 bone (1, the lower code of the tie), 3 and 4 know no type
    assert cluster_group.tolist() == [1, 1, 0, 2, 3]
    assert groups.tolist() == [1, 1, 1, 1, 0, 0, 2, 2, 3]


def _blobs_with_known(blobs, every=3):
    X, y = blobs
    return X, y, np.where(np.arange(len(y)) % every == 0, y + 1, -1)


def test_over_clustering_merged_by_known_type(blobs):
    X, y, known = _blobs_with_known(blobs)
    m = DeepClusterMiner(k_range=(2, 8), lesions_per_cluster=15).fit(X, known)
    assert m.merged_ and m.n_fine_clusters_ == 10 and m.fine_labels_.max() == 9
    # the fine clusters of one blob come together again, one cluster per known type
    assert m.n_clusters_ == 5 and nmi(y, m.labels_) == pytest.approx(1.0)
    # every known lesion is in the cluster of its own type
    for t in np.unique(known[known > 0]):
        assert len(np.unique(m.labels_[known == t])) == 1
    assert m.cluster_centers_.shape == (5, 16)
    assert ((m.confidence_ > 0) & (m.confidence_ <= 1 + 1e-9)).all()
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    pl = m.pseudo_labels([f"L{i}" for i in range(len(y))], known)
    assert (pl["label"].to_numpy() == pd.Series(y + 1).map(COARSE_TYPES).to_numpy()).all()
    # deterministic
    again = DeepClusterMiner(k_range=(2, 8), lesions_per_cluster=15).fit(X, known)
    np.testing.assert_array_equal(again.labels_, m.labels_)
    np.testing.assert_allclose(again.confidence_, m.confidence_)


def test_clusters_without_known_members_stay_apart(blobs):
    X, y, known = _blobs_with_known(blobs)
    known = np.where(y == 4, -1, known)  # nobody knows blob 4's type
    m = DeepClusterMiner(k_range=(5, 5), lesions_per_cluster=30).fit(X, known)
    assert m.merged_ and m.n_fine_clusters_ == 5 and m.n_clusters_ == 5
    assert nmi(y, m.labels_) == pytest.approx(1.0)
    assert m.labels_[y == 4].min() == 4  # numbered after the clusters of known type


def test_without_known_types_or_merging_nothing_changes(blobs):
    X, y, known = _blobs_with_known(blobs)
    plain = DeepClusterMiner(k_range=(2, 8)).fit(X)
    assert not plain.merged_ and plain.n_fine_clusters_ == plain.n_clusters_ == 5
    np.testing.assert_array_equal(plain.fine_labels_, plain.labels_)
    off = DeepClusterMiner(k_range=(2, 8), lesions_per_cluster=None).fit(X, known)
    np.testing.assert_array_equal(off.labels_, plain.labels_)
    np.testing.assert_allclose(off.confidence_, plain.confidence_)
    unknown = DeepClusterMiner(k_range=(2, 8)).fit(X, np.full(len(y), -1))
    np.testing.assert_array_equal(unknown.labels_, plain.labels_)
    # a K the user gives is the number of clusters: no over-clustering, no merging
    user = DeepClusterMiner(n_clusters=3, lesions_per_cluster=6).fit(X, known)
    assert not user.merged_ and user.n_clusters_ == user.n_fine_clusters_ == 3


def test_known_types_are_checked(blobs):
    X, _, known = _blobs_with_known(blobs)
    with pytest.raises(MiningError, match="149 known types for 150 lesions"):
        DeepClusterMiner(n_clusters=3).fit(X, known[:-1])
    with pytest.raises(MiningError, match="'lesions_per_cluster' parameter"):
        DeepClusterMiner(lesions_per_cluster=0.5).fit(X, known)
