"""The table of ``bench/results/detector_ensemble.md``: candidates against the default, per
seed and pooled (issue 14, session 13).

Usage::

    .venv/bin/python bench/bench_detector_ensemble_summary.py \
        --group "101-104 (looked at first)" SEED:DATA_DIR:ARCH_OUT ... \
        --group "105-108 (fresh, decided on)" SEED:DATA_DIR:ARCH_OUT ... \
        --baseline centernet-w32-cp2-pscale-s0 --candidates ens2-half,ens2-full,... \
        [--missing MISSING.md ...] [--results bench/results/detector_ensemble.md]

``ARCH_OUT`` is a ``bench/bench_detector_arch.py --out`` folder holding the baseline's and the
candidates' folders (each with ``predictions_eval.csv``; ensembles made there by
``bench/bench_detector_ensemble.py``). Per seed: 4 FP and the mean over 0.5-4 FP on the val+test
key slices; per group: the pooled paired difference against the baseline (each seed resampled
on its own key slices, 2,000 resamples, one-sided p = share of resamples not above 0). A
candidate missing on a seed is left out of that seed's cell and of the group's pooled figure.
``--missing``: ``bench/bench_missing.py --arch-runs`` tables whose rows are appended as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EVAL = "val+test"
N_BOOT = 2000


def main() -> int:
    import pandas as pd

    from deeplesion_lab.detection.bootstrap import pooled_difference
    from deeplesion_lab.detection.froc import evaluate_predictions
    from deeplesion_lab.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", nargs="+", action="append", required=True,
                    metavar=("NAME", "SEED:DATA_DIR:ARCH_OUT"))
    ap.add_argument("--baseline", default="centernet-w32-cp2-pscale-s0")
    ap.add_argument("--candidates", required=True, help="comma-separated folder names")
    ap.add_argument("--missing", type=Path, nargs="*", default=[])
    ap.add_argument("--notes", type=Path, default=None, help="markdown put above the tables")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "detector_ensemble.md")
    args = ap.parse_args()
    cands = [c.strip() for c in args.candidates.split(",") if c.strip()]

    record: dict = {"date": time.strftime("%Y-%m-%d"), "baseline": args.baseline, "groups": []}
    lines = ["# CenterNet ensembles and other candidates against the default detector", "",
             "Written by `bench/bench_detector_ensemble_summary.py` (see its docstring).", ""]
    if args.notes is not None:
        lines += [args.notes.read_text().rstrip(), ""]
    lines += [f"Command: `.venv/bin/python {' '.join(sys.argv)}`", ""]
    for name, *specs in args.group:
        rows, pairs = [], {c: [] for c in cands}
        for spec in specs:
            seed, data, out = spec.split(":")
            m = read_manifest(Path(data) / "manifest.parquet")

            def curve(folder: str, _m=m, _out=out):
                f = Path(_out) / folder / "predictions_eval.csv"
                if not f.is_file():
                    return None
                return evaluate_predictions(pd.read_csv(f), _m, EVAL)

            base = curve(args.baseline)
            row = {"seed": seed, args.baseline: base}
            for c in cands:
                r = curve(c)
                row[c] = r
                if r is not None and base is not None:
                    pairs[c].append((r.curve, base.curve))
            rows.append(row)
        group = {"name": name, "seeds": [r["seed"] for r in rows], "per_seed": [], "pooled": {}}
        head = [args.baseline, *cands]
        lines += [f"## {name}", "",
                  "4 FP / mean 0.5-4 FP on the val+test key slices:", "",
                  "| seed | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for r in rows:
            cells, ps = [], {}
            for h in head:
                res = r[h]
                if res is None:
                    cells.append("")
                    continue
                s4, mean = res.sensitivity["4"], res.mean_sensitivity_0_5_to_4
                cells.append(f"{s4:.3f} / {mean:.3f}")
                ps[h] = {"4": s4, "mean_0.5-4": mean, "n_lesions": res.n_lesions}
            group["per_seed"].append({"seed": r["seed"], **ps})
            lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
        lines += ["", f"Pooled paired difference against `{args.baseline}`:", "",
                  "| candidate | seeds | 4 FP [95 %], p | mean 0.5-4 [95 %], p |", "|---|---|---|---|"]
        for c in cands:
            if not pairs[c]:
                continue
            d = pooled_difference(pairs[c], n_boot=N_BOOT).to_metrics()
            group["pooled"][c] = {**d, "n_seeds": len(pairs[c])}
            cell = []
            for k in ("4", "mean_0.5-4"):
                lo, hi = d["interval"][k]
                cell.append(f"{d['difference'][k]:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                            f"p {d['p_le_zero'][k]:.3f}")
            lines.append(f"| {c} | {len(pairs[c])} | {cell[0]} | {cell[1]} |")
        lines.append("")
        record["groups"].append(group)
    if args.missing:
        lines += ["## Missing-annotation recall (`bench/bench_missing.py --arch-runs`)", "",
                  "Test key slices, no neighbour slices, ranked by the detector's score.", ""]
        header_done = False
        for f in args.missing:
            table = [x for x in f.read_text().splitlines() if x.startswith("|")]
            if not table:
                continue
            if not header_done:
                lines += table[:2]
                header_done = True
            lines += [x for x in table[2:] if not x.startswith("|---")]
        lines.append("")
    args.results.write_text("\n".join(lines))
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
