"""``deeplesion-lab evaluate-detector``: the DeepLesion FROC evaluation of a predictions CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-detector",
        help="score a predictions CSV with the official DeepLesion protocol (FROC)",
        description=(
            "Score PRED.csv (file_name, x1, y1, x2, y2, score, label) against the key slices "
            "of a split of MANIFEST: a hit at IoU >= 0.5, sensitivity at 0.5, 1, 2, 4, 8 and 16 "
            "false positives per image, possibly-noisy lesions excluded, and the mean over "
            "0.5-4. Writes a FROC plot (PNG and interactive HTML) beside PRED.csv and, with "
            "--run, the numbers into RUN_DIR/metrics.json under detection.NAME."
        ),
    )
    p.add_argument("predictions", type=Path, metavar="PRED.csv")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest (.parquet); default the one the --run records in run.json")
    p.add_argument("--split", choices=["test", "val", "train", "all", "val+test"], default="test",
                   help="key slices scored (default test)")
    p.add_argument("--run", type=Path, default=None, help="run directory for metrics.json")
    p.add_argument("--name", default=None,
                   help="name in metrics.json (default: the CSV's file name without .csv)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a hit (default 0.5)")
    p.add_argument("--noisy", choices=["ignore", "drop"], default="ignore",
                   help="noisy lesions: ignore regions (default) or dropped as in the "
                        "released script (their detections then count as FPs)")
    p.add_argument("--no-plot", action="store_true", help="do not write the FROC plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.detect import evaluate_detections

    evaluate_detections(args.predictions, run=args.run, manifest=args.manifest, split=args.split,
                        name=args.name, iou=args.iou, noisy=args.noisy, plot=not args.no_plot)
    return 0
