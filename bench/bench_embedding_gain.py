"""Why the trained embedding beats the untrained network by little on some seeds (issue 15).

Usage::

    .venv/bin/python bench/bench_embedding_gain.py RUN_DIR [RUN_DIR ...] [--splits 20] \
        [--json bench/results/embedding_gain.jsonl]

For each run (after ``embed``, with its truth): the type mix of the protocol's roles and of the
sampler's known types, the training history (``embedder.json``), and for the trained embedding
and the same network untrained (as ``evaluate`` builds it): the test accuracy at every C of the
protocol (C chosen on val), the per-type test recall, a paired bootstrap interval of the
accuracy difference on the test lesions, and the difference over ``--splits`` other protocol
splits (``protocol_split`` seeds 1..S: which patients are seed / val / test; scored on the
lesions that are test in both splits, whose types the network never saw), to tell a weak
network from an unlucky split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def features(run_dir: Path) -> dict:
    import torch

    from deeplesion_lab.embedding import LesionEmbedder, build_patches
    from deeplesion_lab.evaluation import aligned_embeddings, true_types
    from deeplesion_lab.run import RunDir

    torch.set_num_threads(1)
    run = RunDir(run_dir)
    df = run.load_manifest()
    ids = df["lesion_id"].astype(str).to_numpy()
    X = np.asarray(aligned_embeddings(run, ids), dtype=np.float64)
    emb = LesionEmbedder.load(run.embedder)
    emb.num_threads = 1
    patches = build_patches(df, emb.patch_config_, cache_dir=run.patch_cache)
    params = emb.get_params()
    params.update(pretrained=None, progress=False)
    U = LesionEmbedder(**params).initialize(emb.patch_config_).transform(patches)
    truth, _ = true_types(df, run.info().get("truth"))
    rec = json.loads((run.path / "embedder.json").read_text())
    return {"df": df, "X": X, "U": np.asarray(U, dtype=np.float64), "truth": truth,
            "history": rec.get("history", []), "training": rec.get("training", {})}


def fit_all_C(F, t, roles, Cs=(0.01, 0.1, 1.0, 10.0, 100.0), test_ok=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lab = t >= 1
    tr, va, te = (lab & (roles == r) for r in ("seed", "val", "test"))
    if test_ok is not None:
        te = te & test_ok
    out = []
    for C in Cs:
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(
            F[tr], t[tr])
        out.append({"C": C, "val": float(m.score(F[va], t[va])),
                    "test": float(m.score(F[te], t[te])), "pred": m.predict(F[te])})
    best = max(out, key=lambda r: r["val"])  # first best, as evaluate
    return out, best, te


def main() -> None:
    from deeplesion_lab.evaluation import protocol_split
    from deeplesion_lab.lesion_types import COARSE_TYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for r in args.runs:
        d = features(r)
        df, t = d["df"], d["truth"]
        roles = protocol_split(df["patient_index"].to_numpy(), 0)
        mtypes = df["coarse_type"].to_numpy(dtype=np.int64)
        sampler = np.where(np.isin(roles, ["seed", "val"]) & (mtypes >= 1), mtypes, -1)
        mix = {role: np.bincount(t[(roles == role) & (t >= 1)], minlength=9)[1:].tolist()
               for role in ("seed", "val", "test")}
        mix["sampler"] = np.bincount(sampler[sampler >= 1], minlength=9)[1:].tolist()
        res = {"run": str(r), "n": int(len(df)), "mix": mix,
               "history_first": d["history"][0] if d["history"] else None,
               "history_last": d["history"][-1] if d["history"] else None}
        pred = {}
        for name, F in (("trained", d["X"]), ("untrained", d["U"])):
            allc, best, te = fit_all_C(F, t, roles)
            pred[name] = best["pred"]
            tt = t[te]
            res[name] = {
                "C": best["C"], "val": best["val"], "test": best["test"],
                "test_by_C": {str(x["C"]): round(x["test"], 3) for x in allc},
                "val_by_C": {str(x["C"]): round(x["val"], 3) for x in allc},
                "recall": {COARSE_TYPES[k]: round(float((best["pred"][tt == k] == k).mean()), 3)
                           for k in sorted(COARSE_TYPES) if (tt == k).any()},
            }
        ok_t, ok_u = pred["trained"] == tt, pred["untrained"] == tt
        boot = []
        for _ in range(2000):
            i = rng.integers(0, len(tt), len(tt))
            boot.append(ok_t[i].mean() - ok_u[i].mean())
        res["gain"] = float(ok_t.mean() - ok_u.mean())
        res["gain_boot95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
        res["only_trained_right"] = int((ok_t & ~ok_u).sum())
        res["only_untrained_right"] = int((~ok_t & ok_u).sum())
        gains = []
        # the network was trained with the types of split 0's seed+val lesions: another split's
        # test lesions are scored only where split 0 had them in test too (types never seen)
        fresh = roles == "test"
        for s in range(1, args.splits + 1):
            ro = protocol_split(df["patient_index"].to_numpy(), s)
            a = fit_all_C(d["X"], t, ro, test_ok=fresh)[1]["test"]
            b = fit_all_C(d["U"], t, ro, test_ok=fresh)[1]["test"]
            gains.append(a - b)
        res["gain_other_splits"] = {"mean": float(np.mean(gains)), "sd": float(np.std(gains)),
                                    "min": float(np.min(gains)), "max": float(np.max(gains)),
                                    "share_below_0.08": float(np.mean(np.array(gains) < 0.08))}
        rows.append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for res in rows:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
