"""Evaluation metrics and the paper's classification protocol (real metadata included)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deeplesion_lab.dl_info import read_dl_info
from deeplesion_lab.errors import LabError
from deeplesion_lab.evaluation import (
    PAPER_LOCATION_ONLY_ACCURACY,
    ProtocolError,
    classification_accuracy,
    location_features,
    mining_scores,
    nmi,
    protocol_split,
    purity,
    raw_intensity_features,
    retrieval_scores,
    true_types,
)
from deeplesion_lab.lesion_types import COARSE_TYPES


def test_purity_and_nmi_by_hand():
    true = np.array([1, 1, 1, 2, 2, 3])
    pred = np.array([0, 0, 1, 1, 1, 1])
    # cluster 0: {1,1} -> 2; cluster 1: {1,2,2,3} -> 2 of type 2; purity 4/6
    assert purity(true, pred) == pytest.approx(4 / 6)
    assert nmi(true, true) == pytest.approx(1.0)
    assert nmi(true, [5, 5, 5, 7, 7, 9]) == pytest.approx(1.0)  # names do not matter
    assert nmi(true, np.zeros(6)) == pytest.approx(0.0)
    with pytest.raises(LabError):
        purity([], [])


def test_protocol_split_by_patient():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 300, 2000)
    roles = protocol_split(patients, seed=0)
    df = pd.DataFrame({"p": patients, "r": roles})
    assert (df.groupby("p")["r"].nunique() == 1).all()  # no patient in two roles
    share = df["r"].value_counts(normalize=True)
    assert share["seed"] == pytest.approx(0.25, abs=0.02)
    assert share["val"] == pytest.approx(0.25, abs=0.02)
    assert share["test"] == pytest.approx(0.50, abs=0.02)
    np.testing.assert_array_equal(roles, protocol_split(patients, seed=0))
    assert not np.array_equal(roles, protocol_split(patients, seed=1))
    # a patient's role does not depend on the order of the lesions
    perm = rng.permutation(len(patients))
    np.testing.assert_array_equal(protocol_split(patients[perm], seed=0), roles[perm])


def test_classification_protocol_separable_and_errors():
    rng = np.random.default_rng(1)
    types = np.repeat(np.arange(1, 9), 40)
    patients = np.arange(len(types))
    roles = protocol_split(patients)
    good = np.eye(8)[types - 1] * 3 + rng.normal(0, 0.3, (len(types), 8))
    res = classification_accuracy(good, types, roles)
    assert res["accuracy"] > 0.95
    assert res["n_seed"] + res["n_val"] + res["n_test"] == len(types)
    noise = rng.normal(size=(len(types), 8))
    assert classification_accuracy(noise, types, roles)["accuracy"] < 0.35
    # unlabelled lesions (-1) are ignored
    t2 = types.copy()
    t2[::2] = -1
    assert classification_accuracy(good, t2, roles)["n_test"] < res["n_test"]
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(LabError, match="row 3 has NaN"):
        classification_accuracy(bad, types, roles)
    with pytest.raises(ProtocolError, match="at least 2 types among the seeds"):
        classification_accuracy(good, np.where(roles == "seed", 1, types), roles)


def test_retrieval_scores_perfect_and_chance():
    types = np.repeat([1, 2, 3, 4], 25)
    patients = np.arange(100) // 2
    loc = np.random.default_rng(0).random((100, 3))
    sizes = np.full(100, 10.0)
    X = np.eye(4)[types - 1] + np.random.default_rng(1).normal(0, 0.01, (100, 4))
    r = retrieval_scores(X, types, patients, loc, sizes)
    assert r["type_precision_at_5"] == 1.0 and r["type_precision_at_10"] == 1.0
    assert r["type_precision_at_5_other_patients"] == 1.0
    assert r["chance_type_precision"] == pytest.approx(0.25)
    assert r["size_difference_at_5"] == 0.0
    Xr = np.random.default_rng(2).normal(size=(100, 4))
    rr = retrieval_scores(Xr, types, patients, loc, sizes)
    assert rr["type_precision_at_5"] < 0.5
    with pytest.raises(ProtocolError):
        retrieval_scores(X, np.full(100, -1), patients, loc, sizes)


def test_mining_scores():
    true = np.array([1, 1, 2, 2, 3, 3, -1])
    clusters = np.array([0, 0, 1, 1, 1, 2, 2])
    labels = np.array(["bone", "bone", "abdomen", "abdomen", "abdomen", "mediastinum", "x"])
    unseen = np.array([True, False, True, False, True, False, True])
    m = mining_scores(clusters, labels, true, unseen)
    assert m["n_evaluated"] == 6
    assert m["purity"] == pytest.approx(5 / 6)
    assert m["label_accuracy"] == pytest.approx(5 / 6)
    assert m["label_accuracy_unseen"] == pytest.approx(2 / 3)
    assert m["chance_label_accuracy"] == pytest.approx(1 / 3)


def test_raw_intensity_features():
    p = np.zeros((2, 3, 64, 64), dtype=np.uint8)
    p[1, :, :32] = 255
    f = raw_intensity_features(p, grid=8)
    assert f.shape == (2, 192)
    assert f[0].max() == 0 and f[1].reshape(3, 8, 8)[:, :4].min() == 1.0


def test_true_types_join(tmp_path):
    df = pd.DataFrame({"lesion_id": ["a", "b", "c"], "coarse_type": [-1, 4, -1]})
    codes, _ = true_types(df)
    assert codes.tolist() == [-1, 4, -1]
    pd.DataFrame({"lesion_id": ["a", None, "zz"], "coarse_type": [5, 2, 3]}).to_parquet(
        tmp_path / "truth.parquet"
    )
    codes, src = true_types(df, tmp_path / "truth.parquet")
    assert codes.tolist() == [5, 4, -1] and "1 of 3" in src
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LabError, match="bad.parquet: truth file lacks column"):
        true_types(df, tmp_path / "bad.parquet")
    with pytest.raises(LabError, match="not found"):
        true_types(df, tmp_path / "none.parquet")


def test_location_only_baseline_on_real_deeplesion(real_dir):
    """The paper's location-only baseline (59.7%) on the real test split's metadata."""
    les = read_dl_info(real_dir / "DL_info_test.csv").lesions
    assert len(les) == 4927
    X = location_features(les)
    types = les["coarse_type"].to_numpy()
    accs = []
    for seed in range(3):
        roles = protocol_split(les["patient_index"].to_numpy(), seed=seed)
        res = classification_accuracy(X, types, roles)
        assert res["n_test"] == pytest.approx(0.5 * len(les), rel=0.06)
        accs.append(res["accuracy"])
    # the paper reports 0.597; a linear classifier on (x, y, z) lands close to it
    assert abs(np.mean(accs) - PAPER_LOCATION_ONLY_ACCURACY) < 0.05, accs
    # far above always answering the commonest type (abdomen, 24%)
    assert min(accs) > 0.45


def test_ranking_scores_by_hand():
    from deeplesion_lab.suggest import ranking_scores

    score = np.array([4.0, 3.0, 2.0, 1.0])
    wrong = np.array([True, False, True, False])
    r = ranking_scores(score, wrong, ks=(1, 2))
    # pairs (wrong, right) ranked right: (0,1) (0,3) (2,3); wrong: (2,1) -> 3/4
    assert r["auroc"] == pytest.approx(0.75)
    assert r["precision_at_1"] == 1.0 and r["precision_at_2"] == 0.5
    assert r["reviews_to_half"] == 1 and r["n_wrong"] == 2 and r["wrong_rate"] == 0.5
    assert r["random_reviews_to_half"] == pytest.approx(1 * 5 / 3)
    flipped = ranking_scores(-score, wrong, ks=(1,))
    assert flipped["auroc"] == pytest.approx(0.25) and flipped["reviews_to_half"] == 2
    with pytest.raises(LabError, match="same 1-D shape"):
        ranking_scores(score, wrong[:3])


def test_confident_learning_finds_flipped_labels():
    from sklearn.datasets import make_blobs

    from deeplesion_lab.suggest import confident_learning_scores

    X, y = make_blobs(n_samples=120, centers=3, n_features=8, cluster_std=1.0, random_state=4)
    names = np.array(["a", "b", "c"], dtype=object)[y]
    flip = np.arange(0, 120, 20)  # 6 lesions get the next class's name
    noisy = names.copy()
    noisy[flip] = np.array(["a", "b", "c"], dtype=object)[(y[flip] + 1) % 3]
    cl = confident_learning_scores(X, noisy, seed=0)
    assert list(cl.columns) == ["self_confidence", "issue", "score"] and len(cl) == 120
    assert cl["issue"].to_numpy()[flip].all()
    top = np.argsort(-cl["score"].to_numpy(), kind="stable")[: len(flip)]
    assert set(top) == set(flip)
    assert cl["self_confidence"].between(0, 1).all()


def test_suggest_scores_against_baselines():
    from sklearn.datasets import make_blobs

    from deeplesion_lab.evaluation import suggest_scores

    X, y = make_blobs(n_samples=90, centers=3, n_features=8, cluster_std=1.0, random_state=5)
    true = y + 1  # type codes 1-3
    labels = np.array([COARSE_TYPES[int(t)] for t in true], dtype=object)
    wrong = np.arange(0, 90, 9)
    labels[wrong] = COARSE_TYPES[4]
    ids = np.array([f"L{i}" for i in range(90)], dtype=object)
    s = suggest_scores(ids, X, y, labels, np.full(90, 0.5), true, ks=(10,))
    assert s["n"] == 90 and s["n_wrong"] == len(wrong)
    assert s["random_precision"] == pytest.approx(len(wrong) / 90)
    for key in ("auroc", "precision_at_10", "confident_learning_auroc",
                "confident_learning_precision_at_10"):
        assert 0.0 <= s[key] <= 1.0, key
    # a label that disagrees with every neighbour is found first by both
    assert s["auroc"] > 0.9 and s["confident_learning_auroc"] > 0.9
    with pytest.raises(ProtocolError, match="right and wrong labels"):
        suggest_scores(ids, X, y, np.array([COARSE_TYPES[int(t)] for t in true]),
                       np.full(90, 0.5), true)
