"""Run every benchmark in bench/ in turn (each writes bench/results/<name>.md).

Usage: .venv/bin/python bench/run_all.py [--only NAME ...]
The figures are then summarised by hand in BENCHMARKS.md (with the command and the date).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "bench_ingest.py",
    "bench_label_store.py",
    "bench_embedding.py",
    "bench_detector.py",
    "bench_graph.py",
    "bench_widgets.py",
    "bench_dashboard_load.py",
    "bench_volume.py",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="bench file names to run")
    args = ap.parse_args()
    failed = []
    for name in BENCHES:
        if args.only and name not in args.only and name.removesuffix(".py") not in args.only:
            continue
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / name)])
        print(f"== {name}: exit {code} in {time.perf_counter() - t:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
