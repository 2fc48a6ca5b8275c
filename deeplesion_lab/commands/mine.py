"""``deeplesion-lab mine``: deep clustering of a run's lesions into pseudo-labels, and its map."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mine",
        help="cluster the run's lesions into pseudo-labels (pseudo_labels.parquet, umap.parquet)",
        description=(
            "Iterative deep clustering (Yan et al. 2017): k-means on the embeddings, fine-tune "
            "the network on the cluster ids, re-extract, re-cluster, until the NMI between "
            "successive rounds reaches --stop-nmi. K is chosen over --k-min..--k-max by "
            "--criterion unless --clusters gives it. Each cluster is named by the majority type "
            "of its lesions of known type. Writes pseudo_labels.parquet (lesion_id, cluster, "
            "label, confidence), umap.parquet (lesion_id, x, y; the map of embeddings.parquet, "
            "cached) and mining figures in metrics.json."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (after embed)")
    p.add_argument("--clusters", type=int, default=None, help="K (default: chosen)")
    p.add_argument("--k-min", type=int, default=8,
                   help="smallest K scored (default 8, one per coarse type)")
    p.add_argument("--k-max", type=int, default=16)
    p.add_argument("--criterion", choices=("silhouette", "stability"), default="silhouette")
    p.add_argument("--rounds", type=int, default=1,
                   help="deep rounds at most (default 1; 0: cluster only). On the demo the first "
                        "round kept or raised the NMI to the true types and later rounds lowered "
                        "it (bench/results/embedding.md)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs per deep round")
    p.add_argument("--stop-nmi", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import time

    import numpy as np
    import pandas as pd

    from ..errors import LabError
    from ..maps import LesionMap
    from ..mining import DeepClusterMiner, MiningError, check_features
    from ..run import RunDir

    t0 = time.time()
    progress = not args.no_progress
    run_dir = RunDir(args.run)
    run_dir.info()
    df = run_dir.load_manifest()
    ids, vecs = run_dir.load_embeddings()
    check_features(vecs, str(run_dir.embeddings), ids)
    n = len(ids)
    if n < 2:
        raise MiningError(f"{run_dir.embeddings}: {n} lesion(s); mining needs at least 2")
    if args.clusters is not None and not 2 <= args.clusters <= n:
        raise MiningError(f"--clusters {args.clusters} is impossible for {n} lesions "
                          f"(need 2 <= K <= {n})")
    if args.k_min > args.k_max:
        raise LabError(f"--k-min {args.k_min} is above --k-max {args.k_max}")
    pos = {str(i): k for k, i in enumerate(df["lesion_id"].astype(str))}
    missing = [i for i in ids if str(i) not in pos]
    if missing:
        raise LabError(f"{run_dir.embeddings}: lesion {missing[0]} is not in the run's manifest")
    df = df.iloc[[pos[str(i)] for i in ids]].reset_index(drop=True)
    known = df["coarse_type"].to_numpy(dtype=np.int64)

    ckpt = run_dir.path / "embedder.pt"
    has_images = bool(df.attrs.get("images_root")) and bool(df["has_image"].all())
    deep = args.rounds > 0 and ckpt.is_file() and has_images
    miner_args = dict(
        n_clusters=args.clusters, k_range=(args.k_min, args.k_max), criterion=args.criterion,
        max_rounds=args.rounds, finetune_epochs=args.finetune_epochs, stop_nmi=args.stop_nmi,
        seed=args.seed, progress=progress,
    )
    if deep:
        from ..embedding import LesionEmbedder, build_patches

        emb = LesionEmbedder.load(ckpt)
        emb.num_threads = args.threads
        patches = build_patches(df, emb.patch_config_, cache_dir=run_dir.path / "cache" / "patches",
                                progress=progress)
        miner = DeepClusterMiner(embedder=emb, **miner_args).fit(patches)
    else:
        why = ("--rounds 0" if args.rounds <= 0 else
               "no embedder.pt" if not ckpt.is_file() else "the manifest has no images")
        print(f"clustering the embeddings without deep rounds ({why})")
        miner = DeepClusterMiner(**miner_args).fit(vecs)
    labels = miner.pseudo_labels(ids, known)

    mp = LesionMap(seed=args.seed, cache_dir=run_dir.path / "cache" / "umap")
    coords = mp.fit_transform(vecs)
    aligned = None
    if run_dir.umap.is_file():
        # a new map (new embeddings): turn, mirror, scale and shift it onto the previous one,
        # so that the lesions keep their place where they can
        coords, aligned = align_to_previous(coords, ids, pd.read_parquet(run_dir.umap))
    umap_df = pd.DataFrame({
        "lesion_id": pd.array([str(i) for i in ids], dtype="string"),
        "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32),
    })

    from ..atomic import write_parquet

    write_parquet(labels, run_dir.pseudo_labels, {"deeplesion_lab.n_clusters": miner.n_clusters_})
    write_parquet(umap_df, run_dir.umap, {"deeplesion_lab.map_key": mp.key_})
    info = {
        "k": miner.n_clusters_,
        "k_chosen_by": "user" if args.clusters else args.criterion,
        "round_nmi": miner.round_nmi_,
        "n_rounds": miner.n_rounds_,
        "deep": deep,
        "mean_confidence": float(labels["confidence"].mean()),
        "cluster_labels": {str(k): v for k, v in miner.cluster_names_.items()},
        "seconds": round(time.time() - t0, 1),
    }
    if aligned is not None:
        info["map_aligned_to_previous"] = aligned
    truth = run_dir.truth_path()
    if truth is not None and truth.is_file():
        # reporting only (the clustering never sees it): each round's NMI to the true types
        from ..evaluation import nmi, true_types
        from ..lesion_types import COARSE_TYPES

        codes, _ = true_types(df, truth)
        lab = np.isin(codes, list(COARSE_TYPES))
        if lab.any():
            info["round_nmi_truth"] = [round(nmi(codes[lab], r[lab]), 4)
                                       for r in miner.round_labels_]
    if miner.k_scores_ is not None:
        info["k_scores"] = miner.k_scores_.round(4).to_dict(orient="records")
    # the mining section is replaced, not merged: figures of an earlier clustering (K scores,
    # evaluate's NMI and purity) no longer describe these pseudo-labels
    import json

    from ..atomic import write_json

    metrics = json.loads(run_dir.metrics.read_text()) if run_dir.metrics.is_file() else {}
    metrics["mining"] = info
    write_json(metrics, run_dir.metrics)

    if miner.k_scores_ is not None:
        print(f"K by {args.criterion} over {args.k_min}..{args.k_max}:")
        print(miner.k_scores_.round(3).to_string(index=False))
    print(f"K = {miner.n_clusters_}; deep rounds {miner.n_rounds_}, NMI between rounds: "
          + (", ".join(f"{v:.3f}" for v in miner.round_nmi_) or "-"))
    counts = labels.groupby(["cluster", "label"]).size().rename("lesions").reset_index()
    print(counts.to_string(index=False))
    print(f"wrote {run_dir.pseudo_labels} and {run_dir.umap} "
          f"({'cached map' if mp.cache_hit_ else 'new map'}) in {time.time() - t0:.1f} s")
    return 0


def align_to_previous(coords, ids, previous) -> tuple:
    """``coords`` moved by the similarity transform (rotation or reflection, scale, shift) that
    best fits the lesions they share with ``previous`` (a ``lesion_id, x, y`` frame), by
    least squares (orthogonal Procrustes). Returns ``(coords, record)``; the record has the
    shared lesions and the RMS distance to their previous place, before and after. Fewer than 3
    shared lesions: ``coords`` unchanged and ``None``.
    """
    import numpy as np

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
    rms = lambda X: float(np.sqrt(((X - B) ** 2).sum(1).mean()))  # noqa: E731
    record = {"shared_lesions": len(pairs), "rms_before": round(rms(A), 4),
              "rms_after": round(rms(out[a_idx]), 4)}
    return out.astype(np.float32), record
