"""Fine-tuning variants on a run of ``bench/bench_detector.py`` (issue 14): why fine-tuning lowered
sensitivity, and which setting keeps it.

Usage::

    .venv/bin/python bench/bench_finetune.py --out /tmp/bench_detector --tag lr1e4 \\
        --set '{"lr": 0.0001}' [--heads-only] [--base pseudo] [--results bench/results/detector_finetune.md]

``--out`` is a ``bench_detector.py`` output folder: its run (``run/``, with the ``pseudo``
detector) and its label tables (``pseudo_labels_table.parquet``, ``corrected_labels_table.parquet``:
the simulated corrections of half of the wrong training pseudo-labels). The pseudo-label detector
is fine-tuned twice with the same settings, as ``deeplesion-lab finetune`` does
(:func:`~deeplesion_lab.detection.workflow.run_finetune`): on the corrected labels (with
``reset_head``, the corrections add classes) and on the uncorrected ones (the control). Both are
evaluated on the validation + test key slices (DeepLesion FROC), with paired bootstrap
differences (2,000 resamples) after - before and corrected - control. One line per variant is
appended to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EVAL = "val+test"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a bench_detector.py --out folder")
    ap.add_argument("--base", default="pseudo")
    ap.add_argument("--tag", required=True, help="name of the variant (model names)")
    ap.add_argument("--set", default="{}", help="LesionDetector parameters, JSON (lr, epochs)")
    ap.add_argument("--heads-only", action="store_true", help="train the heads only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "detector_finetune.md")
    args = ap.parse_args()

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    import deeplesion_lab.detection.workflow as wf
    from deeplesion_lab.detection.bootstrap import paired_difference
    from deeplesion_lab.detection.froc import evaluate_predictions, read_predictions
    from deeplesion_lab.run import RunDir

    wf.FINETUNE_HEADS_ONLY["centernet"] = bool(args.heads_only)
    run = RunDir(args.out / "run")
    m = run.load_manifest()
    params = {**json.loads(args.set), "num_threads": args.threads, "progress": False}
    fts, evs, secs = {}, {}, {}
    for name, table, reset in (("corrected", "corrected_labels_table.parquet", True),
                               ("control", "pseudo_labels_table.parquet", False)):
        t = time.perf_counter()
        fts[name] = wf.run_finetune(
            run, pd.read_parquet(args.out / table),
            {"labels_source": f"bench_finetune {name}", "label_snapshot_id": None},
            base=args.base, name=f"{args.base}-{args.tag}-{name}", reset_head=reset,
            params=params, eval_split=EVAL, overwrite=True, out=lambda *a: None)
        secs[name] = time.perf_counter() - t
        evs[name] = evaluate_predictions(read_predictions(fts[name]["after"]["predictions"]),
                                         m, EVAL, class_aware=True)
    before = evaluate_predictions(read_predictions(fts["control"]["before"]["predictions"]),
                                  m, EVAL)
    d = {k: paired_difference(a.curve, b.curve, n_boot=2000).to_metrics()
         for k, (a, b) in {"corrected - before": (evs["corrected"], before),
                           "control - before": (evs["control"], before),
                           "corrected - control": (evs["corrected"], evs["control"])}.items()}
    # the class-aware figure (a hit needs the lesion's type): what corrected labels act on
    d["corrected - control, class-aware"] = paired_difference(
        evs["corrected"].class_aware.curve, evs["control"].class_aware.curve,
        n_boot=2000).to_metrics()
    # what the corrections change: the class a detector gives the lesions it finds
    truth = pd.read_parquet(json.loads(run.run_json.read_text())["truth"])
    named = {n: class_hits(read_predictions(fts[n]["after"]["predictions"]), m, truth)
             for n in ("corrected", "control")}
    named["before"] = class_hits(read_predictions(fts["control"]["before"]["predictions"]), m,
                                 truth)
    classes = class_test(named["corrected"], named["control"])
    key = "mean_0.5-4"
    rec = {"classes": classes,"tag": args.tag, "set": json.loads(args.set), "heads_only": args.heads_only,
           "epochs": fts["corrected"]["epochs"],
           "before": before.to_metrics(), "corrected": evs["corrected"].to_metrics(),
           "control": evs["control"].to_metrics(), "differences": d, "seconds": secs,
           "load_end": "/".join(f"{x:.1f}" for x in os.getloadavg())}
    (args.out / f"finetune_{args.tag}.json").write_text(json.dumps(rec, indent=2, default=str))

    def cell(k: str) -> str:
        v = d[k]
        lo, hi = v["interval"][key]
        return f"{v['difference'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {v['p_le_zero'][key]:.3f}"

    print(f"class of the found lesions right: corrected {classes['corrected']}, control "
          f"{classes['control']}, before {named['before'].mean():.3f}; paired: corrected only "
          f"{classes['only_corrected']}, control only {classes['only_control']}, one-sided p "
          f"{classes['p_one_sided']:.4f}")
    line = (f"| {args.tag} | {args.set}{' heads only' if args.heads_only else ''} | "
            f"{rec['epochs']} | {before.to_metrics()['mean_sensitivity_0_5_to_4']:.3f} | "
            f"{rec['corrected']['mean_sensitivity_0_5_to_4']:.3f} | "
            f"{rec['control']['mean_sensitivity_0_5_to_4']:.3f} | "
            f"{rec['corrected']['sensitivity']['4']:.3f} / {rec['control']['sensitivity']['4']:.3f} "
            f"(before {before.to_metrics()['sensitivity']['4']:.3f}) | {cell('corrected - before')} | "
            f"{cell('control - before')} | {cell('corrected - control')} | "
            f"{classes['corrected']} / {classes['control']} ({classes['only_corrected']} vs "
            f"{classes['only_control']}, p {classes['p_one_sided']:.3f}) | "
            f"{rec['corrected']['class_aware']['sensitivity']['4']:.3f} / "
            f"{rec['control']['class_aware']['sensitivity']['4']:.3f}; "
            f"{cell('corrected - control, class-aware')} |")
    head = ("| variant | settings | epochs | before, mean 0.5-4 | corrected | control | 4 FP "
            "corrected / control | corrected - before | control - before | corrected - control | "
            "type of found lesions right, corrected / control (only one right; sign test) | "
            "class-aware 4 FP corrected / control; corrected - control, class-aware mean "
            "0.5-4 |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    old = args.results.read_text() if args.results.is_file() else ""
    if head.splitlines()[0] not in old:
        old = old.rstrip() + ("\n\n" if old else "") + (
            f"Command per row: `.venv/bin/python bench/bench_finetune.py --out {args.out} "
            "--tag TAG --set SETTINGS [--heads-only]`; mean 0.5-4 FP sensitivity on the "
            f"{EVAL} key slices, paired 95 % bootstrap intervals, p = share of resamples in "
            "which the first is not better.\n\n" + head)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(old.rstrip() + "\n" + line + "\n")
    print(line)
    return 0


def class_hits(pred, manifest, truth):
    """Per evaluated lesion: 1 when the best detection overlapping it (IoU >= 0.5) names its true
    type, 0 when it names another, NaN when no detection finds it (a pandas Series)."""
    import numpy as np
    import pandas as pd

    from deeplesion_lab.detection.train import select_split
    from deeplesion_lab.lesion_types import COARSE_TYPES

    true = dict(zip(truth["lesion_id"].astype(str), truth["coarse_type"].map(COARSE_TYPES),
                    strict=False))
    rows = select_split(manifest, EVAL)
    rows = rows[rows["possibly_noisy"] == 0]
    out = {}
    by_file = {f: g for f, g in pred.groupby("file_name")}
    for r in rows.itertuples():
        g = by_file.get(r.file_name)
        hit = np.nan
        if g is not None and len(g):
            b = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
            ix = np.clip(np.minimum(b[:, 2], r.bbox_x2) - np.maximum(b[:, 0], r.bbox_x1), 0, None)
            iy = np.clip(np.minimum(b[:, 3], r.bbox_y2) - np.maximum(b[:, 1], r.bbox_y1), 0, None)
            inter = ix * iy
            union = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
                     + (r.bbox_x2 - r.bbox_x1) * (r.bbox_y2 - r.bbox_y1) - inter)
            ok = inter / np.maximum(union, 1e-9) >= 0.5
            if ok.any():
                best = g[ok].sort_values("score", ascending=False).iloc[0]
                hit = float(str(best["label"]) == str(true.get(str(r.lesion_id))))
        out[str(r.lesion_id)] = hit
    return pd.Series(out, dtype=float)


def class_test(a, b) -> dict:
    """Paired comparison of two ``class_hits``: lesions both found, exact one-sided sign test."""
    from scipy.stats import binomtest

    both = a.notna() & b.notna()
    only_a = int(((a == 1) & (b == 0) & both).sum())
    only_b = int(((a == 0) & (b == 1) & both).sum())
    n = only_a + only_b
    p = binomtest(only_a, n, 0.5, alternative="greater").pvalue if n else 1.0
    return {"corrected": round(float(a[both].mean()), 3) if both.any() else None,
            "control": round(float(b[both].mean()), 3) if both.any() else None,
            "n_both_found": int(both.sum()), "only_corrected": only_a, "only_control": only_b,
            "p_one_sided": float(p)}


if __name__ == "__main__":
    sys.exit(main())
