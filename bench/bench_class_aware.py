"""What corrected labels change, measured where they act: class-aware FROC of the runs of
``bench/bench_detector.py`` (issue 14, session 6).

Usage::

    .venv/bin/python bench/bench_class_aware.py --out /tmp/h14_b101 /tmp/h14_b102 ... \\
        [--results bench/results/detector_class_aware.md]

Each ``--out`` is a ``bench_detector.py`` output folder (one demo data seed). Its prediction
files on the validation + test key slices are scored twice with the DeepLesion protocol
(:func:`~deeplesion_lab.detection.froc.evaluate_predictions`): class-agnostic (the issue's
figure) and class-aware (``class_aware=True``: a detection hits a lesion only when its label is
the lesion's coarse type; what ``metrics.json`` now records as ``class_aware``). Models:
``single`` (one class), ``pseudo`` (the pseudo-label classes), ``pseudo-corrected`` (fine-tuned
on labels with half of the wrong training pseudo-labels corrected) and ``pseudo-more`` (the same
fine-tuning on the uncorrected labels: the control). Paired bootstrap differences (2,000
resamples of the key slices) per seed, and pooled over the seeds: the mean of the per-seed
differences, each seed resampled on its own (stratified), p = share of resamples in which the
first model is not better (one-sided).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


EVAL = "val+test"
N_BOOT = 2000
PAIRS = {  # name: (a, b, class-aware?)
    "corrected - control, class-aware": ("pseudo-corrected", "pseudo-more", True),
    "corrected - before, class-aware": ("pseudo-corrected", "pseudo", True),
    "control - before, class-aware": ("pseudo-more", "pseudo", True),
    "corrected - control, class-agnostic": ("pseudo-corrected", "pseudo-more", False),
    "pseudo - single, class-agnostic": ("pseudo", "single", False),
}


def prediction_files(out: Path) -> dict[str, Path]:
    d = out / "run" / "detector"
    return {"single": d / "single" / "predictions_eval.csv",
            "pseudo": d / "pseudo" / "predictions_eval.csv",
            "pseudo-corrected": d / "pseudo-corrected" / f"predictions_{EVAL}.csv",
            "pseudo-more": d / "pseudo-more" / f"predictions_{EVAL}.csv"}


def seed_record(out: Path) -> dict:
    from deeplesion_lab.detection.bootstrap import bootstrap_sensitivity, paired_difference
    from deeplesion_lab.detection.froc import evaluate_predictions, read_predictions
    from deeplesion_lab.manifest import read_manifest

    m = read_manifest(out / "data" / "manifest.parquet")
    res, ca = {}, {}
    for name, path in prediction_files(out).items():
        pred = read_predictions(path)
        r = evaluate_predictions(pred, m, EVAL, class_aware=name != "single")
        res[name] = r
        if r.class_aware is not None:
            ca[name] = r.class_aware
    models = {}
    for name, r in res.items():
        entry = {"agnostic": {**r.to_metrics(),
                              "interval95": bootstrap_sensitivity(r.curve, n_boot=N_BOOT)
                              .to_metrics()}}
        entry["agnostic"].pop("class_aware", None)
        if name in ca:
            met = r.to_metrics()["class_aware"]
            met["interval95"] = bootstrap_sensitivity(ca[name].curve, n_boot=N_BOOT).to_metrics()
            entry["class_aware"] = met
        models[name] = entry
    diffs = {}
    for k, (a, b, aware) in PAIRS.items():
        ca_, cb = (ca[a].curve, ca[b].curve) if aware else (res[a].curve, res[b].curve)
        diffs[k] = paired_difference(ca_, cb, n_boot=N_BOOT).to_metrics()
    rec = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return {"out": str(out), "data_seed": rec.get("args", {}).get("data_seed"),
            "eval_lesions": res["single"].n_lesions, "eval_images": res["single"].n_images,
            "typed_lesions": ca["pseudo"].n_lesions, "pseudo_labels": rec.get("pseudo_labels"),
            "models": models, "differences": diffs,
            "_curves": {"agnostic": {n: r.curve for n, r in res.items()},
                        "aware": {n: c.curve for n, c in ca.items()}}}


def pooled(records: list[dict]) -> dict:
    """Mean over seeds of the paired differences, stratified bootstrap (each seed resampled
    on its own key slices), one-sided p."""
    from deeplesion_lab.detection.bootstrap import pooled_difference

    out = {}
    for k, (a, b, aware) in PAIRS.items():
        curves = [r["_curves"]["aware" if aware else "agnostic"] for r in records]
        out[k] = pooled_difference([(c[a], c[b]) for c in curves], n_boot=N_BOOT).to_metrics()
    return out


def fmt_diff(d: dict, key: str) -> str:
    lo, hi = d["interval"][key]
    return f"{d['difference'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {d['p_le_zero'][key]:.3f}"


def fmt_sens(e: dict, key: str) -> str:
    v = e["mean_sensitivity_0_5_to_4"] if key == "mean_0.5-4" else e["sensitivity"][key]
    lo, hi = e["interval95"]["interval"][key]
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def write_markdown(path: Path, records: list[dict], pool: dict, argv: list[str]) -> None:
    lines = [
        "# Class-aware detection figures: what corrected labels change (issue 14, session 6)",
        "",
        f"Produced by `.venv/bin/python bench/bench_class_aware.py {' '.join(argv)}` on the "
        "prediction files of `bench/bench_detector.py` runs (one per demo data seed; command in "
        "BENCHMARKS.md), 2026-12-07, CPU only. Evaluation: DeepLesion FROC on the validation + "
        "test key slices; **class-aware**: a detection hits a lesion only when its label is the "
        "lesion's coarse type (a detection naming another type is a false positive; lesions "
        "without a type would be ignore regions, none here); macro = per-type sensitivity at "
        "the same operating point, averaged over the types present. 95 % bootstrap intervals "
        "over the key slices (2,000 resamples); paired differences on the same resamples; p = "
        "share of resamples in which the first is not better (one-sided).",
        "",
        "## Per seed",
        "",
    ]
    for r in records:
        pl = r.get("pseudo_labels") or {}
        lines += [
            f"### data seed {r['data_seed']} ({r['eval_lesions']} lesions on {r['eval_images']} "
            f"key slices; pseudo-labels {pl.get('train_accuracy', float('nan')):.1%} right on "
            f"training lesions, {pl.get('fixed')} of {pl.get('wrong')} wrong ones corrected)",
            "",
            "| model | class-agnostic 4 FP | class-agnostic mean 0.5-4 | class-aware 4 FP | "
            "class-aware mean 0.5-4 | class-aware macro 4 FP |",
            "|---|---|---|---|---|---|",
        ]
        for n, e in r["models"].items():
            c = e.get("class_aware")
            lines.append(
                f"| {n} | {fmt_sens(e['agnostic'], '4')} | {fmt_sens(e['agnostic'], 'mean_0.5-4')}"
                + (f" | {fmt_sens(c, '4')} | {fmt_sens(c, 'mean_0.5-4')} | "
                   f"{c['macro_sensitivity']['4']:.3f} |" if c else " | (one class) | | |"))
        lines += ["", "| comparison | 4 FP | mean 0.5-4 |", "|---|---|---|"]
        for k, d in r["differences"].items():
            lines.append(f"| {k} | {fmt_diff(d, '4')} | {fmt_diff(d, 'mean_0.5-4')} |")
        lines.append("")
    lines += [
        f"## Pooled over the {len(records)} seeds (mean of the per-seed differences, "
        "stratified bootstrap)",
        "",
        "| comparison | 4 FP | mean 0.5-4 |",
        "|---|---|---|",
        *[f"| {k} | {fmt_diff(d, '4')} | {fmt_diff(d, 'mean_0.5-4')} |" for k, d in pool.items()],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, nargs="+", required=True,
                    help="bench_detector.py --out folders (one per data seed)")
    ap.add_argument("--results", type=Path,
                    default=HERE / "results" / "detector_class_aware.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    records = [seed_record(o) for o in args.out]
    pool = pooled(records)
    argv = ["--out", *map(str, args.out)]
    write_markdown(args.results, records, pool, argv)
    if args.json:
        clean = [{k: v for k, v in r.items() if k != "_curves"} for r in records]
        args.json.write_text(json.dumps({"seeds": clean, "pooled": pool}, indent=2,
                                        default=str))
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
