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
    from ..steps.evaluate import evaluate_step

    evaluate_step(args.run, truth=args.truth, manifest=args.manifest, seed=args.seed,
                  progress=not args.no_progress)
    return 0
