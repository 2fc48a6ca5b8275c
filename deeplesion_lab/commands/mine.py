"""``deeplesion-lab mine``: deep clustering of a run's lesions into pseudo-labels, and its map."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mine",
        help="cluster the run's lesions into pseudo-labels (pseudo_labels.parquet, umap.parquet)",
        description=(
            "Iterative deep clustering (Yan et al. 2017): k-means on the embeddings into about "
            "--lesions-per-cluster lesions a cluster, clusters merged by the majority type of "
            "their lesions of known type (the manifest's; a cluster without one stays apart); "
            "with --rounds N, fine-tune the network on the cluster ids, re-extract, re-cluster, "
            "until the NMI between successive rounds reaches --stop-nmi. K is chosen over "
            "--k-min..--k-max by --criterion unless --clusters gives it (then exactly K "
            "clusters, no merging). Each cluster is named by the majority type "
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
    p.add_argument("--lesions-per-cluster", type=float, default=8.0,
                   help="over-clustering before the merge by known type: about this many "
                        "lesions a fine cluster (default 8; 0: K clusters, no merging). On the "
                        "demo it raised the NMI to the true types of the lesions of unknown type "
                        "(bench/results/embedding.md)")
    p.add_argument("--merge", choices=("vote", "vote-assign", "spread"), default="vote",
                   help="how the fine clusters are merged by the known types: vote (default: "
                        "majority known type; a cluster without a known member stays apart), "
                        "vote-assign (those join the nearest named cluster: as many clusters as "
                        "known types), spread (label spreading from the known types over a kNN "
                        "graph, Zhou et al. 2004; a cluster without a clear spread type stays "
                        "apart). On the demo spread was level with vote and vote-assign lower "
                        "(bench/results/embedding.md)")
    p.add_argument("--rounds", type=int, default=0,
                   help="deep rounds at most (default 0: cluster the embeddings only). With the "
                        "clusters merged by known type a round lowered the NMI to the true types "
                        "on the demo, at 24 and 40 patients (bench/results/embedding.md)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs per deep round")
    p.add_argument("--stop-nmi", type=float, default=0.95)
    p.add_argument("--hold-out", default=None, metavar="SPLIT",
                   help="a split (test, val, val+test) whose manifest types the mining does not "
                        "use, so that figures on it later (the detector's class-aware FROC, "
                        "corrections' before/after) are not scored on types that made the "
                        "pseudo-labels (default: every manifest type is used)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.mine import MineSettings, mine_run

    settings = MineSettings(
        clusters=args.clusters, k_min=args.k_min, k_max=args.k_max, criterion=args.criterion,
        lesions_per_cluster=args.lesions_per_cluster or None, merge=args.merge,
        rounds=args.rounds,
        finetune_epochs=args.finetune_epochs, stop_nmi=args.stop_nmi, hold_out=args.hold_out,
        seed=args.seed, threads=args.threads, progress=not args.no_progress,
    )
    from ..availability import run_images_line
    from ..run import RunDir

    if (line := run_images_line(RunDir(args.run).info(), "mine")) is not None:
        print(line)
    mine_run(args.run, settings)
    return 0
