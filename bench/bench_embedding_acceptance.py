"""Issue 15's acceptance figures through the CLI a user types, on fresh demo data.

Usage::

    .venv/bin/python bench/bench_embedding_acceptance.py --patients 40 --seeds 101 102 103 \
        [--embed-args "--type-weight 0"] [--mine-args "--lesions-per-cluster 0"] [--label NAME] \
        [--reuse-embed LABEL] [--jobs 2] [--work /tmp/emb_accept] [--demo-from-head] \
        [--out bench/results/embedding_acceptance.md]

For each seed (seeds the tests never use): ``demo-data --patients P --seed S`` (with
``--demo-from-head``: the demo generator as committed at HEAD, from ``git archive``, so that
uncommitted edits in the checkout do not change the data), ``manifest``, ``embed --truth``
(extra ``--embed-args``, e.g. the old defaults; with ``--reuse-embed LABEL`` the embedding of
the run ``run_LABEL`` of the same demo is copied instead: the same embeddings, mined anew),
``mine`` (extra ``--mine-args``), ``evaluate``;
one torch thread per process, at most ``--jobs`` seeds at once. Reports per seed and mean +- sd:
``classification.embedding_accuracy - untrained_accuracy``, ``mining.purity``, ``mining.nmi``,
``retrieval.type_precision_at_5``, the baselines, per-round NMI (to the previous round and to the
truth), ``suggest.*`` against random and confident learning, and the embed/mine seconds.
Appends the Markdown to ``--out`` and the raw metrics to ``--out`` with ``.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def head_package(work: Path) -> Path:
    """The package as committed at HEAD (for the demo generator), unpacked under ``work``."""
    dest = work / "head_pkg"
    if not (dest / "deeplesion_lab").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["git", "archive", "HEAD", "deeplesion_lab"], cwd=REPO,
                              check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def run_seed(args, seed: int, head: Path | None) -> dict:
    d = args.work / f"p{args.patients}_s{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cli = [sys.executable, "-m", "deeplesion_lab.cli"]
    data = d / "data"
    if not (data / "DL_info.csv").is_file():
        genv = {**env, "PYTHONPATH": str(head)} if head else env
        subprocess.run([*cli, "demo-data", "--out", str(data), "--patients", str(args.patients),
                        "--seed", str(seed)], check=True, capture_output=True, env=genv,
                       cwd=head or REPO)
    manifest = d / "demo.parquet"
    if not manifest.is_file():
        subprocess.run([*cli, "manifest", str(data / "DL_info.csv"), "--out", str(manifest)],
                       check=True, capture_output=True, env=env, cwd=REPO)
    run = d / f"run_{args.label}"
    secs = {}
    steps = [
        ("embed", ["embed", str(manifest), "--run", str(run), "--truth",
                   str(data / "truth.parquet"), "--threads", "1", "--no-progress",
                   *shlex.split(args.embed_args)]),
        ("mine", ["mine", "--run", str(run), "--threads", "1", "--no-progress",
                  *shlex.split(args.mine_args)]),
        ("evaluate", ["evaluate", "--run", str(run), "--no-progress"]),
    ]
    if args.reuse_embed:
        import shutil

        src = d / f"run_{args.reuse_embed}"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        for name in ("run.json", "embedder.pt", "embedder.json", "embeddings.parquet"):
            shutil.copy2(src / name, run / name)
        if (src / "cache").is_dir():
            shutil.copytree(src / "cache", run / "cache")
        m0 = json.loads((src / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({k: m0[k] for k in ("embedding",)
                                                      if k in m0}))
        secs["embed"] = json.loads((src / "bench.json").read_text())["embed"] if (
            src / "bench.json").is_file() else float("nan")
        steps = steps[1:]
    for name, argv in steps:
        t = time.perf_counter()
        out = subprocess.run([*cli, *argv], capture_output=True, text=True, env=env, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"seed {seed}: {name} failed\n{out.stderr[-2000:]}")
        secs[name] = round(time.perf_counter() - t, 1)
    (run / "bench.json").write_text(json.dumps(secs))
    m = json.loads((run / "metrics.json").read_text())
    m["bench"] = {"seed": seed, "patients": args.patients, "label": args.label, "seconds": secs}
    print(f"seed {seed}: done {secs}", flush=True)
    return m


def row(m: dict) -> dict:
    c, r, mi, sg = m["classification"], m["retrieval"], m["mining"], m.get("suggest", {})
    return {
        "seed": m["bench"]["seed"], "n": m["evaluation"]["n_lesions"],
        "acc": c["embedding_accuracy"], "untrained": c["untrained_accuracy"],
        "gain": c["embedding_accuracy"] - c["untrained_accuracy"],
        "raw": c["raw_intensity_accuracy"], "loc": c["location_only_accuracy"],
        "p5": r["type_precision_at_5"], "nmi": mi["nmi"], "purity": mi["purity"], "k": mi["k"],
        "round_nmi": mi.get("round_nmi", []), "round_nmi_truth": mi.get("round_nmi_truth", []),
        "s_auroc": sg.get("auroc", float("nan")), "s_p50": sg.get("precision_at_50", float("nan")),
        "cl_auroc": sg.get("confident_learning_auroc", float("nan")),
        "cl_p50": sg.get("confident_learning_precision_at_50", float("nan")),
        "rand_p": sg.get("random_precision", float("nan")),
        "half": sg.get("reviews_to_half"), "cl_half": sg.get("confident_learning_reviews_to_half"),
        "rand_half": sg.get("random_reviews_to_half"),
        "embed_s": m["bench"]["seconds"]["embed"], "mine_s": m["bench"]["seconds"]["mine"],
    }


def markdown(args, rows: list[dict]) -> str:
    ms = lambda k: f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"  # noqa: E731
    lines = [
        f"### {args.label}: {args.patients} patients, seeds {', '.join(map(str, args.seeds))} "
        f"({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `.venv/bin/python bench/bench_embedding_acceptance.py --patients "
        f"{args.patients} --seeds {' '.join(map(str, args.seeds))} --label {args.label}"
        + (f" --embed-args \"{args.embed_args}\"" if args.embed_args else "")
        + (f" --mine-args \"{args.mine_args}\"" if args.mine_args else "")
        + (f" --reuse-embed {args.reuse_embed}" if args.reuse_embed else "")
        + (" --demo-from-head" if args.demo_from_head else "") + "`",
        "",
        "| seed | lesions | embedding acc | untrained | gain | raw | location | p@5 | NMI | "
        "purity | K | embed s | mine s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['n']} | {r['acc']:.3f} | {r['untrained']:.3f} | "
                     f"{r['gain']:+.3f} | {r['raw']:.3f} | {r['loc']:.3f} | {r['p5']:.3f} | "
                     f"{r['nmi']:.3f} | {r['purity']:.3f} | {r['k']} | {r['embed_s']:.0f} | "
                     f"{r['mine_s']:.0f} |")
    lines.append(f"| mean ± sd | | {ms('acc')} | {ms('untrained')} | {ms('gain')} | {ms('raw')} "
                 f"| {ms('loc')} | {ms('p5')} | {ms('nmi')} | {ms('purity')} | | | |")
    lines += ["", "Deep mining rounds (NMI to the previous round; NMI to the truth before the "
              "rounds, then after each):", ""]
    for r in rows:
        lines.append(f"- seed {r['seed']}: previous {', '.join(f'{v:.2f}' for v in r['round_nmi'])}"
                     f"; truth {', '.join(f'{v:.3f}' for v in r['round_nmi_truth'])}")
    lines += ["", "Suggest next (wrong pseudo-label = not the true type):", "",
              "| seed | AUROC | conf. learning AUROC | precision@50 | conf. learning | random | "
              "reviews to fix half | conf. learning | random |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['s_auroc']:.3f} | {r['cl_auroc']:.3f} | {r['s_p50']:.3f} "
                     f"| {r['cl_p50']:.3f} | {r['rand_p']:.3f} | {r['half']} | {r['cl_half']} | "
                     f"{r['rand_half']:.0f} |")
    lines.append(f"| mean | {ms('s_auroc')} | {ms('cl_auroc')} | {ms('s_p50')} | {ms('cl_p50')} "
                 f"| {ms('rand_p')} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    ap.add_argument("--embed-args", default="", help="extra `embed` arguments")
    ap.add_argument("--mine-args", default="", help="extra `mine` arguments")
    ap.add_argument("--reuse-embed", default=None, metavar="LABEL",
                    help="copy the embedding of run_LABEL (same demo) instead of embedding")
    ap.add_argument("--label", default="defaults")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "emb_accept")
    ap.add_argument("--demo-from-head", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "embedding_acceptance.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    head = head_package(args.work) if args.demo_from_head else None
    with ThreadPoolExecutor(args.jobs) as ex:
        metrics = list(ex.map(lambda s: run_seed(args, s, head), args.seeds))
    with open(args.out.with_suffix(".jsonl"), "a") as f:
        for m in metrics:
            f.write(json.dumps(m) + "\n")
    text = markdown(args, [row(m) for m in metrics])
    with open(args.out, "a") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
