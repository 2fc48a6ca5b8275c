"""``deeplesion-lab train-detector``: train the lesion detector on a run's training key slices."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ._detector_options import add_model_arguments, add_training_arguments

    p = sub.add_parser(
        "train-detector",
        help="train a lesion detector (single class or pseudo-label classes; --arch)",
        description=(
            "Train a lesion detector (--arch: centernet by default, fasterrcnn, fcos) on the "
            "training key slices of RUN_DIR's manifest (3-slice context, spacing-normalised, windowed, augmented). "
            "--classes single: one class 'lesion'; --classes pseudo: the mined pseudo-labels "
            "of RUN_DIR/pseudo_labels.parquet as classes (the model still gives a "
            "class-agnostic lesion score); --labels TABLE: the classes of a labels table. "
            "Checkpoints go to RUN_DIR/detector/NAME/; an interrupted training resumes when the "
            "same command is run again."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (has run.json)")
    p.add_argument("--classes", choices=["single", "pseudo", "labels"], default=None,
                   help="single (default), pseudo, or labels (with --labels)")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels table (parquet/CSV: lesion_id, label) for --classes labels")
    p.add_argument("--name", default=None,
                   help="model name under RUN_DIR/detector (default: the --classes value)")
    add_model_arguments(p)
    add_training_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.train_detector import train_detector_run
    from ._detector_options import params_from_args

    train_detector_run(args.run, args.classes, labels=args.labels, name=args.name,
                       params=params_from_args(args, new=True), ignore_from=args.ignore_from,
                       ignore_score=args.ignore_score, overwrite=args.overwrite)
    return 0
