"""Missing-annotation mining: does locating each proposal's own box help its embedding, and so
the ranking? (issue 14, session 12)

Usage::

    .venv/bin/python bench/bench_proposal_location.py --runs /tmp/s12/typer/d24_101/run ... \\
        [--results bench/results/proposal_location.md]

Each ``--runs`` entry is a run with an embedder, the truth file and a trained ``pseudo``
detector (``bench/bench_typer.py``'s work folders). The pseudo detector is run over every key
slice and its neighbours once (``detect --split all``, as the pipeline does); then the lesion
graph (``graph_step``, defaults) is built twice from the same detections, the proposals' location
input taken from an annotated lesion of their key image (``annotated``, the default before) or
from their own box relative to the body in the image (``body``). Recall at 0.5 / 1 / 2
proposals per image of the demo's unannotated lesions, per seed and the mean.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

VARIANTS = ("annotated", "body")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "proposal_location.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import deeplesion_lab.graph.missing as missing
    from deeplesion_lab.run import RunDir
    from deeplesion_lab.steps.detect import detect_run
    from deeplesion_lab.steps.graph import graph_step

    rows = {}
    for src in args.runs:
        run = RunDir(src)
        pred = run.predictions_file("pseudo", "all")
        if not pred.is_file():
            detect_run(run, pred, model="pseudo", split="all", threads=1, progress=False,
                       say=lambda *a: None)
        rec = {}
        for v in VARIANTS:  # each rewrites the run's graph/ and metrics; the figures are kept
            missing.PROPOSAL_LOCATION = v
            res = graph_step(run, progress=False, say=lambda *a: None, truth=run.truth_path(),
                             predictions=pred)
            mm = res.metrics["missing_annotations"]
            rec[v] = {k: mm[k] for k in ("recall_at_0_5", "recall_at_1", "recall_at_2")
                      if k in mm}
            rec[v]["n_unannotated"] = mm.get("n_missing")
        rows[src.parent.name] = rec
        print(src.parent.name, json.dumps(rec), flush=True)
    mean = {v: {k: float(np.mean([r[v][k] for r in rows.values()]))
                for k in ("recall_at_0_5", "recall_at_1", "recall_at_2")} for v in VARIANTS}
    out = {"date": date.today().isoformat(), "command": ".venv/bin/python " + shlex.join(sys.argv),
           "seeds": rows, "mean": mean}
    args.results.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = ["# Where a proposal's location input comes from (issue 14, session 12)", "",
             f"Written by `bench/bench_proposal_location.py` on {out['date']} (its docstring "
             "says what it does). Command: `" + out["command"] + "`.", "",
             "| seed | unannotated lesions | recall@0.5 / @1 / @2, annotated lesion's location "
             "| recall@0.5 / @1 / @2, own box in the body |", "|---|---|---|---|"]
    for s, r in rows.items():
        cells = [" / ".join(f"{r[v][k]:.3f}" for k in ("recall_at_0_5", "recall_at_1",
                                                        "recall_at_2")) for v in VARIANTS]
        lines.append(f"| {s} | {r['annotated']['n_unannotated']} | {cells[0]} | {cells[1]} |")
    lines.append("| mean | | " + " | ".join(
        " / ".join(f"{mean[v][k]:.3f}" for k in ("recall_at_0_5", "recall_at_1", "recall_at_2"))
        for v in VARIANTS) + " |")
    args.results.write_text("\n".join(lines) + "\n")
    missing.PROPOSAL_LOCATION = "annotated"
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
