"""Who should name a detection's lesion type: the detector's class head, or the lab's lesion
embedder fitted on the current labels? And do corrected labels then beat uncorrected ones?
(issue 14, session 12)

Usage::

    .venv/bin/python bench/bench_typer.py --from /tmp/s12/src/d24_101 ... --work /tmp/s12/typer \\
        [--candidates head,knn5,knn15,knn5c] [--label s12] [--analyse-only]

Each ``--from`` folder holds a demo (``data/``, ``manifest.parquet``) and ``run/``: a run whose
embedder was trained and whose pseudo-labels were mined with the test split held out (``embed
--hold-out test``, ``mine --hold-out test``: what ``pipeline`` / ``make lab`` do since session
12). Per seed, in ``--work/<name>/`` (``bench_corrections.prepare`` and ``finetune``):

1. The pseudo-label detector with the CLI's defaults (training seed 0, one thread, 128 epochs).
2. Simulated annotators fix half of the wrong training pseudo-labels (truth file); the detector
   is fine-tuned on the corrected labels and, as the control, on the uncorrected ones, as
   ``deeplesion-lab finetune`` does (heads only, 30 epochs).
3. Every prediction set (before, corrected, control) is typed by each candidate, on the TEST key
   slices (the validation types named the pseudo-labels and lent the embedding's sampler its
   types, so only test is clean):
   ``head``: the detector's own class head (the labels in its predictions);
   ``knnK``: :class:`~deeplesion_lab.detection.typer.EmbeddingTyper` with K neighbours, fitted
   on the training lesions' labels of that prediction set (before and control: the
   pseudo-labels; corrected: the corrected labels), the detections embedded by the run's
   embedder (:func:`~deeplesion_lab.detection.typer.type_predictions`);
   ``knnKc``: the same, each score multiplied by the vote share of its name (``rescore``; the
   candidate picked on seeds 101-104, now ``finetune``'s default).
4. DeepLesion FROC, class-aware (a hit must name the lesion's type) and class-agnostic; paired
   bootstrap per seed and pooled (2,000 resamples, one-sided p = share of resamples in which
   the first is not better): corrected - control per candidate, candidate - head (control).

Writes ``bench/results/detector_typer.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

N_BOOT = 2000
SPLIT = "test"
TOP_PER_IMAGE = 30
KEYS = ("0.5", "1", "2", "4", "8", "16")


def top_per_image(pred: pd.DataFrame, n: int = TOP_PER_IMAGE) -> pd.DataFrame:
    """The ``n`` best-scored detections of each image (more lie far beyond 16 FP per image)."""
    return (pred.sort_values("score", ascending=False, kind="stable")
            .groupby("file_name", sort=False).head(n).reset_index(drop=True))


def typed(pred: pd.DataFrame, cand: str, labels: pd.DataFrame, m: pd.DataFrame,
          embedder, embeddings: pd.DataFrame, train_ids: list[str]) -> pd.DataFrame:
    from deeplesion_lab.detection.typer import EmbeddingTyper, type_predictions
    from deeplesion_lab.manifest import manifest_images_root

    if cand == "head":
        return pred
    k = int(cand[3:].rstrip("c"))
    lab = labels.set_index("lesion_id")["label"].astype(str)
    ids = [i for i in train_ids if i in lab.index]
    typer = EmbeddingTyper(n_neighbors=k).fit(embeddings.loc[ids].to_numpy(), lab.loc[ids])
    out = type_predictions(pred, m, embedder, typer, manifest_images_root(m),
                           rescore=cand.endswith("c"))
    return out[pred.columns]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="sources", type=Path, nargs="+", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--candidates", default="head,knn5,knn15,knn5c")
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "detector_typer.md")
    ap.add_argument("--label", default="s12")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from bench_corrections import finetune, named, prepare, save_results, true_names

    from deeplesion_lab.detection.bootstrap import paired_difference, pooled_difference
    from deeplesion_lab.detection.froc import evaluate_predictions, read_predictions
    from deeplesion_lab.detection.train import select_split
    from deeplesion_lab.embedding import LesionEmbedder
    from deeplesion_lab.run import RunDir

    cands = args.candidates.split(",")
    seeds, pairs, naming = {}, {}, {}
    for src in args.sources:
        work = args.work / src.name
        if args.analyse_only:
            info = json.loads((work / "prepare.json").read_text())
        else:
            info = prepare(src, work, "test", args.share)
            (work / "prepare.json").write_text(json.dumps(info, indent=1))
        run = RunDir(work / "run")
        m = run.load_manifest()
        true = true_names(run)
        files = finetune(work, "default", info["reset_head"]) if not args.analyse_only else {
            k: {"after": str(run.model_predictions_file(f"default-{k}", "val+test")),
                "before": str(run.model_predictions_file(f"default-{k}", "val+test",
                                                         before=True))}
            for k in ("corrected", "control")}
        test_files = set(select_split(m, SPLIT)["file_name"])
        preds = {k: top_per_image(p[p["file_name"].isin(test_files)].reset_index(drop=True))
                 for k, p in (("corrected", read_predictions(files["corrected"]["after"])),
                              ("control", read_predictions(files["control"]["after"])),
                              ("before", read_predictions(files["control"]["before"])))}
        labels = {"corrected": pd.read_parquet(work / "corrected_labels_table.parquet"),
                  "control": pd.read_parquet(work / "pseudo_labels_table.parquet"),
                  "before": pd.read_parquet(work / "pseudo_labels_table.parquet")}
        embedder = LesionEmbedder.load(run.embedder)
        embedder.num_threads, embedder.progress = 1, False
        emb = pd.read_parquet(run.embeddings).set_index("lesion_id")
        train_ids = select_split(m, "train")["lesion_id"].astype(str).tolist()
        rec = {**info, "candidates": {}}
        curves = {}
        for c in cands:
            t0 = time.process_time()
            tp = {k: typed(p, c, labels[k], m, embedder, emb, train_ids)
                  for k, p in preds.items()}
            cpu = time.process_time() - t0
            ev = {k: evaluate_predictions(p, m, SPLIT, class_aware=True) for k, p in tp.items()}
            curves[c] = {k: (e.curve, e.class_aware.curve) for k, e in ev.items()}
            crec = {"typing_cpu_s": round(cpu, 1), "n_detections": int(sum(map(len, tp.values())))}
            for kind, j in (("agnostic", 0), ("class_aware", 1)):
                crec[kind] = {k: dict(zip(KEYS, np.round(cu[j].sensitivity_at(), 4).tolist(),
                                          strict=True)) for k, cu in curves[c].items()}
                a, b = curves[c]["corrected"][j], curves[c]["control"][j]
                pairs.setdefault((c, kind, "corrected - control"), []).append((a, b))
                crec[kind]["corrected - control"] = paired_difference(a, b, n_boot=N_BOOT).to_metrics()
            crec["named_right"] = {}
            for k, p in tp.items():
                ok, n = named(p, m, SPLIT, true)
                crec["named_right"][k] = [ok, n]
                acc = naming.setdefault((c, k), [0, 0])
                acc[0] += ok
                acc[1] += n
            rec["candidates"][c] = crec
        for c in cands:
            if c == "head":
                continue
            for kind, j in (("agnostic", 0), ("class_aware", 1)):
                for k in ("control", "corrected"):
                    pairs.setdefault((c, kind, f"{c} - head ({k})"), []).append(
                        (curves[c][k][j], curves["head"][k][j]))
        seeds[src.name] = rec
        print(src.name, json.dumps({c: {k: rec["candidates"][c]["class_aware"][k]["4"]
                                        for k in ("before", "corrected", "control")}
                                    for c in cands}), flush=True)
    pooled = {" | ".join(k): pooled_difference(p, n_boot=N_BOOT).to_metrics()
              for k, p in pairs.items()}
    out = {"label": args.label, "date": date.today().isoformat(), "candidates": cands,
           "sources": [str(s) for s in args.sources],
           "command": ".venv/bin/python " + shlex.join(sys.argv), "seeds": seeds,
           "pooled": pooled, "named_right": {" | ".join(k): v for k, v in naming.items()}}
    save_results(args.results, args.label, out, write_markdown)
    return 0


def write_markdown(path: Path, allrec: dict) -> None:
    from bench_corrections import comparison_cells
    from bench_corrections import format_difference as _d

    lines = ["# Typing detections: the detector's class head or the lesion embedder (issue 14)",
             "", "Written by `bench/bench_typer.py` (its docstring says what each step does). "
             "Test key slices only; CPU, one torch thread. Differences: paired bootstrap over "
             "key slices (2,000 resamples); pooled = mean of the per-seed differences, each seed "
             "resampled on its own; p = share of resamples in which the first is not better "
             "(one-sided). 'named right': found lesions (score >= 0.3, IoU >= 0.5) whose best "
             "detection names their true type.", ""]
    for key, r in allrec.items():
        lines += [f"## {key} ({r['date']})", "", f"Command: `{r['command']}`", "",
                  "| seed | pseudo-labels right, train / test | fixed of wrong |", "|---|---|---|"]
        for s, rec in r["seeds"].items():
            lines.append(f"| {s} | {rec['pseudo_right_train']:.2f} / "
                         f"{rec['pseudo_right_test']:.2f} | {rec['fixed']} of {rec['wrong']} |")
        lines += ["", "| candidate | seed | class-aware 4 FP before / corrected / control | "
                  "corrected - control, class-aware 4 FP | named right before / corrected / "
                  "control | class-agnostic 4 FP control | typing CPU-s |",
                  "|---|---|---|---|---|---|---|"]
        for c in r["candidates"]:
            for s, rec in r["seeds"].items():
                cr = rec["candidates"][c]
                ca, nr = cr["class_aware"], cr["named_right"]
                lines.append(f"| {c} | {s} | {comparison_cells(ca, nr)} | "
                             f"{cr['agnostic']['control']['4']:.3f} | {cr['typing_cpu_s']} |")
        lines += ["", "**Pooled over seeds**", "",
                  "| comparison | class-aware 4 FP | class-aware mean 0.5-4 | class-agnostic 4 FP "
                  "| named right before / corrected / control |", "|---|---|---|---|---|"]
        for c in r["candidates"]:
            keys = [("corrected - control", c)] + (
                [] if c == "head" else [(f"{c} - head (control)", c),
                                        (f"{c} - head (corrected)", c)])
            for what, cc in keys:
                ca = r["pooled"][f"{cc} | class_aware | {what}"]
                ag = r["pooled"][f"{cc} | agnostic | {what}"]
                nm = " / ".join(
                    "{}/{} ({:.3f})".format(*r["named_right"][f"{cc} | {k}"],
                                            r["named_right"][f"{cc} | {k}"][0]
                                            / max(r["named_right"][f"{cc} | {k}"][1], 1))
                    for k in ("before", "corrected", "control")) if what.startswith("corr") else ""
                lines.append(f"| {cc}: {what} | {_d(ca)} | {_d(ca, 'mean_0.5-4')} | {_d(ag)} "
                             f"| {nm} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
