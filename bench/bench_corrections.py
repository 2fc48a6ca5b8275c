"""Do corrected pseudo-labels make a better fine-tuned detector? Measured without the leak of
the evaluated lesions' own types into the pseudo-labels (issue 14, session 11).

Usage::

    .venv/bin/python bench/bench_corrections.py --from /tmp/s9/b24_101 /tmp/s9/b24_102 ... \\
        --work /tmp/s11/corr --hold-out test [--variants default,lr10] \\
        [--results bench/results/detector_corrections.md] [--label s11]

Each ``--from`` is a ``bench/bench_detector.py --out`` folder (one demo seed): its demo data and
its run's embeddings are reused; nothing in it is changed. In ``--work/<hold-out>/<name>/``:

1. ``mine`` again on those embeddings (:func:`~deeplesion_lab.steps.mine.mine_run`, defaults),
   with the test lesions' manifest types held out (``--hold-out test``, what the pipeline does
   now) or used (``--hold-out none``, the ``mine`` command's default and the pipeline's before).
   DeepLesion's DL_info gives the types of validation and test lesions; used to name and merge
   clusters, the test lesions' own types make the pseudo-labels of the training lesions beside
   them, and a detector trained on those is then scored on the same types.
2. The pseudo-label detector with the CLI's defaults for a new model
   (:func:`~deeplesion_lab.detection.workflow.detector_params`, training seed 0, one thread).
3. Simulated annotators fix half (``--share``) of the wrong training pseudo-labels with the truth
   file (the same rule as ``bench_detector.py``); the detector is fine-tuned on the corrected
   labels and, as the control, on the uncorrected ones, as ``deeplesion-lab finetune`` does
   (:func:`~deeplesion_lab.detection.workflow.run_finetune`), once per ``--variants`` entry
   (``default``: the command's defaults, heads only at a quarter of the base learning rate;
   ``lr10``: the heads at ten times that; ``lr10e90``: the same for 90 epochs; ``all``: every
   layer at 1e-4, the base's final rate; ``all25``: every layer at the default rate).
4. DeepLesion FROC on the test key slices (and validation + test), class-agnostic and
   class-aware (a hit must name the lesion's type), paired bootstrap corrected - control and
   corrected - before per seed and pooled over seeds (2,000 resamples; p = share of resamples in
   which corrected is not better, one-sided); and how often the best hit on a found lesion
   (score >= 0.3) names its true type.

Writes ``--results`` (markdown, a section per ``--label``) and the same as ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

N_BOOT = 2000
VARIANTS = {  # name: (fine-tuning parameters, heads only)
    "default": ({}, True),
    "lr10": ({"lr": 0.0025}, True),
    "lr10e90": ({"lr": 0.0025, "epochs": 90}, True),
    "all": ({"lr": 0.0001}, False),
    "all25": ({}, False),
}
SPLITS = ("test", "val+test")
RUN_FILES = ("run.json", "embeddings.parquet", "embedder.json", "embedder.pt", "umap.parquet")


def true_names(run) -> dict[str, str]:
    """The true coarse type name of each of the run's manifest lesions (its truth file,
    :func:`~deeplesion_lab.evaluation.true_types`)."""
    from deeplesion_lab.evaluation import true_types
    from deeplesion_lab.lesion_types import COARSE_TYPES

    m = run.load_manifest()
    codes, _ = true_types(m, run.truth_path())
    return {str(i): COARSE_TYPES.get(int(c)) for i, c in zip(m["lesion_id"], codes, strict=True)}


def prepare(src: Path, work: Path, hold_out: str | None, share: float,
            overrides: dict | None = None) -> dict:
    """Mine, simulate the corrections and train the pseudo-label detector of one seed."""
    from deeplesion_lab.detection.labels_table import labels_from_pseudo
    from deeplesion_lab.detection.train import LesionDetector, select_split
    from deeplesion_lab.detection.workflow import detector_params, set_latest
    from deeplesion_lab.run import RunDir
    from deeplesion_lab.steps.mine import MineSettings, mine_run

    rd = work / "run"
    rd.mkdir(parents=True, exist_ok=True)
    for f in RUN_FILES:
        if not (rd / f).exists():
            shutil.copy(src / "run" / f, rd / f)
    run = RunDir(rd)
    m = run.load_manifest()
    if not run.pseudo_labels.is_file():
        mine_run(run, MineSettings(hold_out=hold_out, threads=1, progress=False),
                 say=lambda *a: None)
    mining = run.load_metrics()["mining"]
    pseudo = labels_from_pseudo(run.load_pseudo_labels())
    true = true_names(run)
    train_ids = set(select_split(m, "train")["lesion_id"].astype(str))
    test_ids = select_split(m, "test")["lesion_id"].astype(str)
    p_train = pseudo[pseudo["lesion_id"].isin(train_ids)].copy()
    p_train["true"] = p_train["lesion_id"].map(true)
    wrong = p_train[p_train["label"] != p_train["true"]]
    by_id = pseudo.set_index("lesion_id")["label"]
    rng = np.random.default_rng(0)
    fix = wrong.sample(n=int(round(len(wrong) * share)), random_state=int(rng.integers(2**31)))
    corrected = pseudo.copy()
    corrected.loc[corrected["lesion_id"].isin(fix["lesion_id"]), "label"] = (
        corrected["lesion_id"].map(dict(zip(fix["lesion_id"], fix["true"], strict=True))))
    corrected["label"] = corrected["label"].astype("string")
    pseudo.to_parquet(work / "pseudo_labels_table.parquet", index=False)
    corrected.to_parquet(work / "corrected_labels_table.parquet", index=False)

    folder = run.detector_dir / "pseudo"
    t = time.process_time()
    if not (folder / "model.pt").is_file():
        params = {**detector_params(new=True, threads=1, progress=False, seed=0),
                  **(overrides or {})}
        LesionDetector(**params).fit(m, pseudo, checkpoint_dir=folder,
                                     lineage={"labels_source": "pseudo"})
    set_latest(run, "pseudo")
    det = LesionDetector.load(folder, num_threads=1, progress=False)
    new_classes = sorted(set(corrected.loc[corrected["lesion_id"].isin(train_ids), "label"]))
    return {
        "hold_out": hold_out, "n_types_held_out": mining.get("n_types_held_out", 0),
        "mining": {k: mining.get(k) for k in ("k", "nmi_truth_unseen", "purity_truth_unseen")},
        "pseudo_right_train": 1 - len(wrong) / len(p_train),
        "pseudo_right_test": float(np.mean([by_id[i] == true[i] for i in test_ids])),
        "wrong": len(wrong), "fixed": len(fix), "classes": list(det.classes_),
        "reset_head": new_classes != list(det.classes_),
        "train_cpu_s_this_process": round(time.process_time() - t, 1),
    }


def finetune(work: Path, variant: str, reset_head: bool,
             typer: bool = False) -> dict[str, dict[str, str]]:
    """Corrected and control fine-tuning of one variant; their prediction files (``typer``:
    the detections named by the lesion embedder, ``run_finetune``'s default since session 12;
    False: by the class head, as this bench measured in session 11)."""
    import deeplesion_lab.detection.workflow as wf
    from deeplesion_lab.run import RunDir

    params, heads = VARIANTS[variant]
    run = RunDir(work / "run")
    out = {}
    for kind, table, reset in (("corrected", "corrected_labels_table.parquet", reset_head),
                               ("control", "pseudo_labels_table.parquet", False)):
        name = f"{variant}-{kind}"
        after = run.model_predictions_file(name, "val+test")
        before = run.model_predictions_file(name, "val+test", before=True)
        if not after.is_file():
            wf.FINETUNE_HEADS_ONLY["centernet"] = heads
            wf.run_finetune(run, pd.read_parquet(work / table), {"labels_source": kind},
                            base="pseudo", name=name, reset_head=reset,
                            params={**params, "num_threads": 1, "progress": False},
                            eval_split="val+test", typer=typer, out=lambda *a: None)
        out[kind] = {"after": str(after), "before": str(before)}
    return out


def named(pred: pd.DataFrame, m: pd.DataFrame, split: str, true: dict, thr: float = 0.3):
    """(right, found): found lesions (a detection >= ``thr`` at IoU >= 0.5) whose best such
    detection names their true type."""
    from deeplesion_lab.boxes import box_iou
    from deeplesion_lab.detection.train import select_split

    ok = n = 0
    for r in select_split(m, split).itertuples():
        p = pred[(pred["file_name"] == r.file_name) & (pred["score"] >= thr)]
        if not len(p):
            continue
        iou = box_iou((r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2),
                      p[["x1", "y1", "x2", "y2"]].to_numpy(float))
        if iou.max() < 0.5:
            continue
        j = np.flatnonzero(iou >= 0.5)
        j = j[np.argmax(p["score"].to_numpy()[j])]
        n += 1
        ok += int(p["label"].iloc[j] == true[str(r.lesion_id)])
    return ok, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="sources", type=Path, nargs="+", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--hold-out", default="test", help="split held out of mining, or 'none'")
    ap.add_argument("--variants", default="default,lr10")
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--set", default="{}",
                    help="LesionDetector parameters of the pseudo-label detector over the CLI's "
                         "defaults, JSON (e.g. '{\"paste_classes\": false}')")
    ap.add_argument("--tag", default="", help="a name for --set (work folder, results key)")
    ap.add_argument("--analyse-only", action="store_true",
                    help="score the folders already made, train nothing")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "detector_corrections.md")
    ap.add_argument("--label", default="s11")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from deeplesion_lab.detection.bootstrap import paired_difference, pooled_difference
    from deeplesion_lab.detection.froc import evaluate_predictions, read_predictions
    from deeplesion_lab.run import RunDir

    hold = None if args.hold_out in ("none", "") else args.hold_out
    variants = args.variants.split(",")
    seeds, pairs, naming = {}, {}, {}
    for src in args.sources:
        work = args.work / f"hold-out-{hold or 'none'}{'-' + args.tag if args.tag else ''}" / src.name
        if args.analyse_only:
            info = json.loads((work / "prepare.json").read_text())
        else:
            info = prepare(src, work, hold, args.share, json.loads(args.set))
            (work / "prepare.json").write_text(json.dumps(info, indent=1))
        run = RunDir(work / "run")
        m = run.load_manifest()
        true = true_names(run)
        rec = {**info, "variants": {}}
        for v in variants:
            files = finetune(work, v, info["reset_head"]) if not args.analyse_only else {
                k: {"after": str(run.model_predictions_file(f"{v}-{k}", "val+test")),
                    "before": str(run.model_predictions_file(f"{v}-{k}", "val+test",
                                                             before=True))}
                for k in ("corrected", "control")}
            preds = {"corrected": read_predictions(files["corrected"]["after"]),
                     "control": read_predictions(files["control"]["after"]),
                     "before": read_predictions(files["control"]["before"])}
            vrec = {}
            for split in SPLITS:
                ev = {k: evaluate_predictions(p, m, split, class_aware=True)
                      for k, p in preds.items()}
                srec = {}
                for kind in ("agnostic", "class_aware"):
                    cur = {k: e.curve if kind == "agnostic" else e.class_aware.curve
                           for k, e in ev.items()}
                    srec[kind] = {k: dict(zip(("0.5", "1", "2", "4", "8", "16"),
                                              np.round(c.sensitivity_at(), 4).tolist(),
                                              strict=True)) for k, c in cur.items()}
                    for a, b in (("corrected", "control"), ("corrected", "before")):
                        key = (v, split, kind, f"{a} - {b}")
                        pairs.setdefault(key, []).append((cur[a], cur[b]))
                        srec[kind][f"{a} - {b}"] = paired_difference(
                            cur[a], cur[b], n_boot=N_BOOT).to_metrics()
                srec["named_right"] = {}
                for k, p in preds.items():
                    ok, n = named(p, m, split, true)
                    srec["named_right"][k] = [ok, n]
                    acc = naming.setdefault((v, split, k), [0, 0])
                    acc[0] += ok
                    acc[1] += n
                vrec[split] = srec
            rec["variants"][v] = vrec
        seeds[src.name] = rec
    pooled = {" | ".join(k): pooled_difference(p, n_boot=N_BOOT).to_metrics()
              for k, p in pairs.items()}
    out = {"label": args.label, "date": date.today().isoformat(), "hold_out": hold,
           "detector_set": json.loads(args.set), "tag": args.tag,
           "variants": variants, "sources": [str(s) for s in args.sources],
           "command": ".venv/bin/python " + shlex.join(sys.argv), "seeds": seeds, "pooled": pooled,
           "named_right": {" | ".join(k): v for k, v in naming.items()}}
    save_results(args.results,
                 f"{args.label}/hold-out-{hold or 'none'}{'/' + args.tag if args.tag else ''}",
                 out, write_markdown)
    return 0


def save_results(results: Path, key: str, out: dict, write_markdown) -> None:
    """Keep ``out`` under ``key`` in ``results``' ``.json`` beside the earlier keys, rewrite the
    markdown ``results`` from all of them (``write_markdown(path, records)``) and print it."""
    js = results.with_suffix(".json")
    allrec = json.loads(js.read_text()) if js.is_file() else {}
    allrec[key] = out
    js.write_text(json.dumps(allrec, indent=1))
    write_markdown(results, allrec)
    print(results.read_text())


def format_difference(met: dict, key: str = "4") -> str:
    """``"+0.050 [+0.016, +0.094], p 0.002"`` of a paired-difference metrics entry."""
    lo, hi = met["interval"][key]
    return f"{met['difference'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}], p {met['p_le_zero'][key]:.3f}"


def comparison_cells(ca: dict, nr: dict) -> str:
    """The table cells ``before / corrected / control | corrected - control | named right``
    of one seed: class-aware 4 FP figures ``ca`` and named-right counts ``nr``."""
    return (f"{ca['before']['4']:.3f} / {ca['corrected']['4']:.3f} / {ca['control']['4']:.3f} | "
            f"{format_difference(ca['corrected - control'])} | "
            + " / ".join(f"{a}/{b}" for a, b in (nr[k] for k in ("before", "corrected", "control"))))


def write_markdown(path: Path, allrec: dict) -> None:
    lines = ["# Corrected pseudo-labels and fine-tuning, with and without the test types in "
             "the mining (issue 14)", "",
             "Written by `bench/bench_corrections.py` (its docstring says what each step does). "
             "Demo data: the `bench_detector.py` folders of session 9 (issue 19's demo, 24 "
             "patients, 512 px); CPU only, one torch thread per process. Differences are paired "
             "bootstrap over the key slices (2,000 resamples), pooled = mean of the per-seed "
             "differences, each seed resampled on its own; p = share of resamples in which "
             "corrected is not better (one-sided). 'named right': found lesions (score >= 0.3, "
             "IoU >= 0.5) whose best detection names their true type.", ""]
    for key, r in allrec.items():
        lines += [f"## {key} ({r['date']})", "", f"Command: `{r['command']}`", ""]
        lines += ["| seed | test types held out | pseudo-labels right, train / test | fixed "
                  "of wrong | classes |", "|---|---|---|---|---|"]
        for s, rec in r["seeds"].items():
            lines.append(f"| {s} | {rec['n_types_held_out']} | {rec['pseudo_right_train']:.2f}"
                         f" / {rec['pseudo_right_test']:.2f} | {rec['fixed']} of {rec['wrong']}"
                         f" | {len(rec['classes'])} |")
        lines.append("")
        for v in r["variants"]:
            for split in SPLITS:
                lines += [f"**{v}, {split} key slices**", "",
                          "| seed | class-aware 4 FP before / corrected / control | corrected - "
                          "control, class-aware 4 FP | named right before / corrected / control "
                          "| class-agnostic 4 FP corrected / control |",
                          "|---|---|---|---|---|"]
                for s, rec in r["seeds"].items():
                    sr = rec["variants"][v][split]
                    ca, ag, nr = sr["class_aware"], sr["agnostic"], sr["named_right"]
                    lines.append(f"| {s} | {comparison_cells(ca, nr)} | "
                                 f"{ag['corrected']['4']:.3f} / {ag['control']['4']:.3f} |")
                pk = f"{v} | {split} | class_aware | corrected - control"
                pb = f"{v} | {split} | class_aware | corrected - before"
                nm = {k: r["named_right"][f"{v} | {split} | {k}"]
                      for k in ("before", "corrected", "control")}
                lines += ["", f"Pooled over {len(r['seeds'])} seeds, class-aware: corrected - "
                          f"control {format_difference(r['pooled'][pk])} at 4 FP, "
                          f"{format_difference(r['pooled'][pk], 'mean_0.5-4')} mean 0.5-4; corrected - before "
                          f"{format_difference(r['pooled'][pb])} at 4 FP. Named right: "
                          + ", ".join(f"{k} {a}/{b} ({a / max(b, 1):.3f})"
                                      for k, (a, b) in nm.items()) + ".", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
