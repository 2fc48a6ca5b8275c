"""Benchmark the lesion graph: matching speed at DeepLesion scale, and quality on demo data.

Usage::

    .venv/bin/python bench/bench_graph.py [--rows 32735] [--demo-patients 48] [--epochs 6]
                                          [--detector-epochs 0] [--skip-demo]

Writes bench/results/graph.md.

1. Scale: the real test split's metadata (``DL_info_test.csv``, 4,927 lesions of 665 patients)
   repeated with shifted patient indices up to ``--rows`` lesions (32,735 = all of DeepLesion),
   random 128-d embeddings; times the lesion table, all within-patient cross-study pairs and
   their features, scoring, the Hungarian assignment, tracks and the graph (10-NN edges), with
   torch/numpy limited to 2 threads. Random embeddings carry no identity, so this part times the
   computation only (prior coefficients, threshold 0 so that every assigned pair is a match:
   the most work for the tracks; a learned matcher costs the same).
2. Quality: a demo dataset (``generate_demo``), the real pipeline (manifest, ``embed``), then
   ``build_run_graph``: the matcher is fitted on the validation patients and evaluated on the
   test patients against the truth file's track ids; also with single cues (ablation). With
   ``--detector-epochs N > 0`` a detector is trained, run on all key slices, and the
   missing-annotation proposals are evaluated.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def big_table(real_csv: Path, rows: int, dim: int, seed: int = 0):
    from deeplesion_lab.dl_info import read_dl_info

    base = read_dl_info(real_csv).lesions
    parts, k = [], 0
    while sum(len(p) for p in parts) < rows:
        part = base.copy()
        part["patient_index"] = part["patient_index"] + 10000 * k
        part["lesion_id"] = part["lesion_id"].astype(str) + f"-r{k}"
        parts.append(part)
        k += 1
    les = pd.concat(parts, ignore_index=True).head(rows)
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(len(les), dim)).astype(np.float32)
    return les, vec


def bench_scale(real: Path, rows: int, dim: int, repeats: int) -> list[str]:
    from deeplesion_lab.graph import (
        LesionMatcher,
        build_lesion_graph,
        build_tracks,
        lesion_table,
    )

    les, vec = big_table(real / "DL_info_test.csv", rows, dim)
    n_st = les.groupby("patient_index")["study_index"].nunique()
    timings: dict[str, list[float]] = {}

    def tick(name, t):
        timings.setdefault(name, []).append(time.perf_counter() - t)

    for _ in range(repeats):
        t_all = time.perf_counter()
        t = time.perf_counter()
        table = lesion_table(les, les["lesion_id"].to_numpy(), vec)
        X = table.frame()
        tick("lesion table", t)
        t = time.perf_counter()
        # threshold 0: every assigned pair is a match, the worst case for the tracks
        m = LesionMatcher(threshold=0.0).fit(X)
        pairs = m.predict(X)
        tick("pairs + features + score + Hungarian assignment", t)
        t = time.perf_counter()
        tracks = build_tracks(table.lesions, pairs)
        tick("tracks", t)
        t_match = time.perf_counter() - t_all
        timings.setdefault("matching total (table, pairs, assignment, tracks)", []).append(t_match)
        t = time.perf_counter()
        g = build_lesion_graph(table, n_neighbors=10, pairs=pairs, tracks=tracks)
        tick("graph (10-NN edges over all lesions + match edges)", t)
        timings.setdefault("everything", []).append(time.perf_counter() - t_all)
    lines = [
        f"### Scale: {len(les):,} lesions, {les['patient_index'].nunique():,} patients "
        f"({int((n_st > 1).sum()):,} with 2+ studies), {dim}-d random embeddings",
        "",
        f"{len(pairs):,} within-patient cross-study pairs, {int(pairs['assigned'].sum()):,} kept "
        f"by the assignment (all matched: threshold 0), {tracks['track_id'].nunique():,} tracks, {len(g.edges):,} edges.",
        "",
        f"| step | best of {repeats} (s) | median (s) |",
        "|---|---|---|",
    ]
    for k, v in timings.items():
        lines.append(f"| {k} | {min(v):.2f} | {float(np.median(v)):.2f} |")
    return lines


def _cli(*argv) -> None:
    from deeplesion_lab.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        sys.exit(f"step {' '.join(map(str, argv))} failed ({code})")


def bench_demo(n_patients: int, epochs: int, det_epochs: int, size: int, work: Path,
               neighbour_slices: int = 1) -> list[str]:
    from deeplesion_lab.demo import generate_demo
    from deeplesion_lab.graph import (
        LesionMatcher,
        lesion_table,
        matching_metrics,
        pair_labels,
        read_truth,
        split_patients,
        track_ids_for,
    )
    from deeplesion_lab.graph.build import build_run_graph
    from deeplesion_lab.run import RunDir

    # each step is skipped when its output exists in ``work`` (``--work DIR`` keeps them)
    t = time.perf_counter()
    csv = work / "demo" / "DL_info.csv"
    truth_path = work / "demo" / "truth.parquet"
    reused = []
    if not csv.is_file():
        generate_demo(work / "demo", n_patients=n_patients, seed=0, size=size, progress=True)
    else:
        reused.append("demo data")
    t_demo = time.perf_counter() - t
    man = work / "manifest.parquet"
    run_dir = work / "run"
    if not man.is_file():
        _cli("manifest", csv, "--out", man)
    t = time.perf_counter()
    if not RunDir(run_dir).embeddings.is_file():
        _cli("embed", man, "--run", run_dir, "--epochs", epochs, "--truth", truth_path)
    else:
        reused.append("embeddings")
    t_embed = time.perf_counter() - t
    preds = []
    t_det = 0.0
    if det_epochs > 0:
        t = time.perf_counter()
        pred = RunDir(run_dir).detector_dir / "predictions_all.csv"
        if not (RunDir(run_dir).detector_dir / "single" / "model.pt").is_file():
            _cli("train-detector", "--run", run_dir, "--epochs", det_epochs, "--image-size",
                 size, "--backbone", "mobilenet_v3_large_fpn")
        if not pred.is_file():
            _cli("detect", "--run", run_dir, "--out", pred, "--split", "all")
        else:
            reused.append("detector and its predictions")
        preds = [pred]
        t_det = time.perf_counter() - t
    t = time.perf_counter()
    res = build_run_graph(run_dir, truth=truth_path, predictions=preds[0] if preds else None,
                          neighbour_slices=neighbour_slices)
    t_graph = time.perf_counter() - t
    mt, mm = res.metrics["matching"], res.metrics["missing_annotations"]

    # ablation: single cues, same patients
    run = RunDir(run_dir)
    table = lesion_table(run.load_manifest(), *run.load_embeddings())
    truth = read_truth(truth_path)
    y = track_ids_for(table.lesions["lesion_id"], truth)
    X = table.frame()
    fit_m, eval_m, rule = split_patients(X, y)
    Xf, Xe = X.loc[fit_m].reset_index(drop=True), X.loc[eval_m].reset_index(drop=True)
    abl = []
    for name, feats, assign in [
        ("all cues + assignment (default)", None, True),
        ("all cues, no assignment", None, False),
        ("embedding distance only", ["embedding_distance"], True),
        ("location only", ["location_distance"], True),
        ("location + size", ["location_distance", "size_log_ratio"], True),
    ]:
        kw = {"assignment": assign}
        if feats:
            kw["features"] = feats
        m = LesionMatcher(**kw).fit(Xf, y[fit_m])
        p = m.predict(Xe)
        r = matching_metrics(p, pair_labels(p, y[eval_m]))
        abl.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                   f"{r['auc']:.3f} |")

    # all patients, patient-level 2-fold: fit on one half, evaluate on the other, and swap
    # (the embedder never saw track ids, so any patient can evaluate the matcher)
    known = pd.Series(y).notna().to_numpy()
    pats = np.unique(X.loc[known, "patient_index"])
    rng = np.random.default_rng(0)
    rng.shuffle(pats)
    halves = [set(pats[::2]), set(pats[1::2])]
    folds = []
    for name, feats in [("all cues + assignment (default)", None),
                        ("embedding distance only", ["embedding_distance"]),
                        ("location + size", ["location_distance", "size_log_ratio"])]:
        all_p = []
        for k in (0, 1):
            fm = X["patient_index"].isin(halves[k]).to_numpy() & known
            em = X["patient_index"].isin(halves[1 - k]).to_numpy() & known
            m = LesionMatcher(**({"features": feats} if feats else {})).fit(
                X.loc[fm].reset_index(drop=True), y[fm])
            p = m.predict(X.loc[em].reset_index(drop=True))
            p["label"] = pair_labels(p, y[em])
            all_p.append(p)
        p = pd.concat(all_p, ignore_index=True)
        r = matching_metrics(p, p["label"].to_numpy())
        folds.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['auc']:.3f} |")
    n_fold_pairs = int(np.isfinite(p["label"]).sum())
    n_fold_pos = int((p["label"] == 1).sum())

    lines = [
        f"### Demo data: {n_patients} patients, {size}px, {len(table.lesions)} annotated lesions, "
        f"{len(truth)} truth lesions",
        "",
        (f"Reused from `--work {work}` (made by an earlier call): {', '.join(reused)}. "
         if reused else "")
        + "".join(
            f"{name} {sec:.0f} s; " for name, sec, key in (
                ("demo generated in", t_demo, "demo data"),
                (f"`embed --epochs {epochs}`", t_embed, "embeddings"),
                (f"detector ({det_epochs} epochs) + detect", t_det,
                 "detector and its predictions"),
            ) if key not in reused and (key != "detector and its predictions" or det_epochs)
        )
        + f"`graph` {t_graph:.1f} s (build_run_graph: matching, tracks, graph"
        + (", proposals embedded with the run's embedder" if preds else "") + ").",
        "",
        f"Matching ({mt.get('split_rule', rule)}; {mt.get('fit_patients')} fit patients, "
        f"{mt.get('eval_patients')} evaluation patients, {mt.get('eval_pairs')} evaluation pairs "
        f"of which {mt.get('eval_positive_pairs')} same-lesion):",
        "",
        "| matcher | precision | recall | F1 | ROC AUC |",
        "|---|---|---|---|---|",
        *abl,
        "",
        f"All {len(pats)} patients with identities, patient-level 2-fold (fit on one half, "
        f"evaluate on the other, both ways; {n_fold_pairs} pairs, {n_fold_pos} same-lesion):",
        "",
        "| matcher | precision | recall | F1 | ROC AUC |",
        "|---|---|---|---|---|",
        *folds,
        "",
        f"Threshold {mt.get('threshold', float('nan')):.3f}; {mt['tracks']} tracks, "
        f"{mt['tracks_multi_study']} over 2+ studies; {mt['single_study_patients']} single-study "
        "patients.",
        "",
    ]
    if "recall_at_1" in mm:
        bs = mm["by_detector_score"]
        from deeplesion_lab.detection.froc import read_predictions
        from deeplesion_lab.graph import pairwise_iou

        raw = read_predictions(preds[0])
        by_file = {f: g[["x1", "y1", "x2", "y2"]].to_numpy() for f, g in raw.groupby("file_name")}
        keys = set(table.lesions["file_name"].astype(str))

        def found(rows: pd.DataFrame) -> float:
            hit = [
                len(by_file.get(r.file_name, [])) > 0 and pairwise_iou(
                    by_file[r.file_name], [[r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]]
                ).max() >= 0.5
                for r in rows.itertuples(index=False)
            ]
            return float(np.mean(hit)) if hit else float("nan")

        on_keys = truth.loc[truth["file_name"].astype(str).isin(keys)]
        sens_ann = found(on_keys.loc[on_keys["annotated"]])
        sens_un = found(on_keys.loc[~on_keys["annotated"]])
        lines += [
            f"Detector (`detect --split all`, {len(raw)} detections on {raw['file_name'].nunique()}"
            f" key slices, max score {raw['score'].max():.2f}): a detection at IoU >= 0.5 for "
            f"{sens_ann:.1%} of the annotated and {sens_un:.1%} of the unannotated lesions on the "
            "annotated key slices (the latter bounds the mining's recall)."
            + (" This detector finds few lesions at all, so the mining figures below say "
               "little about the mining itself; they need a better-trained detector (the "
               "pipeline's, or more epochs on a GPU)." if sens_ann < 0.5 else ""),
            "",
            f"Missing annotations: recall with all proposals {mm['recall_all']:.3f}.",
            "",
            f"Missing annotations ({mm['n_missing']} unannotated lesions on {mm['n_images']} "
            f"key images, {mm['evaluated_on']}; {mm['proposals']} proposals; hit = "
            f"{mm['hit_rule']}):",
            "",
            "| ranking | recall@0.5/img | recall@1/img | recall@2/img | precision@top |",
            "|---|---|---|---|---|",
            f"| score + similarity (default) | {mm['recall_at_0_5']:.3f} | "
            f"{mm['recall_at_1']:.3f} | {mm['recall_at_2']:.3f} | {mm['precision_at_top']:.3f} |",
            f"| detector score only | {bs['recall_at_0_5']:.3f} | {bs['recall_at_1']:.3f} | "
            f"{bs['recall_at_2']:.3f} | {bs['precision_at_top']:.3f} |",
            "",
        ]
    else:
        lines += [f"Missing annotations: {mm.get('skipped', 'not evaluated')}", ""]
    return lines


def bench_seeds(seeds: list[int], n_patients: int, epochs: int, size: int,
                work: Path) -> list[str]:
    """The three matchers of ``deeplesion-lab graph`` over several demo seeds (issue 19)."""
    from deeplesion_lab.demo import generate_demo
    from deeplesion_lab.graph.build import build_run_graph
    from deeplesion_lab.run import RunDir

    names = {"f1": "all cues (matching.f1)", "location_only_f1": "location only",
             "appearance_only_f1": "appearance (embedding) only"}
    rows, split_vals, fold_vals = [], {k: [] for k in names}, {k: [] for k in names}
    for seed in seeds:
        d = work / f"seed{seed}"
        csv, truth_path = d / "demo" / "DL_info.csv", d / "demo" / "truth.parquet"
        if not csv.is_file():
            generate_demo(d / "demo", n_patients=n_patients, seed=seed, size=size, progress=True)
        man, run_dir = d / "manifest.parquet", d / "run"
        if not man.is_file():
            _cli("manifest", csv, "--out", man)
        if not RunDir(run_dir).embeddings.is_file():
            _cli("embed", man, "--run", run_dir, "--epochs", epochs, "--truth", truth_path)
        res = build_run_graph(run_dir, truth=truth_path, neighbour_slices=0)
        mt = res.metrics["matching"]
        for k in names:
            split_vals[k].append(mt[f"split_{k}"])
            fold_vals[k].append(mt[k])
        rows.append(
            f"| {seed} | {mt['eval_patients']} / {mt['eval_positive_pairs']} | "
            + " | ".join(f"{mt[k]:.3f}" for k in names) + " | "
            + f"{mt['split_eval_positive_pairs']} | "
            + " | ".join(f"{mt['split_' + k]:.3f}" for k in names) + " |")

    def summary(vals: dict) -> str:
        from scipy import stats

        out = []
        for k in names:
            v = np.array(vals[k])
            half = (stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
                    if len(v) > 1 else float("nan"))
            out.append(f"{v.mean():.3f} +- {half:.3f}")
        return " | ".join(out)

    diff = {b: np.array(fold_vals["f1"]) - np.array(fold_vals[b])
            for b in ("location_only_f1", "appearance_only_f1")}
    return [
        f"### Matching over {len(seeds)} demo seeds ({n_patients} patients, {size} px, "
        f"`embed --epochs {epochs}`)",
        "",
        "`graph` (what `metrics.json` holds as `matching.f1`, `matching.location_only_f1`, "
        "`matching.appearance_only_f1`): patient-level 2-fold cross-fitting over all patients "
        "with identities (each half evaluated by matchers fitted on the other half). Split "
        "alone (`matching.split_*`): fitted on the validation patients, evaluated on the test "
        "patients only (4-5 patients at this size, so one lesion moves F1 by several points).",
        "",
        "| seed | `graph` patients / same-lesion pairs | all cues | location only | "
        "appearance only | split alone: same-lesion pairs | all cues | location only | "
        "appearance only |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        f"| mean +- 95 % (t interval over seeds) | | {summary(fold_vals)} | | "
        f"{summary(split_vals)} |",
        "",
        "`graph`, all cues minus each baseline, per seed: location only "
        + ", ".join(f"{x:+.3f}" for x in diff["location_only_f1"])
        + "; appearance only " + ", ".join(f"{x:+.3f}" for x in diff["appearance_only_f1"])
        + ".",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32735)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "deeplesion_real")
    ap.add_argument("--demo-patients", type=int, default=48)
    ap.add_argument("--demo-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--detector-epochs", type=int, default=0)
    ap.add_argument("--neighbour-slices", type=int, default=1,
                    help="graph's --neighbour-slices (run the detector next to key slices)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*", default=[],
                    help="also run the three matchers of `graph` on demo data of these seeds "
                    "(--demo-patients patients, 512 px; reused under --work)")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the demo data and run here (reused by the next call)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "graph.md")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass
    cmd = "`.venv/bin/python bench/bench_graph.py " + " ".join(sys.argv[1:]) + "`"
    lines = [
        f"# Lesion graph benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (2 threads used), "
        f"Python {platform.python_version()}; command: {cmd.replace('  ', ' ')}",
        "",
        "Load average at the start (1/5/15 min): "
        + "/".join(f"{x:.1f}" for x in os.getloadavg())
        + " (other processes share the cores: timings under load are pessimistic).",
        "",
    ]
    if not args.skip_scale:
        lines += bench_scale(args.real, args.rows, args.dim, args.repeats)
        lines.append("")
    if not args.skip_demo:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            lines += bench_demo(args.demo_patients, args.epochs, args.detector_epochs,
                                args.demo_size, args.work, args.neighbour_slices)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                lines += bench_demo(args.demo_patients, args.epochs, args.detector_epochs,
                                    args.demo_size, Path(tmp), args.neighbour_slices)
    if args.seeds:
        work = args.work or Path(tempfile.mkdtemp())
        lines += bench_seeds(args.seeds, args.demo_patients, args.epochs, 512, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
