"""Side-by-side study of embedding training candidates on demo data (issue 15).

Usage::

    .venv/bin/python bench/bench_embedding_study.py --patients 24 40 --seeds 101 102 103 \
        --candidates base tw1 tw1uni ceiling [--jobs 2] [--work /tmp/emb_study] \
        [--jsonl bench/results/embedding_study.jsonl] [--summary-only]

For each demo (``demo-data --patients P --seed S``, seeds the tests never use) and candidate, one
process with one torch thread trains a :class:`~deeplesion_lab.embedding.LesionEmbedder` with the
candidate's settings on the protocol's seed+val sampler types (exactly what ``embed`` gives its
sampler), then measures what ``evaluate`` measures: 8-class accuracy (paper protocol) of the
trained embedding, the same network untrained, raw intensity and location only; type
precision@5; k-means pseudo-labels (K by silhouette over 8-16, as ``mine`` before deep rounds)
NMI and purity against the true coarse type; collapse diagnostics (mean cosine between lesions,
effective rank of the embedding); the loss curve; training seconds. At most ``--jobs`` processes
run at once. Each result is appended to ``--jsonl``; the Markdown summary is printed.

``corr10`` / ``corr30`` simulate corrections flowing back into ``embed`` (``--labels-from-store``):
the true type of a random 10 % / 30 % of the lesions (non-test lesions only, as ``embed`` takes
them) joins the sampler's types.

``ctx80*`` add the fixed-size context crop (``PatchConfig(context_mm=80)``, the ``embed``
default since 2026-12-07): ``ctx80nm`` without the metadata input, ``ctx80nce`` with an InfoNCE
loss between two augmentations of each anchor (``contrastive_weight=1``), ``ctx80ceiling`` the
supervised ceiling with the crop. The other candidates have no context crop (the network before).

``ceiling`` is the supervised ceiling: the same network and inputs, trained with the TRUE types of
every seed and val lesion (the truth file, train lesions included) in the sampler and in a
cross-entropy head; never a test lesion's type.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Where the candidates' code is imported from (another checkout with EMBED_STUDY_REPO).
REPO = Path(os.environ.get("EMBED_STUDY_REPO", HERE.parent))

#: Candidate name -> LesionEmbedder parameters (and "patch": PatchConfig overrides).
CANDIDATES: dict[str, dict] = {
    "base": {"type_weight": 0.0},  # the defaults before issue 15
    "ep30": {"type_weight": 0.0, "epochs": 30},
    "bs8": {"type_weight": 0.0, "batch_size": 8},
    "lr3e3": {"type_weight": 0.0, "lr": 0.003},
    "w8ep25": {"type_weight": 0.0, "width": 8, "epochs": 25},
    "p32ep30": {"type_weight": 0.0, "patch": {"size": 32}, "epochs": 30},
    "fov48": {"type_weight": 0.0, "patch": {"min_fov_mm": 48}},
    "nometa": {"type_weight": 0.0, "use_metadata": False},
    "tw1": {"type_weight": 1.0},
    "tw1prop": {"type_weight": 1.0, "propagate_types": 2},
    "tw1uni": {"type_weight": 1.0, "uniformity_weight": 0.5},
    "bs8tw1": {"type_weight": 1.0, "batch_size": 8},
    "ceiling": {"type_weight": 1.0, "ceiling": True},
    # simulated corrections flowing back (embed --labels-from-store): the true type of a random
    # 10 % / 30 % of all lesions, taken among non-test lesions, added to the sampler's types
    "corr10": {"type_weight": 1.0, "corrections": 0.1},
    "corr30": {"type_weight": 1.0, "corrections": 0.3},
    # issue 15, 2026-12-07: a second input, the key slice at a fixed physical field of view
    # (80 mm, 32 px, lung/soft-tissue/bone windows) around the lesion, through a small branch
    "ctx80": {"type_weight": 1.0, "patch": {"context_mm": 80.0}},
    "ctx80nm": {"type_weight": 1.0, "use_metadata": False, "patch": {"context_mm": 80.0}},
    "ctx80nce": {"type_weight": 1.0, "contrastive_weight": 1.0, "patch": {"context_mm": 80.0}},
    "ctx80ceiling": {"type_weight": 1.0, "ceiling": True, "patch": {"context_mm": 80.0}},
}

CHILD = r'''
import json, os, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from deeplesion_lab.embedding import LesionEmbedder, PatchConfig, build_patches
from deeplesion_lab.evaluation import (classification_accuracy, location_features, nmi,
    protocol_split, purity, raw_intensity_features, retrieval_scores, true_types)
from deeplesion_lab.manifest import read_manifest
from deeplesion_lab.mining import DeepClusterMiner

data, name, cfg = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
pc = cfg.pop("patch", {})
ceiling = cfg.pop("ceiling", False)
corrections = cfg.pop("corrections", 0.0)
df = read_manifest(data / "demo.parquet")
P = build_patches(df, PatchConfig(channels="windows", **pc), cache_dir=data / "cache")
truth, _ = true_types(df, data / "demo" / "truth.parquet")
roles = protocol_split(df["patient_index"].to_numpy())
known = np.isin(roles, ["seed", "val"])
y = np.where(known, truth if ceiling else P.types, -1)
if corrections:
    cand = np.flatnonzero((roles != "test") & (truth >= 1))
    pick = np.random.default_rng(0).choice(cand, min(len(cand), int(round(corrections * len(df)))),
                                           replace=False)
    y[pick] = truth[pick]
params = {"num_threads": 1, "seed": 0, **cfg}
t0 = time.time()
emb = LesionEmbedder(**params).fit(P, y=y)
train_s = time.time() - t0
E = emb.transform(P)
U = LesionEmbedder(**params).initialize(P).transform(P)
loc = location_features(df)
sizes = (df["long_diameter_px"] * df["spacing_x"]).to_numpy()
pats = df["patient_index"].to_numpy()
acc = lambda X: classification_accuracy(X, truth, roles)["accuracy"]
res = {"name": name, "data": data.name, "cfg": cfg, "patch": pc, "train_s": round(train_s, 1),
       "n": len(df), "n_test": int(((roles == "test") & (truth >= 1)).sum()),
       "n_sampler_types": int((y >= 1).sum()), "corrections": corrections, "acc": acc(E), "untrained": acc(U),
       "raw": acc(raw_intensity_features(P.patches)), "loc": acc(loc)}
for tag, X in (("", E), ("_untrained", U)):
    res["p5" + tag] = retrieval_scores(X, truth, pats, loc, sizes,
                                       queries=roles != "seed")["type_precision_at_5"]
    Xc = X - X.mean(0)
    s = np.linalg.svd(Xc, compute_uv=False)
    p = s**2 / (s**2).sum()
    res["mean_cos" + tag] = float((X @ X.T).mean())
    res["eff_rank" + tag] = float(np.exp(-(p * np.log(p + 1e-12)).sum()))
    lab = truth >= 1
    m = DeepClusterMiner(seed=0).fit(X)
    res["k" + tag] = int(m.n_clusters_)
    res["nmi" + tag] = nmi(truth[lab], m.labels_[lab])
    res["purity" + tag] = purity(truth[lab], m.labels_[lab])
res["hist"] = emb.history_
print(json.dumps(res))
'''


def demo_dir(work: Path, patients: int, seed: int) -> Path:
    """Generate (once) the demo, its manifest and its patch cache."""
    d = work / f"d{patients}_{seed}"
    if not (d / "demo.parquet").is_file():
        code = (
            "import sys; from pathlib import Path; from deeplesion_lab.demo import generate_demo;"
            "from deeplesion_lab.cli import main; d=Path(sys.argv[1]);"
            "r=generate_demo(d/'demo', n_patients=int(sys.argv[2]), seed=int(sys.argv[3]),"
            " progress=False); main(['manifest', str(r.csv_path), '--out', str(d/'demo.parquet')])"
        )
        subprocess.run([sys.executable, "-c", code, str(d), str(patients), str(seed)],
                       check=True, capture_output=True, cwd=REPO)
    return d


def run_one(d: Path, name: str, jsonl: Path) -> dict:
    cfg = json.dumps(CANDIDATES[name])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(d), name, cfg], capture_output=True,
                         text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{name} on {d}: failed\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    with open(jsonl, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(f"{name:8s} {d.name}: acc {res['acc']:.3f} (untrained {res['untrained']:.3f}) "
          f"nmi {res['nmi']:.3f} purity {res['purity']:.3f} p@5 {res['p5']:.3f} "
          f"train {res['train_s']:.0f} s", flush=True)
    return res


def summary(rows: list[dict]) -> str:
    """Markdown: per size and candidate, mean and sd over seeds, and per-seed margins."""
    import numpy as np

    lines = ["| patients | candidate | seeds | accuracy | untrained | acc - untrained (min) | "
             "raw | location | p@5 | NMI | purity | K | eff. rank | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        n = int(r["data"].split("_")[0][1:].lstrip("d"))
        groups.setdefault((n, r["name"]), []).append(r)
    f = lambda v: f"{np.mean(v):.3f} ± {np.std(v):.3f}"  # noqa: E731
    for (n, name), g in sorted(groups.items(), key=lambda kv: (kv[0][0], list(CANDIDATES).index(
            kv[0][1]) if kv[0][1] in CANDIDATES else 99)):
        d = [r["acc"] - r["untrained"] for r in g]
        lines.append(
            f"| {n} | {name} | {len(g)} | {f([r['acc'] for r in g])} | "
            f"{f([r['untrained'] for r in g])} | {np.mean(d):+.3f} ({min(d):+.3f}) | "
            f"{f([r['raw'] for r in g])} | {f([r['loc'] for r in g])} | "
            f"{f([r['p5'] for r in g])} | {f([r['nmi'] for r in g])} | "
            f"{f([r['purity'] for r in g])} | {np.mean([r['k'] for r in g]):.0f} | "
            f"{np.mean([r['eff_rank'] for r in g]):.1f} | "
            f"{np.mean([r['train_s'] for r in g]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, nargs="+", default=[24, 40])
    ap.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    ap.add_argument("--candidates", nargs="+", default=["base", "tw1", "tw1uni", "ceiling"],
                    choices=list(CANDIDATES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/emb_study"))
    ap.add_argument("--jsonl", type=Path, default=HERE / "results" / "embedding_study.jsonl")
    ap.add_argument("--summary-only", action="store_true",
                    help="only print the summary of --jsonl")
    args = ap.parse_args()
    if not args.summary_only:
        args.work.mkdir(parents=True, exist_ok=True)
        dirs = [demo_dir(args.work, n, s) for n in args.patients for s in args.seeds]
        jobs = [(d, c) for d in dirs for c in args.candidates]
        t = time.time()
        with ThreadPoolExecutor(args.jobs) as ex:
            list(ex.map(lambda j: run_one(j[0], j[1], args.jsonl), jobs))
        print(f"{len(jobs)} runs in {time.time() - t:.0f} s")
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    print(summary(rows))


if __name__ == "__main__":
    main()
