"""``deeplesion-lab evaluate``: clustering, retrieval and classification figures of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run's embeddings and pseudo-labels (metrics.json + a table)",
        description=(
            "Clustering (NMI, purity of pseudo-labels), retrieval (type precision@5/@10, "
            "location and size differences) and 8-class classification with the CVPR 2018 "
            "protocol (25%% seeds / 25%% val / 50%% test of labelled lesions, no patient in two "
            "parts), with the location-only, raw-intensity and untrained-network baselines. "
            "With --truth the true types of train lesions count too. With --manifest on a "
            "manifest without images (e.g. the real test split) only the metadata figures are "
            "computed; the table says what was skipped. Results are merged into "
            "RUN/metrics.json."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--truth", type=Path, default=None,
                   help="truth file (lesion_id, coarse_type); default the run's recorded one")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest (starts the run directory if it does not exist yet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the protocol's patient split")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..errors import LabError
    from ..evaluation import evaluate_run
    from ..run import RunDir

    run_dir = RunDir(args.run)
    if args.manifest is None and not run_dir.run_json.is_file():
        raise LabError(
            f"{args.run} is not a run directory; pass --manifest MANIFEST to evaluate the "
            "metadata of a manifest, or run `deeplesion-lab embed` first"
        )
    if args.truth is not None and not args.truth.is_file():
        raise LabError(f"{args.truth}: truth file not found")
    res = evaluate_run(args.run, args.truth, args.manifest, progress=not args.no_progress,
                       seed=args.seed)
    metrics = run_dir.update_metrics(res.metrics)
    print(res.table)
    print(f"wrote {run_dir.metrics} ({len(metrics)} sections)")
    return 0
