"""The detection experiment of issue 5, on demo data, CPU only.

Usage::

    .venv/bin/python bench/bench_detector.py [--patients 40] [--epochs 8] [--finetune-epochs 3]
        [--share 0.5] [--threads 2] [--out /tmp/bench_detector] [--embed-epochs 6]

Writes ``bench/results/detection.md`` (and ``results.json``, FROC plots and the run directory
under ``--out``).

1. Demo data (``generate_demo``, 256 px slices of about 1.6 mm) -> manifest -> the real
   pseudo-label pipeline (``deeplesion-lab embed`` + ``mine``: clusters named by the majority
   known type).
2. Two detectors with identical settings and seed: single class ("lesion") and multi-class with
   the pseudo-labels as classes (the 2017 paper's comparison). Evaluated with the official
   protocol on the key slices of the validation and test patients together (and the test split
   alone), and again with every unannotated truth lesion of those key slices as an ignore region
   (how many "false positives" are real lesions nobody marked).
3. Simulated annotators fix ``--share`` of the wrong pseudo-labels of the training lesions using
   the truth file; the multi-class detector is fine-tuned on the corrected labels
   (``run_finetune``, as ``deeplesion-lab finetune`` does). Control: the same fine-tuning on the
   uncorrected pseudo-labels, so that the effect of the corrections is separated from that of
   more training.
4. Training images/s and inference ms/image on this machine's 2 CPU cores (the load average of
   the shared machine is recorded beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: Evaluation key slices: the validation and test patients together (the test split alone of a
#: few dozen demo patients holds too few lesions for stable numbers; it is reported too).
EVAL = "val+test"


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def cli(*argv) -> None:
    from deeplesion_lab.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"`deeplesion-lab {' '.join(map(str, argv))}` failed ({code})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--size", type=int, default=256, help="demo slice side in px (data only)")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="demo seed (default: --seed)")
    ap.add_argument("--canvas", type=int, default=512, help="detector canvas in px")
    ap.add_argument("--spacing", type=float, default=0.8, help="detector mm per pixel")
    ap.add_argument("--crop", type=int, default=128, help="training windows in px (0: whole)")
    ap.add_argument("--arch", default="fasterrcnn", help="detector architecture (--arch)")
    ap.add_argument("--width", type=int, default=16, help="centernet width")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--copy-paste", type=int, default=None,
                    help="copy-paste augmentation (--copy-paste of train-detector; default: "
                         "the CLI's for --arch, detection.workflow.COPY_PASTE; 0: off)")
    ap.add_argument("--class-loss-weight", type=float, default=None,
                    help="class-loss weight of the multi-class model (default: the CLI's "
                         "for --arch, detection.workflow.CLASS_LOSS_WEIGHT, else 1.0)")
    ap.add_argument("--paste-scale", default=None, metavar="LO,HI",
                    help="pasted lesions' own scale range (--paste-scale of train-detector; "
                         "default: the CLI's for --arch, detection.workflow.PASTE_SCALE_RANGE; "
                         "'none': the image's scale range)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--embed-epochs", type=int, default=6)
    ap.add_argument("--share", type=float, default=0.5, help="share of wrong labels fixed")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training (2 oversubscribes a shared 2-core machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequential", dest="parallel", action="store_false",
                    help="train the paired models one after the other (default: two processes "
                         "side by side, --threads each)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_detector"))
    ap.add_argument("--results", type=Path, default=HERE / "results" / "detection.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from deeplesion_lab.demo import generate_demo
    from deeplesion_lab.detection.froc import evaluate_predictions, froc, ground_truth
    from deeplesion_lab.detection.labels_table import labels_from_pseudo
    from deeplesion_lab.detection.plots import plot_froc
    from deeplesion_lab.detection.train import LesionDetector, select_split
    from deeplesion_lab.detection.workflow import set_latest
    from deeplesion_lab.lesion_types import COARSE_TYPES
    from deeplesion_lab.manifest import read_manifest, write_manifest
    from deeplesion_lab.run import RunDir

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "DL_info.csv").is_file():
        generate_demo(data, n_patients=args.patients,
                      seed=args.seed if args.data_seed is None else args.data_seed, size=args.size,
                      progress=False)
    manifest_path = data / "manifest.parquet"
    write_manifest(data / "DL_info.csv", manifest_path)
    m = read_manifest(manifest_path)
    truth = pd.read_parquet(data / "truth.parquet")
    timings["demo data"] = time.perf_counter() - t0

    run = RunDir(out / "run")
    t0 = time.perf_counter()
    if not run.pseudo_labels.is_file():
        cli("embed", manifest_path, "--run", run.path, "--epochs", args.embed_epochs,
            "--truth", data / "truth.parquet", "--threads", args.threads, "--no-progress")
        cli("mine", "--run", run.path, "--threads", args.threads, "--no-progress")
    timings["embed + mine"] = time.perf_counter() - t0
    pseudo = labels_from_pseudo(run.load_pseudo_labels())

    # truth type of every annotated lesion
    ann = truth[truth["annotated"] & truth["lesion_id"].notna()]
    true_label = dict(zip(ann["lesion_id"].astype(str), ann["coarse_type"].map(COARSE_TYPES),
                          strict=True))
    train_ids = set(select_split(m, "train")["lesion_id"].astype(str))
    p_train = pseudo[pseudo["lesion_id"].isin(train_ids)].copy()
    p_train["true"] = p_train["lesion_id"].map(true_label)
    wrong = p_train[p_train["label"] != p_train["true"]]
    pseudo_acc = 1 - len(wrong) / len(p_train)

    # the CLI's CPU defaults (deeplesion_lab.detection.workflow.detector_params)
    params = dict(arch=args.arch, width=args.width,
                  image_size=args.canvas, spacing_mm=args.spacing, train_crop=args.crop or None,
                  box_head_size=256, box_batch_size=32,
                  batch_size=4, optimizer="adamw", lr=args.lr, window="soft tissue",
                  epochs=args.epochs, seed=args.seed, num_threads=args.threads, progress=False)
    from deeplesion_lab.detection.workflow import CLASS_LOSS_WEIGHT, COPY_PASTE, PASTE_SCALE_RANGE

    if args.copy_paste is None:
        args.copy_paste = COPY_PASTE.get(args.arch, 0)
    if args.class_loss_weight is None:
        args.class_loss_weight = CLASS_LOSS_WEIGHT.get(args.arch, 1.0)
    params["copy_paste"] = args.copy_paste
    if args.paste_scale is None:
        ps = PASTE_SCALE_RANGE.get(args.arch)
        args.paste_scale = "none" if ps is None else f"{ps[0]:g},{ps[1]:g}"
    if args.copy_paste and args.paste_scale != "none":
        params["paste_scale_range"] = tuple(float(v) for v in args.paste_scale.split(","))
    if args.arch == "centernet":
        params["class_loss_weight"] = args.class_loss_weight
    results: dict[str, dict] = {}
    test_only: dict[str, dict] = {}
    evals = {}
    speed: dict[str, dict] = {}

    pseudo_path = out / "pseudo_labels_table.parquet"
    pseudo.to_parquet(pseudo_path, index=False)
    jobs = [
        {"manifest": str(manifest_path), "labels": None, "params": params,
         "folder": str(run.detector_dir / "single"), "lineage": {"labels_source": "single class"}},
        {"manifest": str(manifest_path), "labels": str(pseudo_path), "params": params,
         "folder": str(run.detector_dir / "pseudo"), "lineage": {"labels_source": "pseudo"}},
    ]
    fits = parallel(_fit_job, jobs, args.parallel)
    for name, fit in zip(("single", "pseudo"), fits, strict=True):
        timings[f"train {name}"] = fit["seconds"]
        set_latest(run, name)
        det = LesionDetector.load(run.detector_dir / name, num_threads=2, progress=False)
        pred = det.predict(m, EVAL)
        evals[name] = evaluate_predictions(pred, m, EVAL)
        test_only[name] = evaluate_predictions(pred, m, "test").to_metrics()
        pred.to_csv(run.detector_dir / name / "predictions_eval.csv", index=False)
        secs = sum(h["seconds"] for h in det.history_)
        speed[name] = {"train_images_per_s": sum(h["images"] for h in det.history_) / secs,
                       "infer_ms_per_image": det.predict_ms_per_image_,
                       "load_during": fit["load"]}
        results[name] = evals[name].to_metrics()
    multi = det

    # unannotated truth lesions on the evaluated key slices as ignore regions
    gt = ground_truth(m, EVAL)
    unann = truth[~truth["annotated"]]
    bcols = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
    hidden = {f: g[bcols].to_numpy(float) for f, g in unann.groupby("file_name")}
    n_hidden = sum(len(hidden.get(f, ())) for f in gt.file_names)
    gt_images, gt_lesions = len(gt.file_names), sum(len(b) for b in gt.boxes)
    full_truth = {}
    for name in ("single", "pseudo"):
        pred = pd.read_csv(run.detector_dir / name / "predictions_eval.csv")
        dets = [pred.loc[pred["file_name"] == f, ["x1", "y1", "x2", "y2", "score"]].to_numpy()
                for f in gt.file_names]
        ign = [np.vstack([gt.ignore[i], hidden.get(f, np.zeros((0, 4)))])
               for i, f in enumerate(gt.file_names)]
        c = froc(dets, gt.boxes, ignore=ign)
        full_truth[name] = dict(zip(("0.5", "1", "2", "4", "8", "16"),
                                    c.sensitivity_at().tolist(), strict=True))

    # simulated corrections: fix a share of the wrong training pseudo-labels
    rng = np.random.default_rng(args.seed)
    fix = wrong.sample(n=int(round(len(wrong) * args.share)),
                       random_state=int(rng.integers(2**31)))
    corrected = pseudo.copy()
    corrected.loc[corrected["lesion_id"].isin(fix["lesion_id"]), "label"] = (
        corrected["lesion_id"].map(dict(zip(fix["lesion_id"], fix["true"], strict=True))))
    corrected["label"] = corrected["label"].astype("string")
    new_classes = sorted(set(corrected.loc[corrected["lesion_id"].isin(train_ids), "label"]))
    reset = new_classes != multi.classes_
    ft_params = {"epochs": args.finetune_epochs, "num_threads": args.threads,
                 "progress": False}  # lr: a quarter of the base model's (as `finetune`)
    corrected_path = out / "corrected_labels_table.parquet"
    corrected.to_parquet(corrected_path, index=False)
    ft_jobs = [
        {"run": str(run.path), "labels": str(corrected_path), "name": "pseudo-corrected",
         "source": {"labels_source": "simulated corrections", "label_snapshot_id": None},
         "reset_head": reset, "params": ft_params},
        {"run": str(run.path), "labels": str(pseudo_path), "name": "pseudo-more",
         "source": {"labels_source": "pseudo (control)", "label_snapshot_id": None},
         "reset_head": False, "params": ft_params},
    ]
    t = time.perf_counter()
    ft, ctrl = parallel(_finetune_job, ft_jobs, args.parallel)
    timings["fine-tune (corrected and control)"] = time.perf_counter() - t
    results["pseudo-corrected"] = ft["after"]
    results["pseudo-more"] = ctrl["after"]
    from deeplesion_lab.detection.froc import read_predictions

    for name, entry in (("pseudo-corrected", ft["after"]), ("pseudo-more", ctrl["after"])):
        evals[name] = evaluate_predictions(read_predictions(entry["predictions"]), m, EVAL)

    # how sure: 95 % bootstrap intervals over the evaluated key slices, and paired differences
    from deeplesion_lab.detection.bootstrap import bootstrap_sensitivity, paired_difference

    intervals = {n: bootstrap_sensitivity(e.curve, n_boot=2000).to_metrics()
                 for n, e in evals.items()}
    pairs = {
        "pseudo - single": ("pseudo", "single"),
        "corrected - before": ("pseudo-corrected", "pseudo"),
        "corrected - control": ("pseudo-corrected", "pseudo-more"),
    }
    differences = {k: paired_difference(evals[a].curve, evals[b].curve, n_boot=2000).to_metrics()
                   for k, (a, b) in pairs.items()}

    # inference speed with 1 and 2 threads (the loaded model, test slices)
    from deeplesion_lab.detection.workflow import load_detector

    infer = {}
    for th in (1, 2):
        _, det = load_detector(run, "pseudo", num_threads=th, progress=False)
        det.predict(m, EVAL)  # warm-up (and the image cache)
        det.predict(m, EVAL)
        infer[th] = det.predict_ms_per_image_

    # plots
    from deeplesion_lab.detection.froc import FROCResult  # noqa: F401

    curves = {n: evals[n] for n in ("single", "pseudo")}
    plot_froc(curves, out / "froc_single_vs_pseudo.png", title="Single class vs pseudo-labels")

    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "load_end": load()},
        "data": {"patients": args.patients, "lesions": len(m),
                 "key_slices": {s: int(select_split(m, s)["file_name"].nunique())
                                for s in ("train", "val", "test")},
                 "truth_instances": len(truth), "unannotated": int((~truth["annotated"]).sum()),
                 "unannotated_on_eval_key_slices": n_hidden,
                 "eval_images": gt_images, "eval_lesions": gt_lesions},
        "pseudo_labels": {"classes": multi.classes_, "train_accuracy": pseudo_acc,
                          "wrong": len(wrong), "fixed": len(fix), "reset_head": reset},
        "results": results, "test_only": test_only, "full_truth": full_truth,
        "intervals": intervals, "differences": differences,
        "speed": speed, "eval_split": EVAL,
        "infer_ms_per_image_by_threads": infer, "timings_s": timings,
        "finetune": {"before": ft["before"]["sensitivity"], "after": ft["after"]["sensitivity"],
                     "control": ctrl["after"]["sensitivity"],
                     "heads_only": bool(ft.get("heads_only"))},
    }
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    write_markdown(args.results, record)
    print(args.results.read_text())
    return 0


def _fit_job(job: dict) -> dict:
    """Train one detector (in its own process when run through :func:`parallel`)."""
    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.manifest import read_manifest

    m = read_manifest(job["manifest"])
    labels = pd.read_parquet(job["labels"]) if job["labels"] else None
    t = time.perf_counter()
    LesionDetector(**job["params"]).fit(m, labels, checkpoint_dir=job["folder"],
                                       lineage=job["lineage"])
    return {"seconds": time.perf_counter() - t, "load": load()}


def _finetune_job(job: dict) -> dict:
    """Fine-tune the pseudo-label detector (``run_finetune``, as ``deeplesion-lab finetune``)."""
    from deeplesion_lab.detection.workflow import run_finetune
    from deeplesion_lab.run import RunDir

    return run_finetune(RunDir(job["run"]), pd.read_parquet(job["labels"]), job["source"],
                        base="pseudo", name=job["name"], reset_head=job["reset_head"],
                        params=job["params"], eval_split=EVAL, out=lambda *a: None)


def parallel(fn, jobs: list[dict], processes: bool) -> list[dict]:
    """Run ``fn`` over ``jobs``: in as many fresh processes (one torch thread each), or in turn."""
    if not processes:
        return [fn(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def res_mean(r: dict, name: str) -> float:
    """The 0.5-4 FP mean sensitivity of a model of the results record."""
    return float(r["results"][name]["mean_sensitivity_0_5_to_4"])


def write_markdown(path: Path, r: dict) -> None:
    keys = ["0.5", "1", "2", "4", "8", "16"]

    def row(name: str, sens: dict, mean: float | None = None) -> str:
        m = mean if mean is not None else float(np.mean([sens[k] for k in keys[:4]]))
        return f"| {name} | " + " | ".join(f"{sens[k]:.3f}" for k in keys) + f" | {m:.3f} |"

    head = ("| model | " + " | ".join(f"{k} FP" for k in keys) + " | mean 0.5-4 |\n|---|"
            + "---|" * 7)
    res = r["results"]
    d = r["data"]
    p = r["pseudo_labels"]
    a = r["args"]
    lines = [
        "# Detection: single class vs pseudo-labels, fine-tuning from corrected labels",
        "",
        f"Produced by `.venv/bin/python bench/bench_detector.py --patients {a['patients']} "
        f"--size {a['size']} --data-seed {a.get('data_seed')} --arch {a.get('arch')} "
        f"--width {a.get('width')} --lr {a.get('lr')} --copy-paste {a.get('copy_paste', 0)} "
        f"--class-loss-weight {a.get('class_loss_weight', 1.0)} "
        f"--paste-scale {a.get('paste_scale', 'none')} "
        f"--epochs {a['epochs']} --finetune-epochs {a['finetune_epochs']} --share {a['share']} "
        f"--canvas {a['canvas']} --spacing {a['spacing']} --crop {a['crop']} "
        f"--threads {a['threads']}` (CPU only; {r['machine']['cpu_count']} cores shared with "
        f"other jobs, load average at the end {r['machine']['load_end']}; torch "
        f"{r['machine']['torch']}).",
        "",
        f"Data: `generate_demo` with {d['patients']} patients, {a['size']} px slices: "
        f"{d['lesions']} annotated lesions; key slices train/val/test "
        f"{d['key_slices']['train']}/{d['key_slices']['val']}/{d['key_slices']['test']}; the "
        f"truth file has {d['truth_instances']} lesion instances, {d['unannotated']} of them "
        f"never annotated ({d['unannotated_on_eval_key_slices']} lie on evaluated key slices).",
        "",
        f"Pseudo-labels (`deeplesion-lab embed` + `mine`): classes {', '.join(p['classes'])}; "
        f"{p['train_accuracy']:.1%} of the training lesions' pseudo-labels equal their true type "
        f"({p['wrong']} wrong).",
        "",
        ("Detector: Faster R-CNN MobileNetV3-Large-FPN from random weights (no pretrained file "
         "available offline), " if a.get("arch", "fasterrcnn") == "fasterrcnn" else
         f"Detector: {a.get('arch')} (width {a.get('width')}) from random weights, ")
        + "3-slice context (2 mm), soft-tissue window (-160 to 240 HU), "
        f"{a['canvas']} px canvas at {a['spacing']} mm/px, trained on "
        + (f"{a['crop']}-px windows (mostly around lesions; inference on the whole canvas)"
           if str(a.get("crop", "0")) != "0" else "whole canvases")
        + (", box head 256 trained on 32 proposals per image" if a.get("arch", "fasterrcnn")
           == "fasterrcnn" else "")
        + f", batch 4, AdamW lr {a.get('lr', 0.001)} (cosine), {a['epochs']} epochs, "
        + (f"copy-paste of up to {a['copy_paste']} lesions per window"
           + (f" (own scale {a['paste_scale']})"
              if a.get("paste_scale", "none") not in ("none", "None") else "")
           + ", " if str(a.get("copy_paste", "0")) != "0" else "")
        + "same seed for every model; missing "
        "annotations handled by ignore regions on lesions annotated on nearby slices.",
        "",
        "## Sensitivity (DeepLesion protocol: IoU >= 0.5, noisy excluded)",
        "",
        f"Evaluated on the key slices of the validation and test patients together "
        f"({d['eval_lesions']} lesions on {d['eval_images']} key slices; no model selection "
        "was done on them):",
        "",
        head,
        row("single class", res["single"]["sensitivity"]),
        row("multi-class, pseudo-labels", res["pseudo"]["sensitivity"]),
        "",
        f"Test split alone ({r['test_only']['single']['n_lesions']} lesions on "
        f"{r['test_only']['single']['n_images']} key slices):",
        "",
        head,
        row("single class", r["test_only"]["single"]["sensitivity"]),
        row("multi-class, pseudo-labels", r["test_only"]["pseudo"]["sensitivity"]),
        "",
        "Same detections (validation + test), but the unannotated truth lesions of the key "
        "slices are ignore regions (a detection of a real lesion nobody marked is not a false "
        "positive):",
        "",
        head,
        row("single class", r["full_truth"]["single"]),
        row("multi-class, pseudo-labels", r["full_truth"]["pseudo"]),
        "",
        "## Fine-tuning from corrected labels",
        "",
        f"Simulated annotators fixed {p['fixed']} of the {p['wrong']} wrong training "
        f"pseudo-labels ({float(a['share']):.0%}) with the truth file; the multi-class detector "
        f"was fine-tuned for {a['finetune_epochs']} epochs (lr "
        f"{float(a.get('lr', 0.001)) * 0.25:g})"
        + (", heads only (features frozen)" if r["finetune"].get("heads_only") else "")
        + (" with a new classification layer (the corrected labels add classes; known classes "
           "keep their rows)" if p["reset_head"] else "")
        + ". Control: the same fine-tuning on the uncorrected pseudo-labels.",
        "",
        head,
        row("before (pseudo)", r["finetune"]["before"]),
        row("after, corrected labels", r["finetune"]["after"]),
        row("after, uncorrected (control)", r["finetune"]["control"]),
        "",
        "## How sure (95 % bootstrap over the evaluated key slices, 2,000 resamples)",
        "",
        "Mean sensitivity over 0.5-4 FPs per image with its interval, and paired differences "
        "(both models scored on the same resampled slices; p = share of resamples in which the "
        "first model is not better):",
        "",
        "| model | mean 0.5-4 | 95 % interval | sensitivity at 4 FP | 95 % interval |",
        "|---|---|---|---|---|",
        *[f"| {n} | {res_mean(r, n):.3f} | "
          f"{v['interval']['mean_0.5-4'][0]:.3f}-{v['interval']['mean_0.5-4'][1]:.3f} | "
          f"{r['results'][n]['sensitivity']['4']:.3f} | "
          f"{v['interval']['4'][0]:.3f}-{v['interval']['4'][1]:.3f} |"
          for n, v in r["intervals"].items()],
        "",
        "| comparison | difference, mean 0.5-4 | 95 % interval | p |",
        "|---|---|---|---|",
        *[f"| {k} | {v['difference']['mean_0.5-4']:+.3f} | "
          f"{v['interval']['mean_0.5-4'][0]:+.3f} to {v['interval']['mean_0.5-4'][1]:+.3f} | "
          f"{v['p_le_zero']['mean_0.5-4']:.3f} |" for k, v in r["differences"].items()],
        "",
        "## Speed (2 CPU cores, shared)",
        "",
        "| model | training images/s | inference ms/image | load average during |",
        "|---|---|---|---|",
    ]
    for name, s in r["speed"].items():
        lines.append(f"| {name} | {s['train_images_per_s']:.2f} | {s['infer_ms_per_image']:.0f} "
                     f"| {s['load_during']} |")
    inf = r["infer_ms_per_image_by_threads"]
    lines += [
        "",
        "Inference of the pseudo-label model on the evaluated slices with 1 / 2 torch threads: "
        f"{float(inf[1] if 1 in inf else inf['1']):.0f} / "
        f"{float(inf[2] if 2 in inf else inf['2']):.0f} ms per image (network only, after a "
        "warm-up).",
        "",
        "Wall time of each step (s): " + ", ".join(f"{k} {v:.0f}"
                                                 for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
