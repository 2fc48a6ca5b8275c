"""``deeplesion-lab detect``: run a trained detector over key slices, write a predictions CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ._detector_options import add_runtime_arguments

    p = sub.add_parser(
        "detect",
        help="detect lesions on every key slice of a split -> predictions CSV",
        description=(
            "Run a detector of RUN_DIR/detector over every key slice of a split of the run's "
            "manifest and write OUT with the columns file_name, x1, y1, x2, y2, score, label "
            "(boxes in the original pixels; score = class-agnostic lesion score)."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    p.add_argument("--split", choices=["test", "val", "train", "all", "val+test"], default="test",
                   help="key slices to run on (default test)")
    p.add_argument("--model", default=None,
                   help="model name under RUN_DIR/detector (default: the latest trained); "
                        "'a+b' averages CenterNets a and b as one detector (e.g. pseudo+single)")
    p.add_argument("--batch-size", type=int, default=None)
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.detect import detect_run

    detect_run(args.run, args.out, model=args.model, split=args.split,
               batch_size=args.batch_size, device=args.device, threads=args.threads,
               progress=not args.no_progress)
    return 0
