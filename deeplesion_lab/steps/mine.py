"""The mining step: deep clustering of the run's lesions into pseudo-labels, and their map.

``deeplesion-lab mine`` parses its arguments into :class:`MineSettings` and calls
:func:`mine_run`; so does the pipeline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import LabError
from ..run import RunDir

__all__ = ["MineResult", "MineSettings", "align_to_previous", "mine_done", "mine_run"]


@dataclass
class MineSettings:
    """Settings of :func:`mine_run` (the ``mine`` command's options, same defaults).

    Attributes
    ----------
    clusters : int or None
        K; None chooses it over ``k_min..k_max`` by ``criterion``.
    k_min, k_max : int
        The K scored.
    criterion : {"silhouette", "stability"}
        How K is chosen.
    lesions_per_cluster : float or None
        Over-clustering: about this many lesions a fine cluster, merged by the majority known
        type of their members (the manifest's types); None or 0: K clusters, no merging.
    merge : {"vote", "vote-assign", "spread"}
        How the fine clusters are merged (:class:`~deeplesion_lab.mining.DeepClusterMiner`'s
        ``merge``): by majority known type, clusters without a known member apart ("vote", the
        default); the same with those joining the nearest named cluster ("vote-assign"); by
        label spreading from the known types over a kNN graph ("spread").
    rounds : int
        Deep rounds at most (0, the default: cluster the embeddings only; with the clusters
        merged by known type, a deep round lowered the NMI to the true types on the demo).
    finetune_epochs : int
        Epochs per deep round.
    stop_nmi : float
        Stop when the NMI between successive rounds reaches it.
    hold_out : str or None
        A split ("test", "val", or joined like "val+test") whose lesions' manifest types the
        mining does not use: they neither name nor merge clusters, so that a later evaluation on
        that split (the detector's class-aware figures, corrections' before/after) is not scored
        on types that made the pseudo-labels. None (the default): every manifest type is used.
    seed, threads, progress
        Seed, torch CPU threads, progress bars.
    """

    clusters: int | None = None
    k_min: int = 8
    k_max: int = 16
    criterion: str = "silhouette"
    lesions_per_cluster: float | None = 8.0
    merge: str = "vote"
    rounds: int = 0
    finetune_epochs: int = 1
    stop_nmi: float = 0.95
    hold_out: str | None = None
    seed: int = 0
    threads: int = 2
    progress: bool = True


@dataclass
class MineResult:
    """What :func:`mine_run` wrote: the pseudo-labels, the mining figures, the fitted miner."""

    labels: pd.DataFrame
    info: dict
    miner: object
    map_cache_hit: bool


def mine_done(run: RunDir) -> bool:
    """Whether the run has its pseudo-labels and their map (the pipeline skips the step then)."""
    return run.pseudo_labels.is_file() and run.umap.is_file()


def mine_run(
    run: RunDir | str,
    settings: MineSettings | None = None,
    *,
    say: Callable[[str], None] = print,
) -> MineResult:
    """Cluster the run's embeddings into pseudo-labels (Yan et al. 2017) and map them in 2-D.

    K-means on the embeddings into about ``lesions_per_cluster`` lesions a cluster, merged by
    the majority type of their lesions of known type (the manifest's; a cluster without one
    stays a category of its own), then (with the run's ``embedder.pt`` and images) deep rounds:
    fine-tune the network on the cluster ids, re-extract, re-cluster, until the NMI between
    rounds reaches ``stop_nmi``. Each cluster is named by the majority type of its lesions of
    known type. Writes ``pseudo_labels.parquet``, ``umap.parquet`` (turned onto the previous map
    where lesions are shared) and replaces ``metrics.json``'s ``mining`` section.

    Raises
    ------
    LabError
        No embeddings, embeddings of lesions the manifest lacks, or settings the data cannot
        take (:class:`~deeplesion_lab.mining.MiningError`).
    """
    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..atomic import write_json, write_parquet
    from ..maps import LesionMap
    from ..mining import DeepClusterMiner, MiningError, check_features

    s = settings if settings is not None else MineSettings()
    t0 = time.time()
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.info()
    df = run.load_manifest()
    ids, vecs = run.load_embeddings()
    check_features(vecs, str(run.embeddings), ids)
    n = len(ids)
    if n < 2:
        raise MiningError(f"{run.embeddings}: {n} lesion(s); mining needs at least 2")
    pos = {str(i): k for k, i in enumerate(df["lesion_id"].astype(str))}
    missing = [i for i in ids if str(i) not in pos]
    if missing:
        raise LabError(f"{run.embeddings}: lesion {missing[0]} is not in the run's manifest")
    df = df.iloc[[pos[str(i)] for i in ids]].reset_index(drop=True)
    known = df["coarse_type"].to_numpy(dtype=np.int64)
    n_held_out = 0
    if s.hold_out:
        from ..lesion_types import UNLABELED, held_out

        held = held_out(df["split"].to_numpy(), s.hold_out, "mine")
        n_held_out = int((held & (known != UNLABELED)).sum())
        known = np.where(held, UNLABELED, known)

    ckpt = run.embedder
    has_images = bool(df.attrs.get("images_root")) and bool(df["has_image"].all())
    deep = s.rounds > 0 and ckpt.is_file() and has_images
    miner_args = dict(
        n_clusters=s.clusters, k_range=(s.k_min, s.k_max), criterion=s.criterion,
        lesions_per_cluster=s.lesions_per_cluster or None, merge=s.merge, max_rounds=s.rounds,
        finetune_epochs=s.finetune_epochs, stop_nmi=s.stop_nmi,
        seed=s.seed, progress=s.progress,
    )
    if deep:
        from ..embedding import LesionEmbedder, build_patches

        emb = LesionEmbedder.load(ckpt)
        emb.num_threads = s.threads
        patches = build_patches(df, emb.patch_config_, cache_dir=run.patch_cache,
                                progress=s.progress)
        miner = DeepClusterMiner(embedder=emb, **miner_args).fit(patches, known)
    else:
        why = ("--rounds 0" if s.rounds <= 0 else
               "no embedder.pt" if not ckpt.is_file() else "the manifest has no images")
        say(f"clustering the embeddings without deep rounds ({why})")
        miner = DeepClusterMiner(**miner_args).fit(vecs, known)
    labels = miner.pseudo_labels(ids, known)

    mp = LesionMap(seed=s.seed, cache_dir=run.umap_cache)
    coords = mp.fit_transform(vecs)
    aligned = None
    if run.umap.is_file():
        # a new map (new embeddings): turn, mirror, scale and shift it onto the previous one,
        # so that the lesions keep their place where they can
        coords, aligned = align_to_previous(coords, ids, pd.read_parquet(run.umap))
    umap_df = pd.DataFrame({
        "lesion_id": pd.array([str(i) for i in ids], dtype="string"),
        "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32),
    })

    write_parquet(labels, run.pseudo_labels, {"deeplesion_lab.n_clusters": miner.n_clusters_})
    write_parquet(umap_df, run.umap, {"deeplesion_lab.map_key": mp.key_})
    info = {
        "k": miner.n_clusters_,
        "k_chosen_by": "user" if s.clusters else s.criterion,
        "k_fine": miner.n_fine_clusters_,
        "merged_by_known_type": bool(miner.merged_),
        "merge": s.merge if miner.merged_ else None,
        "round_nmi": miner.round_nmi_,
        "n_rounds": miner.n_rounds_,
        "deep": deep,
        "mean_confidence": float(labels["confidence"].mean()),
        "hold_out": s.hold_out,
        "n_types_held_out": n_held_out,
        "cluster_labels": {str(k): v for k, v in miner.cluster_names_.items()},
        "seconds": round(time.time() - t0, 1),
    }
    if aligned is not None:
        info["map_aligned_to_previous"] = aligned
    truth = run.truth_path()
    if truth is not None and truth.is_file():
        # reporting only (the clustering never sees it): each round's NMI to the true types
        from ..evaluation import nmi, purity, true_types
        from ..lesion_types import COARSE_TYPES

        codes, _ = true_types(df, truth)
        lab = np.isin(codes, list(COARSE_TYPES))
        if lab.any():
            info["round_nmi_truth"] = [round(nmi(codes[lab], r[lab]), 4)
                                       for r in miner.round_labels_]
        # the lesions whose type the mining never saw (no manifest type): the fair figures
        # when the clusters were merged by the manifest's known types
        unseen = lab & ~np.isin(known, list(COARSE_TYPES))
        if unseen.any():
            info["nmi_truth_unseen"] = round(nmi(codes[unseen], miner.labels_[unseen]), 4)
            info["purity_truth_unseen"] = round(
                purity(codes[unseen], miner.labels_[unseen]), 4)
            info["n_truth_unseen"] = int(unseen.sum())
    if miner.k_scores_ is not None:
        info["k_scores"] = miner.k_scores_.round(4).to_dict(orient="records")
    # the mining section is replaced, not merged: figures of an earlier clustering (K scores,
    # evaluate's NMI and purity) no longer describe these pseudo-labels
    metrics = run.load_metrics()
    metrics["mining"] = info
    write_json(metrics, run.metrics)

    if miner.k_scores_ is not None:
        say(f"K by {s.criterion} over {s.k_min}..{s.k_max}:")
        say(miner.k_scores_.round(3).to_string(index=False))
    if miner.merged_:
        say(f"{miner.n_fine_clusters_} fine clusters merged by known type into "
            f"{miner.n_clusters_}")
    say(f"K = {miner.n_clusters_}; deep rounds {miner.n_rounds_}, NMI between rounds: "
        + (", ".join(f"{v:.3f}" for v in miner.round_nmi_) or "-"))
    counts = labels.groupby(["cluster", "label"]).size().rename("lesions").reset_index()
    say(counts.to_string(index=False))
    say(f"wrote {run.pseudo_labels} and {run.umap} "
        f"({'cached map' if mp.cache_hit_ else 'new map'}) in {time.time() - t0:.1f} s")
    return MineResult(labels, info, miner, bool(mp.cache_hit_))


def align_to_previous(coords, ids, previous) -> tuple:
    """``coords`` moved by the similarity transform (rotation or reflection, scale, shift) that
    best fits the lesions they share with ``previous`` (a ``lesion_id, x, y`` frame), by
    least squares (orthogonal Procrustes). Returns ``(coords, record)``; the record has the
    shared lesions and the RMS distance to their previous place, before and after. Fewer than 3
    shared lesions: ``coords`` unchanged and ``None``.
    """
    pos = {str(i): k for k, i in enumerate(previous["lesion_id"].astype(str))}
    pairs = [(k, pos[str(i)]) for k, i in enumerate(ids) if str(i) in pos]
    if len(pairs) < 3:
        return coords, None
    a_idx, b_idx = (np.array(v) for v in zip(*pairs, strict=True))
    A = np.asarray(coords, dtype=np.float64)[a_idx]
    B = previous[["x", "y"]].to_numpy(dtype=np.float64)[b_idx]
    ma, mb = A.mean(0), B.mean(0)
    A0, B0 = A - ma, B - mb
    u, sv, vt = np.linalg.svd(A0.T @ B0)
    R = u @ vt
    scale = sv.sum() / max(float((A0**2).sum()), 1e-12)
    out = (np.asarray(coords, dtype=np.float64) - ma) @ R * scale + mb
    out_shared = out[a_idx]
    record = {"shared_lesions": len(pairs), "rms_before": round(_rms(A, B), 4),
              "rms_after": round(_rms(out_shared, B), 4)}
    return out.astype(np.float32), record


def _rms(X: np.ndarray, B: np.ndarray) -> float:
    return float(np.sqrt(((X - B) ** 2).sum(1).mean()))
