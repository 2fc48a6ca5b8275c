"""The 2017 paper's loop with type signal: mined pseudo-labels become the sampler's types of the
next embedding round (issue 15).

Usage::

    .venv/bin/python bench/bench_mining_rounds.py RUN_DIR [RUN_DIR ...] [--rounds 1] \
        [--jsonl bench/results/mining_rounds.jsonl]

``RUN_DIR``: a run after ``embed`` with a recorded truth file. Round 0 is the run's embedding.
Each round: the default miner (``DeepClusterMiner()``, over-clustering merged by known type)
given ONLY the protocol's seed+val types of the manifest (what ``embed``'s sampler may use), the
clusters named by those types; then a new network with the run's settings is trained from
scratch with the sampler's types = the seed+val types, plus the pseudo-labels of the other
lesions outside the protocol's test role (never a test lesion: neither its type nor its
pseudo-label). Every round is scored as ``evaluate`` and ``mine`` score it: protocol accuracy,
type precision@5, and the default miner's clusters (given the manifest's types, as ``mine``)
NMI / purity on all lesions and on the lesions without a manifest type.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

HERE = Path(__file__).resolve().parent


def scores(X, d) -> dict:
    from deeplesion_lab.evaluation import (
        classification_accuracy,
        nmi,
        purity,
        retrieval_scores,
    )
    from deeplesion_lab.mining import DeepClusterMiner

    t, roles = d["truth"], d["roles"]
    cl = DeepClusterMiner(seed=0).fit(X, d["known_all"]).labels_
    u = (t >= 1) & (d["known_all"] < 1)
    return {
        "accuracy": classification_accuracy(X, t, roles)["accuracy"],
        "p5": retrieval_scores(X, t, d["patients"], d["loc"], d["size"], queries=roles != "seed")[
            "type_precision_at_5"
        ],
        "nmi": nmi(t[t >= 1], cl[t >= 1]),
        "purity": purity(t[t >= 1], cl[t >= 1]),
        "nmi_u": nmi(t[u], cl[u]),
        "purity_u": purity(t[u], cl[u]),
        "k": int(len(np.unique(cl))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, default=HERE / "results" / "mining_rounds.jsonl")
    args = ap.parse_args()
    import torch

    from deeplesion_lab.embedding import LesionEmbedder, build_patches
    from deeplesion_lab.evaluation import (
        aligned_embeddings,
        location_features,
        protocol_split,
        true_types,
    )
    from deeplesion_lab.lesion_types import COARSE_TYPES
    from deeplesion_lab.mining import DeepClusterMiner, name_clusters
    from deeplesion_lab.run import RunDir

    torch.set_num_threads(1)
    code = {v: k for k, v in COARSE_TYPES.items()}
    for r in args.runs:
        run = RunDir(r)
        df = run.load_manifest()
        ids = df["lesion_id"].astype(str).to_numpy()
        emb0 = LesionEmbedder.load(run.embedder)
        patches = build_patches(df, emb0.patch_config_, cache_dir=run.patch_cache)
        assert list(patches.lesion_ids) == list(ids)
        X = np.asarray(aligned_embeddings(run, ids), dtype=np.float64)
        mt = df["coarse_type"].to_numpy(dtype=np.int64)
        mt = np.where(mt >= 1, mt, -1)
        roles = protocol_split(df["patient_index"].to_numpy())
        d = {
            "truth": true_types(df, run.info().get("truth"))[0],
            "roles": roles,
            "known_all": mt,
            "patients": df["patient_index"].to_numpy(),
            "loc": location_features(df),
            "size": (df["long_diameter_px"] * df["spacing_x"]).to_numpy(float),
        }
        sv = np.where(np.isin(roles, ["seed", "val"]), mt, -1)
        res = {"run": str(r), "round": 0, **scores(X, d), "sampler_types": int((sv >= 1).sum())}
        print(json.dumps(res), flush=True)
        out = [res]
        for k in range(1, args.rounds + 1):
            m = DeepClusterMiner(seed=0).fit(X, sv)
            names, _ = name_clusters(m.labels_, sv, m.cluster_centers_)
            pseudo = np.array([code[names[int(c)]] for c in m.labels_])
            types = sv.copy()
            fill = (types < 1) & (roles != "test")
            types[fill] = pseudo[fill]
            params = emb0.get_params()
            params.update(pretrained=None, progress=False, num_threads=1)
            t0 = time.process_time()
            emb = LesionEmbedder(**params).fit(patches, y=types)
            X = np.asarray(emb.transform(patches), float)
            res = {
                "run": str(r),
                "round": k,
                **scores(X, d),
                "sampler_types": int((types >= 1).sum()),
                "pseudo_right": float((pseudo[fill] == d["truth"][fill]).mean()),
                "train_cpu_s": round(time.process_time() - t0, 1),
            }
            print(json.dumps(res), flush=True)
            out.append(res)
        with open(args.jsonl, "a") as f:
            for res in out:
                f.write(json.dumps({**res, "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
