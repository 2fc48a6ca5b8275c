"""``deeplesion-lab report``: a static, offline HTML report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html (metrics and figures, self-contained, offline)",
        description="Write a self-contained HTML report of a run's metrics and figures.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--out", type=Path, default=None, help="output file (default RUN/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.report import report_step

    report_step(args.run, args.out)
    return 0
