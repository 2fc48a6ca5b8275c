"""How much should noisy pseudo-label classes shape the detector's features? (issue 14, session 9)

Usage::

    .venv/bin/python bench/bench_class_weight.py --out /tmp/s9/b24_101 /tmp/s9/b24_102 ... \\
        [--weights 0.1 0.3] [--results bench/results/detector_class_weight.md]

Each ``--out`` is a ``bench/bench_detector.py`` output folder (one demo data seed): its demo
data, its pseudo-label table and its ``single`` and ``pseudo`` detectors. For each weight, a
multi-class CenterNet is trained on the same pseudo-labels with the same settings and seed as
that folder's ``pseudo`` model (read from its checkpoint), except ``class_loss_weight`` (the
weight of the class loss in the total loss; the folders' ``pseudo`` models of session 9 were
trained at 1.0, the default before this comparison made it 0.3), and scored on the
same validation + test key slices with the DeepLesion protocol (class-agnostic, as the issue's
figures; and class-aware, where a detection counts only with the lesion's true type). Paired
bootstrap differences (2,000 resamples of the key slices) against the folder's ``single`` and
``pseudo`` (weight 1.0) models, per seed and pooled over the seeds (mean of the per-seed
differences, each seed resampled on its own; p = share of resamples in which the first model
is not better).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402

EVAL = "val+test"
N_BOOT = 2000


def train_weight(out: Path, weight: float, threads: int,
                 epochs: int | None = None) -> tuple[Path, float]:
    """Train (or reuse) the pseudo-label model with ``class_loss_weight=weight``; its
    val+test predictions file and training CPU-seconds."""
    import torch

    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.manifest import read_manifest

    folder = out / "run" / "detector" / (f"pseudo_w{weight:g}"
                                         + (f"_e{epochs}" if epochs else ""))
    pred_path = folder / "predictions_eval.csv"
    if pred_path.is_file():
        rec = json.loads((folder / "bench.json").read_text())
        return pred_path, rec["cpu_s"]
    m = read_manifest(out / "data" / "manifest.parquet")
    labels = pd.read_parquet(out / "pseudo_labels_table.parquet")
    base = LesionDetector.load(out / "run" / "detector" / "pseudo" / "model.pt")
    params = base.get_params()
    params.update(class_loss_weight=float(weight), num_threads=threads, progress=False,
                  warm_start=False)
    if epochs:
        params["epochs"] = int(epochs)
    torch.set_num_threads(threads)
    t = time.process_time()
    det = LesionDetector(**params).fit(m, labels, checkpoint_dir=folder,
                                       lineage={"labels_source": "pseudo"})
    cpu = time.process_time() - t
    det.predict(m, EVAL).to_csv(pred_path, index=False)
    (folder / "bench.json").write_text(json.dumps({"cpu_s": cpu, "weight": weight}))
    return pred_path, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, nargs="+", required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: the folder's pseudo model's; a smoke test)")
    ap.add_argument("--results", type=Path,
                    default=HERE / "results" / "detector_class_weight.md")
    args = ap.parse_args()
    from deeplesion_lab.detection.bootstrap import paired_difference, pooled_difference
    from deeplesion_lab.detection.froc import evaluate_predictions, read_predictions
    from deeplesion_lab.manifest import read_manifest

    names = ["single", "pseudo"] + [f"w{w:g}" for w in args.weights]
    seeds = []
    for out in args.out:
        m = read_manifest(out / "data" / "manifest.parquet")
        d = out / "run" / "detector"
        files = {"single": d / "single" / "predictions_eval.csv",
                 "pseudo": d / "pseudo" / "predictions_eval.csv"}
        cpu = {}
        for w in args.weights:
            files[f"w{w:g}"], cpu[f"w{w:g}"] = train_weight(out, w, args.threads,
                                                            args.epochs)
            print(f"{out} weight {w:g}: {cpu[f'w{w:g}']:.0f} CPU-s", flush=True)
        res = {n: evaluate_predictions(read_predictions(files[n]), m, EVAL,
                                       class_aware=n != "single") for n in names}
        rec = json.loads((out / "results.json").read_text())
        seeds.append({"out": out, "seed": rec["args"].get("data_seed"), "res": res, "cpu": cpu,
                      "n": (res["single"].n_lesions, res["single"].n_images)})
    pairs = [(f"w{w:g}", b) for w in args.weights for b in ("single", "pseudo")]
    lines = ["# Class-loss weight of the multi-class detector (issue 14, session 9)", "",
             f"Produced by `.venv/bin/python bench/bench_class_weight.py --out "
             f"{' '.join(str(o) for o in args.out)} --weights "
             f"{' '.join(f'{w:g}' for w in args.weights)} --threads {args.threads}` on "
             f"{time.strftime('%Y-%m-%d')} (CPU only; see the docstring for the protocol). "
             "`pseudo` is the folder's multi-class model (trained at its checkpoint's "
             "class_loss_weight, 1.0 in session 9's runs); `wX` the same training with "
             "weight X. Evaluated on the val+test key slices.", "",
             "## Per seed", "",
             "| seed (lesions / key slices) | model | 4 FP | mean 0.5-4 | class-aware 4 FP | "
             "class-aware mean 0.5-4 | training CPU-s |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        for n in names:
            r = s["res"][n]
            ca = r.class_aware
            lines.append(
                f"| {s['seed']} ({s['n'][0]} / {s['n'][1]}) | {n} | "
                f"{r.sensitivity['4']:.3f} | {r.mean_sensitivity_0_5_to_4:.3f} | "
                + (f"{ca.sensitivity['4']:.3f} | {ca.mean_sensitivity_0_5_to_4:.3f} | "
                   if ca is not None else "(one class) | | ")
                + (f"{s['cpu'][n]:.0f} |" if n in s["cpu"] else " |"))
    lines += ["", "## Paired differences (class-agnostic), per seed and pooled", "",
              "| comparison | seed | 4 FP [95 %], p | mean 0.5-4 [95 %], p |", "|---|---|---|---|"]
    record = {"seeds": [], "pooled": {}}
    for a, b in pairs:
        for s in seeds:
            d = paired_difference(s["res"][a].curve, s["res"][b].curve, n_boot=N_BOOT).to_metrics()
            lines.append(f"| {a} - {b} | {s['seed']} | {_fmt(d, '4')} | {_fmt(d, 'mean_0.5-4')} |")
        pool = pooled_difference([(s["res"][a].curve, s["res"][b].curve) for s in seeds],
                                 n_boot=N_BOOT).to_metrics()
        record["pooled"][f"{a} - {b}"] = pool
        lines.append(f"| **{a} - {b}** | pooled | **{_fmt(pool, '4')}** | "
                     f"**{_fmt(pool, 'mean_0.5-4')}** |")
    for s in seeds:
        record["seeds"].append({"seed": s["seed"], "cpu": s["cpu"], **{
            n: {"sensitivity": s["res"][n].sensitivity,
                "mean": s["res"][n].mean_sensitivity_0_5_to_4} for n in names}})
    args.results.write_text("\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    print(args.results.read_text())
    return 0


def _fmt(d: dict, key: str) -> str:
    lo, hi = d["interval"][key]
    return f"{d['difference'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {d['p_le_zero'][key]:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
