"""Missing-annotation mining on the runs of ``bench/bench_detector.py`` (issue 14, session 6):
``missing_annotations.recall_at_2`` as ``deeplesion-lab graph`` computes it, per detector and
setting, and where the unannotated test lesions are lost.

Usage::

    .venv/bin/python bench/bench_missing.py --out /tmp/h14_b101 /tmp/h14_b102 ... \\
        [--models pseudo,single] [--results bench/results/missing_annotations.md]

Each ``--out`` is a ``bench_detector.py`` output folder (one demo data seed) with its run
(embeddings, embedder, the ``single`` and ``pseudo`` detectors). The graph's evaluation reads
only the test split's annotated key images (``eval_split`` 3), so the detector is run on those
and on their neighbouring slices only; the rest is the graph step's own code
(:func:`~deeplesion_lab.graph.missing.propose_missing` on the same key images,
``embed_proposals``, ``proposal_similarity`` with the run's lesion table, ``rank_proposals``,
``evaluate_proposals``), so the figures equal those of ``deeplesion-lab graph --run RUN
--detector-model MODEL [--neighbour-slices 0|1]`` (the pipeline of ``make lab`` runs the
``pseudo`` model with no neighbour slices).

``--arch-runs SEED:DATA_DIR:OUT[:OUT...]`` (session 8) scores instead the candidate folders of
``bench/bench_detector_arch.py`` (their ``predictions_eval.csv``, on the val+test key slices):
the test key slices' detections go through the same ``propose_missing`` (no neighbour slices,
the pipeline's setting) and are ranked by the detector's score alone (there are no embeddings
in those folders; session 6 found the embedding similarity within +-0.04 of it), giving
``recall_at_2`` per candidate on the demo's ``truth.parquet``.

Also, per unannotated test lesion: whether some detection of its key slice reaches IoU >= 0.5
(the detector finds it), whether it survives the proposal filter and ranking cut (top
``round(2 x images)`` proposals over all images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def seed_rows(out: Path, models: list[str]) -> list[dict]:
    from deeplesion_lab.boxes import pairwise_iou
    from deeplesion_lab.graph.build import embed_proposals, lesion_table, run_detector
    from deeplesion_lab.graph.missing import (
        evaluate_proposals,
        proposal_similarity,
        propose_missing,
        rank_proposals,
    )
    from deeplesion_lab.graph.truth import read_truth
    from deeplesion_lab.run import RunDir

    run = RunDir(out / "run")
    manifest = run.load_manifest()
    ids, vecs = run.load_embeddings()
    table = lesion_table(manifest, ids, vecs, source=str(run.embeddings))
    truth = read_truth(run.truth_path())
    test = manifest[manifest["split"] == 3]
    images = sorted(test["file_name"].astype(str).unique())
    unann = truth[(~truth["annotated"]) & truth["file_name"].astype(str).isin(images)]
    rec = out / "results.json"
    seed = json.loads(rec.read_text())["args"]["data_seed"] if rec.is_file() else out.name
    rows = []
    for name in models:
        cache = out / f"bench_missing_{name}.csv"
        if cache.is_file():
            pred = pd.read_csv(cache, dtype={"file_name": str, "label": str},
                               keep_default_na=False)
        else:
            pred, _ = run_detector(run, test, key_slices=True, neighbour_slices=1, model=name)
            pred.to_csv(cache, index=False)
        on_key = pred[pred["file_name"].astype(str).isin(images)]
        found = 0
        for r in unann.itertuples():
            g = on_key[on_key["file_name"] == r.file_name]
            if len(g):
                iou = pairwise_iou(g[["x1", "y1", "x2", "y2"]].to_numpy(float),
                                   np.array([[r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]]))
                found += bool((iou >= 0.5).any())
        for nb in (0, 1):
            p = pred if nb else on_key
            props = propose_missing(test, p, neighbour_slices=max(nb, 1))
            vec, _ = embed_proposals(run, props, manifest)
            props = rank_proposals(proposal_similarity(props, vec, table))
            for score in ("rank_score", "score"):
                ev = evaluate_proposals(props, truth, images, score=score)
                rows.append({"data_seed": seed, "model": name, "neighbour_slices": nb,
                             "ranked_by": score, "n_images": ev["n_images"],
                             "n_missing": ev["n_missing"], "found_by_detector": found,
                             **{k: ev[k] for k in ("recall_at_0_5", "recall_at_1",
                                                   "recall_at_2", "recall_all",
                                                   "precision_at_2")}})
    return rows


def arch_rows(spec: str) -> list[dict]:
    """``SEED:DATA_DIR:OUT[:OUT...]``: recall of each bench_detector_arch candidate folder."""
    from deeplesion_lab.graph.missing import evaluate_proposals, propose_missing
    from deeplesion_lab.graph.truth import read_truth
    from deeplesion_lab.manifest import read_manifest

    seed, data, *outs = spec.split(":")
    manifest = read_manifest(Path(data) / "manifest.parquet")
    truth = read_truth(Path(data) / "truth.parquet")
    test = manifest[manifest["split"] == 3]
    images = sorted(test["file_name"].astype(str).unique())
    rows = []
    for out in outs:
        pred = pd.read_csv(Path(out) / "predictions_eval.csv", dtype={"file_name": str},
                           keep_default_na=False)
        on_key = pred[pred["file_name"].astype(str).isin(images)]
        props = propose_missing(test, on_key, neighbour_slices=1)
        ev = evaluate_proposals(props, truth, images, score="score")
        rows.append({"data_seed": seed, "model": Path(out).name, "neighbour_slices": 0,
                     "ranked_by": "score", "n_images": ev["n_images"],
                     "n_missing": ev["n_missing"], "found_by_detector": -1,
                     **{k: ev[k] for k in ("recall_at_0_5", "recall_at_1", "recall_at_2",
                                           "recall_all", "precision_at_2")}})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, nargs="+")
    ap.add_argument("--arch-runs", nargs="+", help="SEED:DATA_DIR:OUT[:OUT...] (see above)")
    ap.add_argument("--models", default="pseudo,single")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "missing_annotations.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if not args.out and not args.arch_runs:
        ap.error("give --out or --arch-runs")
    if args.arch_runs:
        rows = [r for spec in args.arch_runs for r in arch_rows(spec)]
        df = pd.DataFrame(rows)
        lines = [
            "| seed | candidate | images | unannotated | recall@0.5 | recall@1 | recall@2 | "
            "recall, all proposals | precision@2 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['data_seed']} | {r['model']} | {r['n_images']} | {r['n_missing']} | "
                f"{r['recall_at_0_5']:.3f} | {r['recall_at_1']:.3f} | {r['recall_at_2']:.3f} | "
                f"{r['recall_all']:.3f} | {r['precision_at_2']:.3f} |")
        for mo, g in df.groupby("model"):
            lines.append(f"\nmean recall@2 of {mo}: {g['recall_at_2'].mean():.3f} "
                         f"over {len(g)} seeds")
        head = [
            "# Missing-annotation mining of bench_detector_arch candidates (issue 14)",
            "",
            f"Produced by `.venv/bin/python bench/bench_missing.py --arch-runs "
            f"{' '.join(args.arch_runs)}` on {time.strftime('%Y-%m-%d')} (CPU only): the test "
            "key slices' detections of each candidate through `propose_missing` (no neighbour "
            "slices), ranked by the detector's score; hits at IoU >= 0.5 with an unannotated "
            "truth lesion, recall at round(r x images) proposals over all images.",
            "",
        ]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("\n".join(head + lines) + "\n")
        args.results.with_suffix(".json").write_text(df.to_json(orient="records", indent=1))
        print("\n".join(lines))
        return 0
    rows = [r for o in args.out for r in seed_rows(o, args.models.split(","))]
    df = pd.DataFrame(rows)
    (args.results.with_suffix(".json")).write_text(df.to_json(orient="records", indent=1))
    lines = [
        "# Missing-annotation mining: recall of the unannotated test lesions (issue 14, session 6)",
        "",
        f"Produced by `.venv/bin/python bench/bench_missing.py --out "
        f"{' '.join(map(str, args.out))} --models {args.models}` on 2026-12-07 (CPU only), on "
        "the runs of `bench/bench_detector.py` (command in BENCHMARKS.md). Figures as "
        "`deeplesion-lab graph` computes them (`missing_annotations.recall_at_*`): proposals on "
        "the test split's annotated key slices, hits at IoU >= 0.5 with an unannotated truth "
        "lesion, recall at round(r x images) proposals over all images. `found` = unannotated "
        "lesions that some detection of their key slice overlaps at IoU >= 0.5 (the detector's "
        "50 per slice). **The pipeline of `make lab`: model pseudo, neighbour slices 0, ranked "
        "by rank_score.**",
        "",
        "| seed | model | neighbour slices | ranked by | images | unannotated | found | "
        "recall@0.5 | recall@1 | recall@2 | recall, all proposals | precision@2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data_seed']} | {r['model']} | {r['neighbour_slices']} | {r['ranked_by']} | "
            f"{r['n_images']} | {r['n_missing']} | {r['found_by_detector']} | "
            f"{r['recall_at_0_5']:.3f} | {r['recall_at_1']:.3f} | {r['recall_at_2']:.3f} | "
            f"{r['recall_all']:.3f} | {r['precision_at_2']:.3f} |")
    g = df.groupby(["model", "neighbour_slices", "ranked_by"])
    lines += ["", "Mean over the seeds (and the recall@2 pooled over all their lesions):", "",
              "| model | neighbour slices | ranked by | mean recall@2 | min | pooled recall@2 |",
              "|---|---|---|---|---|---|"]
    for (mo, nb, sc), s in g:
        pooled = float((s["recall_at_2"] * s["n_missing"]).sum() / s["n_missing"].sum())
        lines.append(f"| {mo} | {nb} | {sc} | {s['recall_at_2'].mean():.3f} | "
                     f"{s['recall_at_2'].min():.3f} | {pooled:.3f} |")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
