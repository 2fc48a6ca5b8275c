"""UMAP maps (PCA first, fixed seed, cached by embedding hash) and similar-lesion retrieval."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from deeplesion_lab.errors import LabError
from deeplesion_lab.maps import LesionMap, embedding_hash
from deeplesion_lab.retrieval import LesionIndex


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=4, n_features=64, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


def test_map_is_cached_by_embedding_hash(blobs, tmp_path):
    X, y = blobs
    cache = tmp_path / "umap"
    m = LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, cache_dir=cache).fit(X)
    assert m.embedding_.shape == (240, 2) and not m.cache_hit_
    assert np.isfinite(m.embedding_).all()
    assert len(list(cache.glob("umap-*.npy"))) == 1 and len(list(cache.glob("umap-*.npz"))) == 1
    # the 4 blobs stay apart on the map: each point's nearest map neighbour is in its blob
    d = ((m.embedding_[:, None] - m.embedding_[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    t = time.perf_counter()
    again = LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, cache_dir=cache).fit(X)
    assert again.cache_hit_ and time.perf_counter() - t < 1.0
    np.testing.assert_array_equal(again.embedding_, m.embedding_)
    # other embeddings or other settings: another cache entry
    other = LesionMap(n_neighbors=12, pca_components=16, n_epochs=60, cache_dir=cache)
    assert other._key(X) != again.key_
    assert embedding_hash(X) != embedding_hash(X + 1e-3)


def test_map_is_reproducible_with_a_seed(blobs):
    X, _ = blobs
    a = LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, seed=3).fit_transform(X)
    b = LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, seed=3).fit_transform(X)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_map_transform_places_new_lesions(blobs, tmp_path):
    X, y = blobs
    cache = tmp_path / "umap"
    LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, cache_dir=cache).fit(X[:200])
    cached = LesionMap(n_neighbors=10, pca_components=16, n_epochs=60, cache_dir=cache)
    cached.fit(X[:200])
    assert cached.cache_hit_
    new = cached.transform(X[200:])  # reducers read from the cache on demand
    assert new.shape == (40, 2)
    centres = np.array([cached.embedding_[y[:200] == c].mean(0) for c in range(4)])
    nearest = ((new[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == y[200:]).mean() > 0.9


def test_map_bad_input(blobs):
    X, _ = blobs
    bad = X.copy()
    bad[5, 0] = np.nan
    with pytest.raises(LabError, match="row 5 has NaN"):
        LesionMap().fit(bad)
    with pytest.raises(LabError, match="at least 3"):
        LesionMap().fit(X[:2])
    with pytest.raises(LabError, match="not fitted"):
        LesionMap().transform(X)


@pytest.fixture(scope="module")
def index_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 32)).astype(np.float32)
    ids = np.array([f"L{i:04d}" for i in range(500)], dtype=object)
    patients = np.repeat(np.arange(100), 5)
    return X, ids, patients


def test_query_matches_brute_force(index_data):
    X, ids, patients = index_data
    index = LesionIndex().fit(X, ids, patients)
    res = index.query("L0042", k=10)
    d = np.linalg.norm(X - X[42], axis=1)
    d[42] = np.inf
    order = np.argsort(d)[:10]
    assert res["lesion_id"].tolist() == ids[order].tolist()
    np.testing.assert_allclose(res["distance"], d[order], rtol=1e-4)
    assert res["rank"].tolist() == list(range(1, 11))
    assert "L0042" not in res["lesion_id"].tolist()
    # a vector query finds the lesion itself first
    v = index.query(X[42], k=3)
    assert v["lesion_id"].iloc[0] == "L0042" and v["distance"].iloc[0] < 1e-3


def test_query_restricted_by_patient(index_data):
    X, ids, patients = index_data
    index = LesionIndex().fit(X, ids, patients)
    other = index.query("L0042", k=20, restrict="other_patients")
    assert (other["patient_index"] != patients[42]).all() and len(other) == 20
    same = index.query("L0042", k=20, restrict="same_patient")
    assert len(same) == 4  # the patient's 4 other lesions, no more
    assert (same["patient_index"] == patients[42]).all()
    assert same["distance"].is_monotonic_increasing
    d, nb = index.kneighbors(np.array([42, 7]), k=6, restrict="same_patient")
    assert (nb[:, 4:] == -1).all() and np.isinf(d[:, 4:]).all()


def test_query_bad_input(index_data):
    X, ids, patients = index_data
    index = LesionIndex().fit(X, ids, patients)
    with pytest.raises(LabError, match="not in the index"):
        index.query("nope")
    with pytest.raises(LabError, match="restrict"):
        index.query("L0001", restrict="same_study")
    with pytest.raises(LabError, match="dimensions"):
        index.query(np.zeros(5))
    with pytest.raises(LabError, match="needs the patients"):
        LesionIndex().fit(X, ids).query("L0001", restrict="other_patients")
    bad = X.copy()
    bad[3, 3] = np.inf
    with pytest.raises(LabError, match="lesion L0003 has NaN/inf"):
        LesionIndex().fit(bad, ids)
    with pytest.raises(LabError, match="unique"):
        LesionIndex().fit(X[:2], np.array(["a", "a"], dtype=object))
