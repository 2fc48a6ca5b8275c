"""Unsupervised deep mining of lesion categories (Yan et al. 2017, "automated deep mining").

:class:`DeepClusterMiner` clusters lesion embeddings, fine-tunes the embedding network with the
cluster ids as targets, re-extracts, re-clusters, and repeats until the assignment stops changing
(normalised mutual information between successive rounds above ``stop_nmi``). Each lesion gets a
cluster and a confidence; :func:`name_clusters` names each cluster by majority vote of the
lesions of known coarse type in it, giving pseudo-labels in the 8-type taxonomy.

K is chosen over a range by a criterion (silhouette or bootstrap stability), or given.

With the known coarse types given to :meth:`DeepClusterMiner.fit` (``y``: codes 1-8, ``-1``
where unknown, as DeepLesion's DL_info has them for its val/test lesions), the lesions are
*over-clustered* (about ``lesions_per_cluster`` lesions a cluster) and the clusters whose known
members vote for the same type are merged into one pseudo-category; a cluster without a known
member stays a category of its own. On the demo (issue 15, ``bench/bench_mining_study.py``) this
raised the NMI to the true types of the lesions whose type nobody knew from 0.57 to 0.63.
``merge="vote-assign"`` puts the clusters without a known member into the nearest named one
(:func:`assign_unnamed`); ``merge="spread"`` merges the fine clusters by the types spread from
the known lesions over a kNN graph (:func:`spread_labels`, Zhou et al. 2004;
:func:`merge_by_spread`).

Examples
--------
>>> miner = DeepClusterMiner(embedder=emb).fit(patches, patches.types)   # doctest: +SKIP
>>> miner.k_scores_                                                          # doctest: +SKIP
>>> miner.pseudo_labels(patches.lesion_ids, known_types=patches.types)      # doctest: +SKIP
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin

from .errors import LabError
from .lesion_types import COARSE_TYPES
from .params import Interval, StrOptions, validate_params

__all__ = [
    "DeepClusterMiner", "MiningError", "choose_k", "name_clusters", "merge_by_known_type",
    "merge_by_spread", "assign_unnamed", "spread_labels", "knn_graph",
    "check_features",
]


class MiningError(LabError, ValueError):
    """Mining cannot run on this input (too few lesions, bad K, NaN features)."""


def check_features(X, what: str = "features", ids=None) -> np.ndarray:
    """A finite 2-D float array, or a :class:`MiningError` naming the first bad lesion."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise MiningError(f"{what} must be a 2-D array (lesions x dimensions), got shape {X.shape}")
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        who = f"lesion {ids[i]}" if ids is not None else f"row {i}"
        raise MiningError(
            f"{what}: {who} has NaN/inf values ({int(bad.sum())} lesion(s) affected)"
        )
    return X


def _kmeans(X: np.ndarray, k: int, seed: int, n_init: int = 4):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(X)


def choose_k(
    X: np.ndarray,
    k_range: tuple[int, int] = (8, 16),
    criterion: str = "silhouette",
    seed: int = 0,
    max_points: int = 4000,
) -> tuple[int, pd.DataFrame]:
    """Score every K in ``k_range`` (inclusive) and return the best with the table.

    The range is cut to ``K < number of lesions``.

    The table has ``k``, ``silhouette`` (mean silhouette on at most ``max_points`` lesions),
    ``stability`` (adjusted Rand index between k-means fits on two random halves, compared on
    all lesions) and ``inertia``. ``criterion`` picks the column to maximise.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    if criterion not in ("silhouette", "stability"):
        raise MiningError(f"unknown K criterion {criterion!r}; use 'silhouette' or 'stability'")
    n = len(X)
    hi = min(int(k_range[1]), n - 1)
    lo = min(max(int(k_range[0]), 2), hi)  # few lesions: the range shrinks to what fits
    if hi < 2:
        raise MiningError(
            f"cannot choose K in {tuple(k_range)} for {n} lesions (need 2 <= K < lesions)"
        )
    rng = np.random.default_rng(seed)
    sub = rng.choice(n, min(n, max_points), replace=False)
    rows = []
    for k in range(lo, hi + 1):
        km = _kmeans(X, k, seed)
        labels = km.labels_
        sil = (
            float(silhouette_score(X[sub], labels[sub]))
            if len(np.unique(labels[sub])) > 1 else -1.0
        )
        perm = rng.permutation(n)
        h1, h2 = perm[: n // 2], perm[n // 2 :]
        if min(len(h1), len(h2)) > k:
            a = _kmeans(X[h1], k, seed + 1, n_init=2).predict(X)
            b = _kmeans(X[h2], k, seed + 2, n_init=2).predict(X)
            stab = float(adjusted_rand_score(a, b))
        else:
            stab = float("nan")
        rows.append({"k": k, "silhouette": sil, "stability": stab, "inertia": float(km.inertia_)})
    table = pd.DataFrame(rows)
    scores = table[criterion].fillna(-np.inf).to_numpy()
    return int(table["k"].iloc[int(np.argmax(scores))]), table


def _sq_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(N, K)`` without an ``(N, K, D)`` temporary."""
    d2 = (X**2).sum(1)[:, None] + (C**2).sum(1)[None, :] - 2.0 * X @ C.T
    return np.maximum(d2, 0.0)


def _soft_confidence(
    X: np.ndarray, centers: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """Membership probability of each lesion's own cluster: softmax of ``-d^2 / T`` over the
    centroids, ``T`` the mean squared distance of lesions to their own centroid. With
    ``groups`` (the group of each centroid), the probabilities of a group's centroids add up
    and the result is the probability of the lesion's group ``groups[labels]``."""
    d2 = _sq_dist(X, centers)
    own = d2[np.arange(len(X)), labels]
    temp = max(float(own.mean()), 1e-12)
    logits = -(d2 - d2.min(1, keepdims=True)) / temp
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    if groups is None:
        return p[np.arange(len(X)), labels]
    mine = groups[None, :] == groups[labels][:, None]
    return (p * mine).sum(1)


def merge_by_known_type(
    clusters: np.ndarray, known_types: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the clusters whose lesions of known type vote for the same type.

    Parameters
    ----------
    clusters : (N,) int array
        Fine cluster ids ``0..K-1``.
    known_types : (N,) int array
        Coarse type codes 1-8, anything else unknown.

    Returns
    -------
    (groups, cluster_group)
        ``groups``: (N,) group id of each lesion, ``0..G-1``; ``cluster_group``: (K,) group of
        each fine cluster. Clusters whose majority known type (ties: the lower code) is the same
        share a group, numbered by type code; a cluster without a lesion of known type is a group
        of its own, numbered after them in cluster order.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    t = np.asarray(known_types, dtype=np.int64)
    known = np.isin(t, list(COARSE_TYPES))
    k = int(clusters.max()) + 1 if len(clusters) else 0
    vote = np.full(k, -1, dtype=np.int64)
    for c in range(k):
        m = (clusters == c) & known
        if m.any():
            codes, counts = np.unique(t[m], return_counts=True)
            vote[c] = int(codes[int(np.argmax(counts))])
    cluster_group = _groups_of_votes(vote)
    return cluster_group[clusters], cluster_group


def _groups_of_votes(vote: np.ndarray) -> np.ndarray:
    """Group of each fine cluster from its voted type code (``< 1``: no type): the clusters of
    one type share a group, numbered by type code; the others are groups of their own,
    numbered after them in cluster order."""
    types = np.unique(vote[vote >= 1])
    return np.where(
        vote >= 1, np.searchsorted(types, vote), len(types) + np.cumsum(vote < 1) - 1
    ).astype(np.int64)


def knn_graph(X: np.ndarray, n_neighbors: int = 10) -> sparse.csr_matrix:
    """Symmetric 0/1 affinity of the ``n_neighbors`` nearest lesions (cosine distance on the
    row-normalised features; ``W_ij = 1`` when either is among the other's neighbours)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(X)
    k = int(min(max(n_neighbors, 1), n - 1))
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    nbr = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)
    rows = np.repeat(np.arange(n), k)
    cols = nbr[:, 1:].reshape(-1)  # the first neighbour is the lesion itself
    A = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return A.maximum(A.T).tocsr()


def spread_labels(
    X: np.ndarray,
    known_types: np.ndarray,
    n_neighbors: int = 10,
    alpha: float = 0.99,
    class_mass: bool = False,
    tol: float = 1e-6,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Label spreading over a kNN graph (Zhou et al. 2004, "Learning with local and global
    consistency"), seeded with the known types.

    ``F = (1 - alpha) (I - alpha S)^-1 Y`` with ``S = D^-1/2 W D^-1/2`` the normalised
    :func:`knn_graph` and ``Y`` the one-hot known types, solved by conjugate gradients (the
    matrix is symmetric positive definite), so it scales with the graph's edges.

    Parameters
    ----------
    X : (N, D) array
    known_types : (N,) int array
        Coarse type codes 1-8, anything else unknown.
    n_neighbors : int, default 10
    alpha : float, default 0.99
        Share of a lesion's score taken from its neighbours (0-1, the paper's 0.99).
    class_mass : bool, default False
        Class mass normalisation (Zhu et al. 2003): each type's scores rescaled so that their
        total over the lesions is that type's share of the known lesions (a frequent type's
        scores otherwise flood the graph at large ``alpha``).
    tol, max_iter
        Conjugate-gradient tolerance and iterations.

    Returns
    -------
    (types, scores)
        ``types``: (N,) spread type code of each lesion (a known lesion keeps its own type;
        -1 where no known lesion is reachable through the graph); ``scores``: (N, 8) ``F``,
        columns the type codes 1-8, rows normalised to sum 1 (0 where unreachable).
    """
    from scipy.sparse.linalg import cg

    if not 0.0 < float(alpha) < 1.0:
        raise MiningError(f"alpha must be in (0, 1), got {alpha}")
    t = np.asarray(known_types, dtype=np.int64)
    n = len(X)
    codes = np.array(sorted(COARSE_TYPES), dtype=np.int64)
    known = np.isin(t, codes)
    Y = np.zeros((n, len(codes)))
    Y[np.flatnonzero(known), np.searchsorted(codes, t[known])] = 1.0
    W = knn_graph(np.asarray(X, dtype=np.float64), n_neighbors)
    deg = np.asarray(W.sum(1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    S = sparse.diags(dinv) @ W @ sparse.diags(dinv)
    M = (sparse.identity(n, format="csr") - float(alpha) * S).tocsr()
    F = np.zeros_like(Y)
    for j in range(len(codes)):
        if Y[:, j].any():
            F[:, j], _ = cg(M, (1.0 - alpha) * Y[:, j], rtol=tol, maxiter=max_iter)
    F = np.maximum(F, 0.0)
    if class_mass:
        mass = F.sum(0)
        prior = Y.sum(0) / max(Y.sum(), 1.0)
        F = F * np.divide(prior, mass, out=np.zeros_like(mass), where=mass > 1e-300)
    tot = F.sum(1, keepdims=True)
    F = np.divide(F, tot, out=np.zeros_like(F), where=tot > 1e-300)
    out = np.where(tot[:, 0] > 1e-300, codes[F.argmax(1)], -1)
    out[known] = t[known]
    return out, F


def assign_unnamed(
    cluster_group: np.ndarray, fine: np.ndarray, known_types: np.ndarray, centers: np.ndarray,
    X: np.ndarray | None = None, by: str = "centroid", n_neighbors: int = 10,
) -> np.ndarray:
    """The groups of :func:`merge_by_known_type` with every fine cluster that had no known
    member moved into a named group: the group of the nearest named fine centre (``by=
    "centroid"``), or the type most of its lesions' ``n_neighbors`` nearest known lesions carry
    (``by="knn"``, needs ``X``). Returns the new ``cluster_group`` (groups renumbered
    ``0..G-1``, G the known types present); unchanged when no cluster is named."""
    cg_ = np.asarray(cluster_group, dtype=np.int64).copy()
    fine = np.asarray(fine, dtype=np.int64)
    t = np.asarray(known_types, dtype=np.int64)
    known = np.isin(t, list(COARSE_TYPES))
    named = np.unique(fine[known])
    if len(named) == 0:
        return cg_
    unnamed = np.setdiff1d(np.arange(len(cg_)), named)
    if by == "centroid":
        for c in unnamed:
            d = ((centers[named] - centers[c]) ** 2).sum(1)
            cg_[c] = cg_[named[int(np.argmin(d))]]
    elif by == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        if X is None:
            raise MiningError("assign_unnamed(by='knn') needs the features X")
        # the group each known lesion's fine cluster was merged into
        kn = KNeighborsClassifier(min(n_neighbors, int(known.sum()))).fit(
            X[known], cg_[fine[known]])
        for c in unnamed:
            m = fine == c
            votes = kn.predict(X[m])
            g, cnt = np.unique(votes, return_counts=True)
            cg_[c] = int(g[int(np.argmax(cnt))])
    else:
        raise MiningError(f"unknown assignment {by!r}; use 'centroid' or 'knn'")
    return cg_


def merge_by_spread(
    clusters: np.ndarray, scores: np.ndarray, min_share: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Merge fine clusters by the type their lesions' spread scores favour.

    Parameters
    ----------
    clusters : (N,) int array
        Fine cluster ids ``0..K-1``.
    scores : (N, T) array
        Per-lesion type scores, e.g. those of :func:`spread_labels` (column ``j``: type code
        ``j + 1``).
    min_share : float, default 0.5
        A cluster joins the group of the type with the largest summed score when that type has
        at least this share of the cluster's summed scores; otherwise (or with no score at all)
        it stays a group of its own.

    Returns
    -------
    (groups, cluster_group)
        As :func:`merge_by_known_type`: groups of the types numbered by type code, then the
        clusters kept apart in cluster order.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    k = int(clusters.max()) + 1 if len(clusters) else 0
    tot = np.zeros((k, scores.shape[1]))
    np.add.at(tot, clusters, np.asarray(scores, dtype=np.float64))
    s = tot.sum(1)
    best = tot.argmax(1)
    ok = (s > 1e-300) & (tot.max(1) >= float(min_share) * s)
    cluster_group = _groups_of_votes(np.where(ok, best + 1, -1))
    return cluster_group[clusters], cluster_group


def name_clusters(
    clusters: np.ndarray,
    known_types: np.ndarray,
    centers: np.ndarray | None = None,
) -> tuple[dict[int, str], dict[int, float]]:
    """Name each cluster by the majority coarse type of its lesions of known type.

    Parameters
    ----------
    clusters : (N,) int array
    known_types : (N,) int array
        Coarse type codes 1-8; anything else (e.g. -1) counts as unknown.
    centers : (K, D) array, optional
        Cluster centres; a cluster without any lesion of known type takes the name of the
        nearest named cluster (with vote share 0). Without centres it takes the overall majority.

    Returns
    -------
    (dict cluster -> type name, dict cluster -> vote share of the winning type)

    Raises
    ------
    MiningError
        No lesion has a known type, so no cluster can be named.
    """
    clusters = np.asarray(clusters)
    t = np.asarray(known_types, dtype=np.int64)
    known = np.isin(t, list(COARSE_TYPES))
    if not known.any():
        raise MiningError(
            "no lesion of known coarse type to name the clusters (DeepLesion's val/test lesions "
            "carry types; train lesions are -1)"
        )
    names: dict[int, str] = {}
    share: dict[int, float] = {}
    ids = np.unique(clusters)
    for c in ids:
        m = (clusters == c) & known
        if m.any():
            codes, counts = np.unique(t[m], return_counts=True)
            best = int(np.argmax(counts))  # ties: the lower code, deterministic
            names[int(c)] = COARSE_TYPES[int(codes[best])]
            share[int(c)] = float(counts[best] / counts.sum())
    overall = COARSE_TYPES[int(np.bincount(t[known]).argmax())]
    named = sorted(names)
    for c in ids:
        if int(c) in names:
            continue
        if centers is not None and named:
            d = ((centers[named] - centers[int(c)]) ** 2).sum(1)
            names[int(c)] = names[named[int(np.argmin(d))]]
        else:
            names[int(c)] = overall
        share[int(c)] = 0.0
    return names, share


class DeepClusterMiner(ClusterMixin, BaseEstimator):
    """Iterative deep clustering of lesions into pseudo-categories.

    Parameters
    ----------
    n_clusters : int, optional
        K; when None it is chosen over ``k_range`` by ``criterion`` (user override: give it;
        then the result has exactly K clusters: no over-clustering, no merging).
    k_range : (int, int), default (8, 16)
        Inclusive range of K to score (cut to K < lesions). It starts at the 8 coarse types:
        fewer clusters cannot give every type one, and several clusters may share a type name.
    criterion : {"silhouette", "stability"}, default "silhouette"
    lesions_per_cluster : float or None, default 8.0
        Only when :meth:`fit` is given known types and K is chosen: the lesions are clustered
        into ``max(K, min(round(N / lesions_per_cluster), max_fine_clusters))`` fine clusters,
        which are then merged by the majority known type of their members
        (:func:`merge_by_known_type`). None: K clusters, no merging. On the demo (24 and 40
        patients, 150-330 lesions, 30 % of known type) 8 gave the best NMI to the true types
        of the lesions of unknown type among 5-12 (``bench/results/embedding.md``).
    max_fine_clusters : int, default 256
        Cap of the fine clusters (k-means time grows with them: at DeepLesion's 32,735 lesions
        8 lesions a cluster would be 4,092 clusters).
    merge : {"vote", "vote-assign", "spread"}, default "vote"
        How the fine clusters are merged by the known types. ``"vote"``: by the majority known
        type of their members; a cluster without a known member stays a group of its own
        (:func:`merge_by_known_type`). ``"vote-assign"``: the same, then each cluster without a
        known member joins the group of the nearest named fine centre (:func:`assign_unnamed`),
        so there are only as many groups as known types. ``"spread"``: the known types are
        spread over the lesions' kNN graph (:func:`spread_labels`, Zhou et al. 2004) and each
        fine cluster joins the type its lesions' scores favour when that type has at least half
        of them, else it stays apart (:func:`merge_by_spread`). On the demo (eight 40-patient and
        seven 24-patient seeds) "spread" was level with "vote" in NMI to the true types of the
        lesions of unknown type, better on some seeds and worse on others, with a lower purity;
        "vote-assign" was lower in both (``bench/results/embedding.md``, 2026-12-07 session 9).
    spread_neighbors : int, default 10
        Neighbours of the kNN graph of ``merge="spread"``.
    spread_alpha : float, default 0.5
        ``alpha`` of :func:`spread_labels` with ``merge="spread"`` (0-1; 0.9 and 0.99 let the
        frequent types flood the graph on the demo).
    embedder : LesionEmbedder, optional
        With an embedder, :meth:`fit` takes a :class:`~deeplesion_lab.embedding.PatchSet` and
        runs deep rounds (fine-tune on cluster ids, re-extract, re-cluster) on a copy of it;
        without one, :meth:`fit` clusters the given feature array once.
    max_rounds : int, default 1
        Deep rounds at most (with an embedder). Without merging, the first round kept or raised
        the NMI to the true types on the demo and later rounds lowered it (fine-tuning on its
        own cluster ids drifts); with the clusters merged by known type even the first round
        lowered it, so ``mine`` runs none by default. A round fine-tunes on the (merged)
        pseudo-categories.
    finetune_epochs : int, default 1
        Fine-tuning epochs per round.
    stop_nmi : float, default 0.95
        Stop when the NMI between successive assignments reaches this (above 1: run every
        round).
    seed : int, default 0
    progress : bool, default False

    Attributes
    ----------
    labels_ : (N,) int array
        Cluster (pseudo-category: merged group with known types) of each lesion.
    confidence_ : (N,) float array
        Membership probability of the lesion's cluster (0-1; with merging, the summed
        probability of the group's fine clusters).
    cluster_centers_ : (K, D) array
        Mean features of each cluster's lesions.
    n_clusters_ : int
        Clusters in ``labels_`` (after merging).
    fine_labels_ : (N,) int array
        Fine cluster of each lesion (``labels_`` itself without merging).
    fine_centers_ : (K_fine, D) array
    fine_to_cluster_ : (K_fine,) int array
        Cluster of each fine cluster (identity without merging).
    n_fine_clusters_ : int
    merged_ : bool
        Whether the fine clusters were merged by known type (known types given, K chosen,
        ``lesions_per_cluster`` set).
    k_scores_ : pandas.DataFrame or None
        The K criterion table (None when K was given).
    round_nmi_ : list of float
        NMI between the assignments of successive rounds.
    n_rounds_ : int
        Deep rounds run.
    round_labels_ : list of (N,) int arrays
        The assignment before the first deep round and after each round (``n_rounds_ + 1``
        arrays), e.g. to score every round against a truth.
    features_ : (N, D) array
        Features of the final clustering.
    embedder_ : LesionEmbedder or None
        The fine-tuned copy of ``embedder``.
    """

    _parameter_constraints: dict = {
        "n_clusters": [None, Interval(Integral, 2, None, closed="left")],
        "k_range": [tuple, list],
        "criterion": [StrOptions({"silhouette", "stability"})],
        "lesions_per_cluster": [None, Interval(Real, 1, None, closed="left")],
        "max_fine_clusters": [Interval(Integral, 2, None, closed="left")],
        "merge": [StrOptions({"vote", "vote-assign", "spread"})],
        "spread_neighbors": [Interval(Integral, 1, None, closed="left")],
        "spread_alpha": [Interval(Real, 0, 1, closed="neither")],
        "embedder": "no_validation",
        "max_rounds": [Interval(Integral, 0, None, closed="left")],
        "finetune_epochs": [Interval(Integral, 0, None, closed="left")],
        "stop_nmi": [Interval(Real, 0, None, closed="left")],  # above 1: never stops early
        "seed": [Interval(Integral, 0, None, closed="left")],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        n_clusters: int | None = None,
        k_range: tuple[int, int] = (8, 16),
        criterion: str = "silhouette",
        lesions_per_cluster: float | None = 8.0,
        max_fine_clusters: int = 256,
        merge: str = "vote",
        spread_neighbors: int = 10,
        spread_alpha: float = 0.5,
        embedder=None,
        max_rounds: int = 1,
        finetune_epochs: int = 1,
        stop_nmi: float = 0.95,
        seed: int = 0,
        progress: bool = False,
    ):
        self.n_clusters = n_clusters
        self.k_range = k_range
        self.criterion = criterion
        self.lesions_per_cluster = lesions_per_cluster
        self.max_fine_clusters = max_fine_clusters
        self.merge = merge
        self.spread_neighbors = spread_neighbors
        self.spread_alpha = spread_alpha
        self.embedder = embedder
        self.max_rounds = max_rounds
        self.finetune_epochs = finetune_epochs
        self.stop_nmi = stop_nmi
        self.seed = seed
        self.progress = progress

    def _features(self, X) -> np.ndarray:
        if self.embedder is None:
            return check_features(X)
        from .embedding.dataset import PatchSet

        if not isinstance(X, PatchSet):
            raise MiningError(
                "with an embedder, DeepClusterMiner.fit expects a PatchSet, got "
                f"{type(X).__name__}"
            )
        return check_features(self.embedder_.transform(X), "embeddings", X.lesion_ids)

    def _cluster(self, feats: np.ndarray, k: int, seed: int, y: np.ndarray | None):
        """(labels, fine labels, fine centres, fine -> cluster) of one clustering; sets
        ``merged_``."""
        n = len(feats)
        merge = (y is not None and self.lesions_per_cluster is not None
                 and self.n_clusters is None)
        self.merged_ = merge
        k_fine = k
        if merge:
            per = int(round(n / float(self.lesions_per_cluster)))
            k_fine = min(max(k, min(per, int(self.max_fine_clusters))), n)
        km = _kmeans(feats, k_fine, seed)
        fine = np.asarray(km.labels_, dtype=np.int64)
        if not merge:
            return fine, fine, km.cluster_centers_, np.arange(k_fine, dtype=np.int64)
        if self.merge == "spread":
            _, scores = spread_labels(feats, y, self.spread_neighbors, self.spread_alpha)
            groups, fine_to = merge_by_spread(fine, scores, 0.5)
        else:
            groups, fine_to = merge_by_known_type(fine, y)
            if self.merge == "vote-assign":
                fine_to = assign_unnamed(fine_to, fine, y, km.cluster_centers_)
                groups = fine_to[fine]
        return groups, fine, km.cluster_centers_, fine_to

    def fit(self, X, y=None) -> DeepClusterMiner:
        """Cluster (and, with an embedder, refine) the lesions of ``X``.

        Parameters
        ----------
        X : (N, D) features, or a PatchSet with an embedder
        y : (N,) int array, optional
            Known coarse type codes (1-8; ``-1`` or any other value: unknown). With them (and
            ``lesions_per_cluster``) the fine clusters are merged by known type; they are never
            needed, and lesions without a known type are clustered all the same.
        """
        from sklearn.metrics import normalized_mutual_info_score
        from tqdm.auto import tqdm

        validate_params(self, MiningError)
        k_range = tuple(self.k_range)
        if (len(k_range) != 2 or not all(isinstance(k, Integral) for k in k_range)
                or not 2 <= k_range[0] <= k_range[1]):
            raise MiningError(
                f"k_range must be (smallest K, largest K) with 2 <= smallest <= largest, "
                f"got {self.k_range!r}"
            )
        n = len(X)
        if n < 2:
            raise MiningError(f"mining needs at least 2 lesions, got {n}")
        if self.n_clusters is not None and not 2 <= int(self.n_clusters) <= n:
            raise MiningError(
                f"K={self.n_clusters} clusters is impossible for {n} lesions "
                f"(need 2 <= K <= {n})"
            )
        if y is not None:
            y = np.asarray(y)
            if y.shape != (n,):
                raise MiningError(f"{len(y)} known types for {n} lesions")
            y = np.where(np.isin(y, list(COARSE_TYPES)), y, -1).astype(np.int64)
            if not (y >= 1).any():
                y = None  # nothing to merge by
        self.embedder_ = self.embedder.copy() if self.embedder is not None else None
        if self.embedder_ is not None:
            self.embedder_.progress = False
        feats = self._features(X)
        if self.n_clusters is None:
            k, self.k_scores_ = choose_k(feats, self.k_range, self.criterion, self.seed)
        else:
            k, self.k_scores_ = int(self.n_clusters), None
        labels, fine, centers, fine_to = self._cluster(feats, k, self.seed, y)
        self.round_nmi_ = []
        self.round_labels_ = [np.asarray(labels, dtype=np.int64)]
        self.n_rounds_ = 0
        if self.embedder_ is not None:
            bar = tqdm(range(int(self.max_rounds)), desc="deep clustering", unit="round",
                       disable=not self.progress)
            for r in bar:
                self.embedder_.fine_tune_classes(X, labels, epochs=self.finetune_epochs)
                feats = self._features(X)
                new, fine, centers, fine_to = self._cluster(feats, k, self.seed + r + 1, y)
                nmi = float(normalized_mutual_info_score(labels, new))
                labels = new
                self.round_nmi_.append(nmi)
                self.round_labels_.append(np.asarray(labels, dtype=np.int64))
                self.n_rounds_ = r + 1
                bar.set_postfix(nmi=f"{nmi:.3f}")
                if nmi >= self.stop_nmi:
                    break
        self.features_ = feats
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.fine_labels_ = fine
        self.fine_centers_ = np.asarray(centers)
        self.fine_to_cluster_ = np.asarray(fine_to, dtype=np.int64)
        self.n_fine_clusters_ = int(len(self.fine_centers_))
        self.n_clusters_ = int(self.fine_to_cluster_.max()) + 1
        self.cluster_centers_ = np.stack([
            feats[self.labels_ == c].mean(0) if (self.labels_ == c).any()
            else self.fine_centers_[self.fine_to_cluster_ == c].mean(0)
            for c in range(self.n_clusters_)
        ]) if self.merged_ else self.fine_centers_
        self.confidence_ = _soft_confidence(
            feats, self.fine_centers_, self.fine_labels_,
            self.fine_to_cluster_ if self.merged_ else None,
        )
        return self

    def predict(self, X) -> np.ndarray:
        """Cluster of the nearest fine cluster centre for new lesions (features, or patches with
        an embedder)."""
        if not hasattr(self, "cluster_centers_"):
            raise MiningError("DeepClusterMiner is not fitted; call fit first")
        feats = self._features(X)
        if feats.shape[1] != self.fine_centers_.shape[1]:
            raise MiningError(
                f"features have {feats.shape[1]} dimensions, the clusters "
                f"{self.fine_centers_.shape[1]}"
            )
        return self.fine_to_cluster_[_sq_dist(feats, self.fine_centers_).argmin(1)]

    def pseudo_labels(self, lesion_ids, known_types) -> pd.DataFrame:
        """``lesion_id, cluster, label, confidence`` for the fitted lesions.

        ``label`` is the majority known type of the cluster (see :func:`name_clusters`);
        ``confidence`` is the cluster membership probability times the vote share of that type
        in the cluster (0 for a cluster named after its nearest neighbour).
        """
        if not hasattr(self, "labels_"):
            raise MiningError("DeepClusterMiner is not fitted; call fit first")
        ids = np.asarray(lesion_ids, dtype=object)
        if len(ids) != len(self.labels_):
            raise MiningError(f"{len(ids)} lesion ids for {len(self.labels_)} clustered lesions")
        names, share = name_clusters(self.labels_, known_types, self.cluster_centers_)
        self.cluster_names_, self.vote_share_ = names, share
        conf = self.confidence_ * np.array([share[int(c)] for c in self.labels_])
        return pd.DataFrame({
            "lesion_id": pd.array(ids.astype(str), dtype="string"),
            "cluster": self.labels_.astype(np.int64),
            "label": pd.array([names[int(c)] for c in self.labels_], dtype="string"),
            "confidence": np.clip(conf, 0.0, 1.0).astype(np.float64),
        })
