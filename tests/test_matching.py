"""Intra-patient lesion matching: pairs, assignment, threshold, metrics, tracks, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from graph_fixtures import synthetic_lesions
from sklearn.base import clone

from deeplesion_lab.graph import (
    GraphError,
    LesionMatcher,
    assign_pairs,
    build_tracks,
    candidate_pairs,
    matching_metrics,
    pair_labels,
    split_patients,
)
from deeplesion_lab.graph.matching import _f1_curve


def _split(X, y, s):
    m = (X["split"] == s).to_numpy()
    return X.loc[m].reset_index(drop=True), y[m]


@pytest.fixture(scope="module")
def hard():
    """Noisy embeddings and locations: neither cue alone separates the pairs perfectly."""
    return synthetic_lesions(150, seed=3, emb_noise=1.1, loc_noise=0.04)


def test_candidate_pairs_are_all_cross_study_pairs_of_one_patient():
    X, _ = synthetic_lesions(12, seed=1)
    pairs = candidate_pairs(X)
    expect = {
        (i, j)
        for i, j in itertools.combinations(range(len(X)), 2)
        if X.patient_index[i] == X.patient_index[j] and X.study_index[i] != X.study_index[j]
    }
    got = {tuple(sorted(p)) for p in zip(pairs["a"], pairs["b"], strict=True)}
    assert got == expect and len(pairs) == len(expect)
    assert (pairs["study_a"] < pairs["study_b"]).all()
    # features recomputed directly for a few pairs
    ecols = [f"e{i}" for i in range(16)]
    for r in pairs.sample(10, random_state=0).itertuples():
        va, vb = X.loc[r.a, ecols].to_numpy(float), X.loc[r.b, ecols].to_numpy(float)
        cos = va @ vb / np.linalg.norm(va) / np.linalg.norm(vb)
        assert r.embedding_distance == pytest.approx(1 - cos, abs=1e-5)
        la = X.loc[r.a, ["location_x", "location_y", "location_z"]].to_numpy(float)
        lb = X.loc[r.b, ["location_x", "location_y", "location_z"]].to_numpy(float)
        assert r.location_distance == pytest.approx(np.linalg.norm(la - lb))
        sa, sb = X.long_diameter_px[r.a], X.long_diameter_px[r.b]
        assert r.size_log_ratio == pytest.approx(abs(np.log(sa / sb)))


def test_matcher_fit_on_validation_generalizes_to_test_patients(hard):
    X, y = hard
    Xv, yv = _split(X, y, 2)
    Xt, yt = _split(X, y, 3)
    m = LesionMatcher().fit(Xv, yv)
    assert m.fitted_on_ == "labels" and 0 < m.threshold_ < 1
    # every consistency feature lowers the score
    assert (m.coef_ < 0).all()
    pairs = m.predict(Xt)
    met = matching_metrics(pairs, pair_labels(pairs, yt))
    assert met["f1"] > 0.9 and met["auc"] > 0.95, met
    assert m.score(Xt, yt) == pytest.approx(met["f1"])
    # combining the cues beats the embedding alone on these noisy embeddings
    emb_only = LesionMatcher(features=["embedding_distance"]).fit(Xv, yv)
    assert emb_only.score(Xt, yt) < met["f1"]


def test_threshold_maximizes_f1_on_the_fit_data(hard):
    X, y = hard
    Xv, yv = _split(X, y, 2)
    m = LesionMatcher().fit(Xv, yv)
    pairs = m.predict(Xv)
    lab = pair_labels(pairs, yv)
    best = matching_metrics(pairs, lab)["f1"]
    assert best == pytest.approx(m.fit_report_["f1"])
    for t in np.linspace(0.05, 0.95, 19):
        alt = pairs.assign(match=pairs["assigned"] & (pairs["score"] >= t))
        assert matching_metrics(alt, lab)["f1"] <= best + 1e-12


def test_fixed_threshold_is_used_as_given(hard):
    X, y = hard
    Xv, yv = _split(X, y, 2)
    m = LesionMatcher(threshold=0.99).fit(Xv, yv)
    assert m.threshold_ == 0.99
    pairs = m.predict(Xv)
    assert (pairs.loc[pairs["match"], "score"] >= 0.99).all()
    assert clone(m).get_params()["threshold"] == 0.99


def test_hungarian_assignment_is_one_to_one_and_maximizes_total_score():
    # one patient, studies 1 and 2, two lesions each: greedy would take (a0,b0)=0.9 then 0.1
    pairs = pd.DataFrame({
        "a": [0, 0, 1, 1], "b": [2, 3, 2, 3], "patient_index": 1, "study_a": 1, "study_b": 2,
        "score": [0.9, 0.8, 0.85, 0.1],
    })
    got = assign_pairs(pairs)
    assert got.tolist() == [False, True, True, False]
    # a NaN score is never assigned; a lesion left alone (1 vs 2) gets at most one partner
    pairs2 = pd.DataFrame({
        "a": [0, 0, 4], "b": [2, 3, 5], "patient_index": [1, 1, 2], "study_a": 1, "study_b": 2,
        "score": [0.7, 0.6, np.nan],
    })
    assert assign_pairs(pairs2).tolist() == [True, False, False]


def test_assignment_stops_one_lesion_matching_two(hard):
    X, y = hard
    Xv, yv = _split(X, y, 2)
    free = LesionMatcher(assignment=False, threshold=0.2).fit(Xv, yv).predict(Xv)
    hung = LesionMatcher(assignment=True, threshold=0.2).fit(Xv, yv).predict(Xv)
    for p in (free, hung):
        assert p["match"].any()
    key = ["a", "study_b"]
    assert hung.loc[hung["match"]].groupby(key).size().max() == 1
    assert hung.loc[hung["match"]].groupby(["b", "study_a"]).size().max() == 1
    assert free.loc[free["match"]].groupby(key).size().max() > 1
    # and with thresholds learned either way, the assignment gives better decisions on test
    Xt, yt = _split(X, y, 3)
    f1_free = LesionMatcher(assignment=False).fit(Xv, yv).score(Xt, yt)
    f1_hung = LesionMatcher(assignment=True).fit(Xv, yv).score(Xt, yt)
    assert f1_hung > f1_free


def test_appearing_and_disappearing_lesions_stay_unmatched():
    X, y = synthetic_lesions(60, seed=5, p_seen=0.6)
    Xv, yv = _split(X, y, 2)
    Xt, yt = _split(X, y, 3)
    m = LesionMatcher().fit(Xv, yv)
    pairs = m.predict(Xt)
    lab = pair_labels(pairs, yt)
    # lesions whose track is seen in one study only: a real "new/gone" lesion
    counts = pd.Series(yt).map(pd.Series(yt).value_counts())
    lonely = set(np.flatnonzero(counts.to_numpy() == 1))
    assert lonely, "fixture should hold lesions seen once"
    touched = pairs.loc[pairs["match"], ["a", "b"]].to_numpy().ravel()
    assert not (set(touched) & lonely)
    assert matching_metrics(pairs, lab)["f1"] > 0.9


def test_tracks_follow_truth_and_never_hold_two_lesions_of_one_study(hard):
    X, y = hard
    Xt, yt = _split(X, y, 3)
    Xt = Xt.assign(long_diameter_mm=Xt["long_diameter_px"] * 0.8,
                   short_diameter_mm=Xt["short_diameter_px"] * 0.8)
    pairs = LesionMatcher().fit(*_split(X, y, 2)).predict(Xt)
    tr = build_tracks(Xt, pairs)
    assert len(tr) == len(Xt) and tr["lesion_id"].is_unique
    assert tr.groupby(["track_id", "study_index"]).size().max() == 1
    # time points run 1..n in study order and the size change is relative to the first
    for _, g in tr.groupby("track_id"):
        assert g["time_point"].tolist() == list(range(1, len(g) + 1))
        assert g["study_index"].is_monotonic_increasing
        assert g["size_change"].iloc[0] == pytest.approx(1.0)
        assert g["size_change"].to_numpy() == pytest.approx(
            g["long_diameter_mm"].to_numpy() / g["long_diameter_mm"].iloc[0])
        assert np.isnan(g["match_score"].iloc[0])
    # tracks mostly agree with the truth identities (purity)
    truth = pd.Series(yt, index=Xt["lesion_id"])
    pure = tr.groupby("track_id")["lesion_id"].agg(lambda s: truth[s].nunique() == 1)
    assert pure.mean() > 0.9
    assert set(tr["status"]) <= {"tracked", "single", "single-study patient"}


def test_split_patients_prefers_official_splits_then_falls_back():
    X, y = synthetic_lesions(40, seed=2)
    f, e, rule = split_patients(X, y)
    assert set(X.loc[f, "split"]) == {2} and set(X.loc[e, "split"]) == {3}
    assert "split 2" in rule
    X2 = X.assign(split=1)  # all train: nothing to use
    f, e, rule = split_patients(X2, y)
    assert "random" in rule
    assert not set(X2.loc[f, "patient_index"]) & set(X2.loc[e, "patient_index"])
    with pytest.raises(GraphError, match="cannot fit"):
        split_patients(X.iloc[:3], y[:3])


def test_single_study_patient_and_lesions_without_embedding():
    X, y = synthetic_lesions(20, seed=4)
    # patient 999 with one study only
    one = X.iloc[:3].copy()
    one["patient_index"], one["study_index"] = 999, 1
    one["lesion_id"] = [f"single-{i}" for i in range(3)]
    X = pd.concat([X, one], ignore_index=True)
    y = np.concatenate([y, np.array(["s0", "s1", "s2"], dtype=object)])
    # remove the embeddings of two lesions that have a partner in another study
    counts = pd.Series(y).map(pd.Series(y).value_counts())
    gone = np.flatnonzero((counts > 1).to_numpy())[:2]
    ecols = [c for c in X.columns if c.startswith("e") and c[1:].isdigit()]
    X.loc[gone, ecols] = np.nan
    m = LesionMatcher().fit(X, y)
    pairs = m.predict(X)
    assert not (pairs["patient_index"] == 999).any()
    bad = pairs["a"].isin(gone) | pairs["b"].isin(gone)
    assert pairs.loc[bad, "score"].isna().all() and not pairs.loc[bad, "match"].any()
    met = matching_metrics(pairs, pair_labels(pairs, y))
    assert met["n_unscored_positive_pairs"] >= 2
    assert met["recall"] < 1.0  # the unscorable positives count as misses
    Xt = X.assign(long_diameter_mm=1.0, short_diameter_mm=1.0,
                  has_embedding=np.isfinite(X[ecols]).all(axis=1))
    tr = build_tracks(Xt, pairs).set_index("lesion_id")
    assert (tr.loc[["single-0", "single-1", "single-2"], "status"] == "single-study patient").all()
    assert (tr.loc[X.loc[gone, "lesion_id"], "status"] == "no embedding").all()


def test_fit_errors_are_clear():
    X, y = synthetic_lesions(10, seed=0)
    with pytest.raises(GraphError, match="same-lesion"):
        LesionMatcher().fit(X, np.array([f"u{i}" for i in range(len(X))], dtype=object))
    with pytest.raises(GraphError, match="identities"):
        LesionMatcher().fit(X, y[:-1])
    with pytest.raises(GraphError, match="fit"):
        LesionMatcher().predict(X)
    with pytest.raises(GraphError, match="subset"):
        LesionMatcher(features=["colour"]).fit(X, y)
    with pytest.raises(GraphError, match="embedding columns"):
        candidate_pairs(X[[c for c in X.columns if not c.startswith("e")]])
    for params, name in (({"threshold": "best"}, "threshold"), ({"threshold": 1.5}, "threshold"),
                         ({"C": 0.0}, "C"), ({"assignment": 1}, "assignment"),
                         ({"features": "embedding_distance"}, "features")):
        with pytest.raises(GraphError, match=f"'{name}' parameter of LesionMatcher"):
            LesionMatcher(**params).fit(X, y)


def test_prior_without_labels_is_documented_and_usable():
    X, y = synthetic_lesions(30, seed=6)
    m = LesionMatcher().fit(X)
    assert m.fitted_on_ == "prior" and m.threshold_ == 0.5
    pairs = m.predict(X)
    assert matching_metrics(pairs, pair_labels(pairs, y))["f1"] > 0.8


def test_f1_curve_matches_brute_force():
    rng = np.random.default_rng(0)
    s = rng.random(50)
    lab = (rng.random(50) < 0.4).astype(float)
    order, prec, rec, f1 = _f1_curve(s, lab, int(lab.sum()) + 3)
    for k in (1, 10, 49):
        top = np.argsort(-s)[:k]
        tp = lab[top].sum()
        assert prec[k - 1] == pytest.approx(tp / k)
        assert rec[k - 1] == pytest.approx(tp / (lab.sum() + 3))


def test_a_study_without_usable_lesions_is_bridged():
    """All lesions of a patient's middle study lack embeddings (an empty study for the
    matcher): the lesions of the studies before and after it are still matched together."""
    X, y = synthetic_lesions(40, seed=8, p_seen=1.0, max_studies=4)
    ecols = [c for c in X.columns if c.startswith("e") and c[1:].isdigit()]
    n_st = X.groupby("patient_index")["study_index"].nunique()
    p = int(n_st[n_st >= 3].index[0])
    mid = ((X["patient_index"] == p) & (X["study_index"] == 2)).to_numpy()
    X.loc[mid, ecols] = np.nan
    m = LesionMatcher().fit(X, y)
    pairs = m.predict(X)
    mine = pairs.loc[pairs["patient_index"] == p]
    touching_mid = mine["a"].isin(np.flatnonzero(mid)) | mine["b"].isin(np.flatnonzero(mid))
    assert not mine.loc[touching_mid, "match"].any()
    bridged = mine.loc[(mine["study_a"] == 1) & (mine["study_b"] == 3) & mine["match"]]
    assert len(bridged) > 0
    assert (pair_labels(bridged, y) == 1).all()
    Xt = X.assign(has_embedding=~mid, long_diameter_mm=1.0, short_diameter_mm=1.0)
    tr = build_tracks(Xt, pairs)
    t = tr.loc[tr["patient_index"] == p]
    assert (t.loc[t["study_index"] == 2, "status"] == "no embedding").all()
    assert (t.loc[t["study_index"] != 2, "n_time_points"] >= 2).all()


def test_crossfit_evaluates_every_patient_once_and_reports_the_baselines():
    from deeplesion_lab.graph.build import BASELINES, crossfit_matching

    X, y = synthetic_lesions(24, seed=4, loc_noise=0.06)
    y = np.asarray(y, dtype=object)
    res = crossfit_matching(X, y, seed=1)
    assert res is not None and res["patients"] == X["patient_index"].nunique()
    all_pairs = candidate_pairs(X)
    n_labelled = int(np.isfinite(pair_labels(all_pairs, y)).sum())
    for name in ["f1", *(f"{k}_f1" for k in BASELINES)]:
        assert res[name]["n_pairs"] == n_labelled  # each pair evaluated exactly once
    # locations jitter as much as lesions lie apart: the embedding adds what location lacks
    assert res["f1"]["f1"] > res["location_only_f1"]["f1"]
    # too few patients with identities: no cross-fitting
    few = X["patient_index"].isin(sorted(X["patient_index"].unique())[:3]).to_numpy()
    assert crossfit_matching(X.loc[few].reset_index(drop=True), y[few]) is None
