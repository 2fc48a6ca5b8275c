"""Side-by-side study of mining candidates on the SAME saved embeddings (issue 15).

Usage::

    .venv/bin/python bench/bench_mining_study.py RUN_DIR [RUN_DIR ...] \
        [--candidates NAME ...] [--jsonl bench/results/mining_study.jsonl] [--tag TAG]

``RUN_DIR`` is a run after ``embed`` (and ``mine``: its ``pseudo_labels.parquet`` is scored as
the candidate ``current``) with a recorded truth file. Every candidate clusters the run's
``embeddings.parquet`` (no re-training; mining is cheap), optionally with the run's location,
size and the hand-made context features of ``bench_context_features.py`` (cached next to the run
as ``context_features.npy``), and is scored against the true coarse type.

Which types a candidate may use: ``sv`` candidates use the manifest's types of the protocol's
seed and val lesions only (exactly what ``embed``'s sampler is given); ``all`` candidates every
type of the manifest (DL_info's val/test lesions, as the current cluster naming does). Neither
ever reads the truth file. Because seeded candidates put known lesions in their type's group,
the figures that count are computed on the lesions whose type NO candidate used: the lesions
without a manifest type (DeepLesion's train lesions, about 70 %), columns ``nmi_u``,
``purity_u``, ``label_acc_u``. ``nmi`` / ``purity`` on all labelled lesions are what
``evaluate`` reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def load(run_dir: Path) -> dict:
    from deeplesion_lab.evaluation import (
        aligned_embeddings,
        location_features,
        protocol_split,
        true_types,
    )
    from deeplesion_lab.run import RunDir

    run = RunDir(run_dir)
    df = run.load_manifest()
    ids = df["lesion_id"].astype(str).to_numpy()
    X = np.asarray(aligned_embeddings(run, ids), dtype=np.float64)
    truth, _ = true_types(df, run.info().get("truth"))
    roles = protocol_split(df["patient_index"].to_numpy())
    mtypes = df["coarse_type"].to_numpy(dtype=np.int64)
    mtypes = np.where(mtypes >= 1, mtypes, -1)
    d = LazyRun({
        "run": run_dir,
        "ids": ids,
        "X": X,
        "truth": truth,
        "roles": roles,
        "known_sv": np.where(np.isin(roles, ["seed", "val"]), mtypes, -1),
        "known_all": mtypes,
        "loc": location_features(df),
        "logsize": np.log((df["long_diameter_px"] * df["spacing_x"]).to_numpy(float)),
        "df": df,
        "run_obj": run,
    })
    if run.pseudo_labels.is_file():
        pl = run.load_pseudo_labels()
        pl = pl.set_index(pl["lesion_id"].astype(str)).loc[ids]
        d["current"] = pl["cluster"].to_numpy()
    return d


class LazyRun(dict):
    """The loaded run; ``ctx`` (hand-made context features) and ``deep`` (the features after the
    old miner's deep round) computed on first use and cached next to the run."""

    def __missing__(self, key):
        run_dir, df, run = self["run"], self["df"], self["run_obj"]
        if key == "ctx":
            ctx_path = run_dir / "context_features.npy"
            if not ctx_path.is_file():
                from bench_context_features import context_features

                np.save(ctx_path, context_features(df))
            self[key] = np.load(ctx_path)
        elif key == "deep":
            deep_path = run_dir / "deep_features.npy"
            if not deep_path.is_file():  # the current miner's features after its deep round
                from deeplesion_lab.embedding import LesionEmbedder, build_patches
                from deeplesion_lab.mining import DeepClusterMiner

                emb = LesionEmbedder.load(run.embedder)
                emb.num_threads = 1
                patches = build_patches(df, emb.patch_config_, cache_dir=run.patch_cache)
                m = DeepClusterMiner(embedder=emb, seed=0).fit(patches)
                np.save(deep_path, m.features_)
            self[key] = np.load(deep_path)
        else:
            raise KeyError(key)
        return self[key]


def _z(B: np.ndarray) -> np.ndarray:
    B = np.asarray(B, float)
    B = B.reshape(len(B), -1)
    B = (B - B.mean(0)) / (B.std(0) + 1e-9)
    return B / np.sqrt(B.shape[1])  # each block: total variance 1


def features(d: dict, spec: str) -> np.ndarray:
    """``spec``: blocks joined by ``+``, each ``name`` or ``name*weight``: ``e`` (embedding as
    is), ``ez`` (embedding standardised as a block), ``l`` location, ``s`` log size, ``c``
    context features (PCA to 16 dims)."""
    blocks = []
    for part in spec.split("+"):
        name, _, w = part.partition("*")
        w = float(w) if w else 1.0
        if name == "e":
            B = d["X"] / np.sqrt((d["X"].var(0)).sum() + 1e-12)
        elif name == "d":
            B = d["deep"] / np.sqrt((d["deep"].var(0)).sum() + 1e-12)
        elif name == "ez":
            B = _z(d["X"])
        elif name.startswith("pw"):  # PCA-whitened embedding, pwN: N components
            from sklearn.decomposition import PCA

            B = _z(PCA(int(name[2:]), whiten=True, random_state=0).fit_transform(d["X"]))
        elif name == "l":
            B = _z(d["loc"])
        elif name == "s":
            B = _z(d["logsize"])
        elif name == "c":
            from sklearn.decomposition import PCA

            B = _z(PCA(16, random_state=0).fit_transform(_z(d["ctx"])))
        else:
            raise SystemExit(f"unknown block {name}")
        blocks.append(w * B)
    return np.hstack(blocks)


# ---- algorithms: each returns cluster ids ------------------------------------------------------


def alg_kmeans(F, k, seed=0, n_init=4):
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(F)


def consensus(F, k, runs, seed=0):
    """Co-association of ``runs`` k-means fits (K from 8 to ``k``), cut by average linkage into
    the K of the best silhouette over 8-16."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics import silhouette_score

    n = len(F)
    co = np.zeros((n, n))
    ks = np.linspace(8, k, runs).astype(int)
    for r, kk in enumerate(ks):
        a = alg_kmeans(F, int(kk), seed + r, n_init=1)
        co += a[:, None] == a[None, :]
    D = 1 - co / runs
    np.fill_diagonal(D, 0)
    Z = linkage(squareform(D, checks=False), "average")
    best = None
    for kk in range(8, 17):
        lab = fcluster(Z, kk, "maxclust")
        if len(np.unique(lab)) < 2:
            continue
        s = silhouette_score(F, lab)
        if best is None or s > best[0]:
            best = (s, lab)
    return best[1]


def alg_kmeans_sil(F, seed=0):
    from deeplesion_lab.mining import DeepClusterMiner

    return DeepClusterMiner(seed=seed).fit(F).labels_


def alg_ward(F, k):
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(k, linkage="ward").fit_predict(F)


def alg_gmm(F, k=None, seed=0):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    P = PCA(min(16, F.shape[1]), random_state=0).fit_transform(F)
    if k is not None:
        return (
            GaussianMixture(k, covariance_type="diag", random_state=seed, n_init=2)
            .fit(P)
            .predict(P)
        )
    best = None
    for kk in range(8, 17):
        g = GaussianMixture(kk, covariance_type="diag", random_state=seed, n_init=2).fit(P)
        b = g.bic(P)
        if best is None or b < best[0]:
            best = (b, g)
    return best[1].predict(P)


def alg_spectral(F, k=None, seed=0, nn=10):
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import kneighbors_graph

    if k is None:  # eigengap over 8..16
        A = kneighbors_graph(F, nn, include_self=False)
        A = 0.5 * (A + A.T)
        L = laplacian(A.toarray(), normed=True)
        ev = np.sort(np.linalg.eigvalsh(L))
        gaps = ev[8:18] - ev[7:17]
        k = int(8 + np.argmax(gaps))
    return SpectralClustering(
        k,
        affinity="nearest_neighbors",
        n_neighbors=nn,
        random_state=seed,
        assign_labels="cluster_qr",
    ).fit_predict(F)


def merge_by_name(clusters, known, min_share=0.0):
    """Clusters with the same majority known type merged; clusters without a known member (or
    whose winning type has a vote share below ``min_share``) keep their own id (offset past the
    types)."""
    from deeplesion_lab.mining import name_clusters

    names, share = name_clusters(clusters, known, None)
    out = np.empty(len(clusters), dtype=np.int64)
    from deeplesion_lab.lesion_types import COARSE_TYPES

    code = {v: k for k, v in COARSE_TYPES.items()}
    has = {int(c) for c in np.unique(clusters[known >= 1])}
    for c in np.unique(clusters):
        m = clusters == c
        ok = int(c) in has and share[int(c)] >= min_share
        out[m] = code[names[int(c)]] if ok else 100 + int(c)
    return out


def merge_nearest(clusters, known, F):
    """As :func:`merge_by_name`, but an unnamed cluster joins the named cluster of the nearest
    centre (every lesion gets a type group)."""
    from deeplesion_lab.lesion_types import COARSE_TYPES
    from deeplesion_lab.mining import name_clusters

    ids = np.unique(clusters)
    centers = np.stack([F[clusters == c].mean(0) for c in ids])
    remap = {int(c): i for i, c in enumerate(ids)}
    cl = np.array([remap[int(c)] for c in clusters])
    names, _ = name_clusters(cl, known, centers)
    code = {v: k for k, v in COARSE_TYPES.items()}
    return np.array([code[names[int(c)]] for c in cl])


def seeded_kmeans(F, known, extra=0, seed=0, iters=50, fix=True):
    """K-means with one centroid per known type started at its known members' mean (plus
    ``extra`` free centroids by k-means++ on the rest); known lesions stay in their type's
    cluster when ``fix``. Cluster ids: the type code, 100+ for the free ones."""
    from sklearn.cluster import kmeans_plusplus

    types = np.unique(known[known >= 1])
    C = [F[known == t].mean(0) for t in types]
    if extra:
        rest = F[known < 1]
        c2, _ = kmeans_plusplus(rest, extra, random_state=seed)
        C += list(c2)
    C = np.stack(C)
    lab_code = np.concatenate([types, 100 + np.arange(extra)])
    kpos = {int(t): i for i, t in enumerate(types)}
    fixed = np.array([kpos.get(int(t), -1) for t in known])
    a = None
    for _ in range(iters):
        d2 = ((F[:, None, :] - C[None]) ** 2).sum(2)
        new = d2.argmin(1)
        if fix:
            new = np.where(fixed >= 0, fixed, new)
        if a is not None and (new == a).all():
            break
        a = new
        for j in range(len(C)):
            if (a == j).any():
                C[j] = F[a == j].mean(0)
    return lab_code[a]


def label_spreading(F, known, nn=10, alpha=0.5):
    from sklearn.semi_supervised import LabelSpreading

    y = np.where(known >= 1, known, -1)
    m = LabelSpreading(kernel="knn", n_neighbors=nn, alpha=alpha, max_iter=200).fit(F, y)
    return m.transduction_


def logreg(F, known, C=1.0):
    from sklearn.linear_model import LogisticRegression

    k = known >= 1
    m = LogisticRegression(C=C, max_iter=3000).fit(F[k], known[k])
    out = m.predict(F)
    out[k] = known[k]
    return out


def knn_vote(F, known, nn=5):
    from sklearn.neighbors import KNeighborsClassifier

    k = known >= 1
    m = KNeighborsClassifier(min(nn, int(k.sum())), weights="distance").fit(F[k], known[k])
    out = m.predict(F)
    out[k] = known[k]
    return out


def miner(d, known, lpc, rounds=0, seed=0):
    """The library's :class:`DeepClusterMiner` as ``mine`` runs it (K by silhouette over 8-16),
    given the known types; ``rounds`` deep rounds through the run's network."""
    from deeplesion_lab.mining import DeepClusterMiner

    if rounds == 0:
        return DeepClusterMiner(lesions_per_cluster=lpc, seed=seed).fit(d["X"], known).labels_
    from deeplesion_lab.embedding import LesionEmbedder, build_patches
    from deeplesion_lab.run import RunDir

    run = RunDir(d["run"])
    emb = LesionEmbedder.load(run.embedder)
    emb.num_threads = 1
    patches = build_patches(run.load_manifest(), emb.patch_config_, cache_dir=run.patch_cache)
    m = DeepClusterMiner(embedder=emb, lesions_per_cluster=lpc, max_rounds=rounds, seed=seed)
    return m.fit(patches, known).labels_


def s9_default(d, seed=0):
    """The ``mine`` default (8 lesions a fine cluster, merged by the manifest's types): (groups,
    the fitted miner)."""
    from deeplesion_lab.mining import DeepClusterMiner

    m = DeepClusterMiner(seed=seed).fit(d["X"], d["known_all"])
    return m.labels_, m


def s9_assign(d, by, seed=0):
    """The default, then every fine cluster without a known member moved into a named group."""
    from deeplesion_lab.mining import assign_unnamed

    _, m = s9_default(d, seed)
    cg = assign_unnamed(m.fine_to_cluster_, m.fine_labels_, d["known_all"], m.fine_centers_,
                        d["X"], by=by)
    return cg[m.fine_labels_]


def s9_spread(d, nn, alpha, cmn=False):
    """Zhou et al. (2004) label spreading on the embedding's kNN graph from the manifest's
    types (``cmn``: class mass normalisation): (types, scores)."""
    from deeplesion_lab.mining import spread_labels

    return spread_labels(d["X"], d["known_all"], nn, alpha, class_mass=cmn)


def s9_spread_fine(d, nn, alpha, seed=0, cmn=False, tau=0.0):
    """Spread scores summed within each fine cluster of the default; the cluster takes the
    type of the largest sum (known lesions count with their spread scores) when its share of
    the sum is at least ``tau``, else it stays a group of its own."""
    _, m = s9_default(d, seed)
    _, F = s9_spread(d, nn, alpha, cmn)
    k = m.n_fine_clusters_
    tot = np.zeros((k, F.shape[1]))
    np.add.at(tot, m.fine_labels_, F)
    share = tot.max(1) / np.maximum(tot.sum(1), 1e-12)
    g = np.where(share >= tau, tot.argmax(1) + 1, 100 + np.arange(k))
    return g[m.fine_labels_]


def s9_merge_then_spread(d, seed=0, nn=10, alpha=0.99, cmn=False, tau=0.0):
    """The default; a fine cluster without a known member takes the type its lesions' spread
    scores sum highest for (named clusters as merged), when that type's share of the sum is at
    least ``tau`` (else it stays apart)."""
    from deeplesion_lab.lesion_types import COARSE_TYPES

    _, m = s9_default(d, seed)
    _, F = s9_spread(d, nn, alpha, cmn)
    known = np.isin(d["known_all"], list(COARSE_TYPES))
    fine = m.fine_labels_
    named = set(np.unique(fine[known]).tolist())
    # named groups are numbered by type code in merge_by_known_type: group -> type code
    g2t = {}
    for c in named:
        kt = d["known_all"][(fine == c) & known]
        v, n = np.unique(kt, return_counts=True)
        g2t[int(m.fine_to_cluster_[c])] = int(v[int(np.argmax(n))])
    t2g = {t: g for g, t in g2t.items()}
    out = m.fine_to_cluster_.copy()
    for c in range(m.n_fine_clusters_):
        if c in named:
            continue
        s = F[fine == c].sum(0)
        t = int(np.argmax(s)) + 1
        if s.max() >= tau * max(s.sum(), 1e-12):
            out[c] = t2g.get(t, 100 + t)
    return out[fine]


def candidates() -> dict:
    """Name -> function(d) -> cluster ids."""
    C: dict = {}
    for seed in range(5):  # the miner's own seed: its spread on one embedding
        C[f"old_seed{seed}"] = lambda d, seed=seed: miner(d, d["known_all"], None, 1, seed)
        C[f"miner_lpc8_all_seed{seed}"] = lambda d, seed=seed: miner(d, d["known_all"], 8, 0, seed)
    for who in ("sv", "all"):
        for lpc in (5, 6, 8, 10, 12):
            C[f"miner_lpc{lpc}_{who}"] = lambda d, lpc=lpc, who=who: miner(
                d, d[f"known_{who}"], lpc
            )
        for lpc in (6, 8, 10):
            C[f"miner_lpc{lpc}_{who}_r1"] = lambda d, lpc=lpc, who=who: miner(
                d, d[f"known_{who}"], lpc, 1
            )
    C["current"] = lambda d: d["current"]
    # ---- session 9: the unseen lesions (default, honest cluster count, label spreading) ----
    for seed in range(5):
        sfx = f"_seed{seed}" if seed else ""
        C[f"s9_default{sfx}"] = lambda d, seed=seed: s9_default(d, seed)[0]
        for by in ("centroid", "knn"):
            C[f"s9_assign_{by}{sfx}"] = lambda d, by=by, seed=seed: s9_assign(d, by, seed)
        for cmn in (False, True):
            c = "cmn" if cmn else ""
            C[f"s9_mergespread{c}{sfx}"] = lambda d, seed=seed, cmn=cmn: s9_merge_then_spread(
                d, seed, cmn=cmn)
            for nn in (10,):
                for a in (0.5, 0.9, 0.99):
                    C[f"s9_spreadfine{c}{nn}a{a}{sfx}"] = lambda d, nn=nn, a=a, seed=seed, cmn=cmn: (
                        s9_spread_fine(d, nn, a, seed, cmn))
        for tau in (0.5, 0.6, 0.7, 0.8):
            for nn, a in ((5, 0.5), (10, 0.5), (5, 0.9)):
                C[f"s9_mergespread{nn}a{a}t{tau}{sfx}"] = (
                    lambda d, seed=seed, nn=nn, a=a, tau=tau: s9_merge_then_spread(
                        d, seed, nn, a, tau=tau))
                C[f"s9_spreadfine{nn}a{a}t{tau}{sfx}"] = (
                    lambda d, seed=seed, nn=nn, a=a, tau=tau: s9_spread_fine(
                        d, nn, a, seed, tau=tau))
    for nn in (5, 10, 15, 25):
        for a in (0.5, 0.9, 0.99):
            for cmn in (False, True):
                c = "cmn" if cmn else ""
                C[f"s9_spread{c}{nn}a{a}"] = lambda d, nn=nn, a=a, cmn=cmn: s9_spread(
                    d, nn, a, cmn)[0]
    for fs in ("e", "e+l", "e+l+s", "e+l+s+c", "e+l*0.5+s*0.5", "e+l*0.5+s*0.5+c*0.5", "c+l+s"):
        C[f"km_sil[{fs}]"] = lambda d, fs=fs: alg_kmeans_sil(features(d, fs))
        C[f"km8[{fs}]"] = lambda d, fs=fs: alg_kmeans(features(d, fs), 8)
    for fs in ("e", "e+l*0.5+s*0.5"):
        C[f"ward8[{fs}]"] = lambda d, fs=fs: alg_ward(features(d, fs), 8)
        C[f"gmm8[{fs}]"] = lambda d, fs=fs: alg_gmm(features(d, fs), 8)
        C[f"gmm_bic[{fs}]"] = lambda d, fs=fs: alg_gmm(features(d, fs))
        C[f"spec8[{fs}]"] = lambda d, fs=fs: alg_spectral(features(d, fs), 8)
        C[f"spec_gap[{fs}]"] = lambda d, fs=fs: alg_spectral(features(d, fs))
    C["km_sil[d]"] = lambda d: alg_kmeans_sil(features(d, "d"))
    for fs in ("e", "ez", "pw8", "pw16", "pw32"):
        for k in (8, 16, 24, 32):
            C[f"km{k}[{fs}]"] = lambda d, fs=fs, k=k: alg_kmeans(features(d, fs), k)
    C["consensus24x8[e]"] = lambda d: consensus(features(d, "e"), 24, 8)
    for who in ("sv", "all"):
        kk = f"known_{who}"
        for fs in ("ez", "pw16"):
            for k in (24, 32):
                C[f"km{k}+merge_{who}[{fs}]"] = lambda d, fs=fs, k=k, kk=kk: merge_by_name(
                    alg_kmeans(features(d, fs), k), d[kk]
                )
        C[f"kmsil+merge_{who}[e]"] = lambda d, kk=kk: merge_by_name(
            alg_kmeans_sil(features(d, "e")), d[kk]
        )
        for k in (32, 48, 64):
            C[f"ward{k}+merge_{who}[d]"] = lambda d, k=k, kk=kk: merge_by_name(
                alg_ward(features(d, "d"), k), d[kk]
            )
            C[f"km{k}n10+merge_{who}[d]"] = lambda d, k=k, kk=kk: merge_by_name(
                alg_kmeans(features(d, "d"), k, n_init=10), d[kk]
            )
        for k in (20, 24, 28, 32, 40, 48, 64):
            C[f"km{k}n10+merge_{who}[e]"] = lambda d, k=k, kk=kk: merge_by_name(
                alg_kmeans(features(d, "e"), k, n_init=10), d[kk]
            )
            C[f"ward{k}+merge_{who}[e]"] = lambda d, k=k, kk=kk: merge_by_name(
                alg_ward(features(d, "e"), k), d[kk]
            )
            C[f"km{k}+merge50_{who}[e]"] = lambda d, k=k, kk=kk: merge_by_name(
                alg_kmeans(features(d, "e"), k), d[kk], min_share=0.5
            )
        for fs in ("e", "e+l*0.5+s*0.5", "e+l*0.5+s*0.5+c*0.5"):
            for k in (16, 24, 32):
                C[f"km{k}+merge_{who}[{fs}]"] = lambda d, fs=fs, k=k, kk=kk: merge_by_name(
                    alg_kmeans(features(d, fs), k), d[kk]
                )
                C[f"km{k}+mergenn_{who}[{fs}]"] = lambda d, fs=fs, k=k, kk=kk: merge_nearest(
                    alg_kmeans(F := features(d, fs), k), d[kk], F
                )
            C[f"seedkm_{who}[{fs}]"] = lambda d, fs=fs, kk=kk: seeded_kmeans(features(d, fs), d[kk])
            C[f"seedkm+4_{who}[{fs}]"] = lambda d, fs=fs, kk=kk: seeded_kmeans(
                features(d, fs), d[kk], extra=4
            )
            for nn in (7, 15):
                for a in (0.2, 0.8):
                    C[f"spread{nn}a{a}_{who}[{fs}]"] = lambda d, fs=fs, kk=kk, nn=nn, a=a: (
                        label_spreading(features(d, fs), d[kk], nn, a)
                    )
            C[f"logreg_{who}[{fs}]"] = lambda d, fs=fs, kk=kk: logreg(features(d, fs), d[kk])
            C[f"knn5_{who}[{fs}]"] = lambda d, fs=fs, kk=kk: knn_vote(features(d, fs), d[kk])
    return C


def score(d: dict, clusters: np.ndarray) -> dict:
    from deeplesion_lab.evaluation import nmi, purity
    from deeplesion_lab.lesion_types import COARSE_TYPES
    from deeplesion_lab.mining import name_clusters

    t = d["truth"]
    lab = t >= 1
    unseen = lab & (d["known_all"] < 1)
    # pseudo-label names as `mine` gives them (majority of all manifest-typed members)
    ids = np.unique(clusters)
    remap = {int(c): i for i, c in enumerate(ids)}
    cl = np.array([remap[int(c)] for c in clusters])
    centers = np.stack([d["X"][cl == i].mean(0) for i in range(len(ids))])
    names, _ = name_clusters(cl, d["known_all"], centers)
    code = {v: k for k, v in COARSE_TYPES.items()}
    pred = np.array([code[names[int(c)]] for c in cl])
    from sklearn.metrics import adjusted_mutual_info_score

    return {
        "ami_u": float(adjusted_mutual_info_score(t[unseen], clusters[unseen])),
        "nmi": nmi(t[lab], clusters[lab]),
        "purity": purity(t[lab], clusters[lab]),
        "nmi_u": nmi(t[unseen], clusters[unseen]),
        "purity_u": purity(t[unseen], clusters[unseen]),
        "label_acc_u": float((pred[unseen] == t[unseen]).mean()),
        "k": int(len(np.unique(clusters))),
        "n_u": int(unseen.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--candidates", nargs="*", default=None, help="names (default: all)")
    ap.add_argument("--jsonl", type=Path, default=HERE / "results" / "mining_study.jsonl")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    cands = candidates()
    names = args.candidates or list(cands)
    rows = []
    for r in args.runs:
        d = load(r)
        for name in names:
            if name == "current" and "current" not in d:
                continue
            t = time.process_time()
            cl = np.asarray(cands[name](d))
            res = {
                "run": str(r),
                "seed": r.parent.name,
                "candidate": name,
                "tag": args.tag,
                **score(d, cl),
                "cpu_s": round(time.process_time() - t, 2),
            }
            rows.append(res)
            print(json.dumps(res), flush=True)
    with open(args.jsonl, "a") as f:
        for res in rows:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
