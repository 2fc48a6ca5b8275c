"""Paired FROC differences of detector candidates against a baseline, per seed and pooled.

Usage::

    .venv/bin/python bench/bench_detector_paired.py --name CANDIDATE \
        SEED:DATA_DIR:BASELINE_OUT:CANDIDATE_OUT [SEED:DATA_DIR:BASELINE_OUT:CANDIDATE_OUT ...]

Each ``*_OUT`` is a candidate folder of ``bench/bench_detector_arch.py --out`` (its
``predictions_eval.csv``); ``DATA_DIR`` holds the ``manifest.parquet`` both were evaluated on.
Per seed: ``paired_difference`` (candidate - baseline on the same val+test key slices, 2,000
resamples, one-sided p = share of resamples where the candidate is not better). Pooled: the mean
of the per-seed differences, each seed resampled on its own key slices (as
``bench/bench_class_aware.py`` pools).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EVAL = "val+test"
N_BOOT = 2000


def main() -> int:
    import pandas as pd

    from deeplesion_lab.detection.bootstrap import paired_difference, pooled_difference
    from deeplesion_lab.detection.froc import evaluate_predictions
    from deeplesion_lab.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="candidate")
    ap.add_argument("--split", default=EVAL,
                    help="key slices compared (default val+test; 'test' for a candidate that "
                         "trained on the validation patients)")
    ap.add_argument("runs", nargs="+", help="SEED:DATA_DIR:BASELINE_OUT:CANDIDATE_OUT")
    args = ap.parse_args()
    pairs = []
    for spec in args.runs:
        seed, data, base, cand = spec.split(":")
        m = read_manifest(Path(data) / "manifest.parquet")
        cb = evaluate_predictions(
            pd.read_csv(Path(base) / "predictions_eval.csv"), m, args.split).curve
        ca = evaluate_predictions(
            pd.read_csv(Path(cand) / "predictions_eval.csv"), m, args.split).curve
        d = paired_difference(ca, cb, n_boot=N_BOOT).to_metrics()
        parts = []
        for k in ("4", "mean_0.5-4"):
            lo, hi = d["interval"][k]
            parts.append(
                f"{k}: {d['difference'][k]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {d['p_le_zero'][k]:.3f}"
            )
        print(f"seed {seed} ({args.split}): {args.name} - baseline, " + "; ".join(parts))
        pairs.append((ca, cb))
    if len(pairs) > 1:
        d = pooled_difference(pairs, n_boot=N_BOOT).to_metrics()
        parts = []
        for k in ("4", "mean_0.5-4"):
            lo, hi = d["interval"][k]
            parts.append(
                f"{k}: {d['difference'][k]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {d['p_le_zero'][k]:.3f}"
            )
        print(f"pooled over {len(pairs)} seeds: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
