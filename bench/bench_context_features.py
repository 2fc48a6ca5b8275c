"""How separable are the demo's types without a network? Hand-made context features (issue 15).

Usage::

    .venv/bin/python bench/bench_context_features.py DEMO_DIR [DEMO_DIR ...] \
        [--jsonl bench/results/context_features.jsonl]

``DEMO_DIR`` holds ``demo.parquet`` (the manifest) and ``demo/truth.parquet`` (as the folders
``bench_embedding_study.py`` makes). For each lesion, on its key slice in HU: the HU histogram
(14 bins from air to bone) of square windows of 40, 80 and 160 mm around the lesion minus the
lesion box (plus the share outside the image), of two rings just outside the box (1-1.6 and
1.6-2.6 times its size, plus their median) and of the box itself, with the normalised location
and the log long diameter. These go through exactly what ``evaluate`` does with an embedding:
8-class accuracy with the paper's protocol (logistic regression on the seed quarter, C on val,
accuracy on the test half), type precision@5 (standardised, unit-length features) and k-means
pseudo-labels (K by silhouette over 8-16, as ``mine``) NMI and purity against the true type.
It also reports a 5-fold cross-validation by patient on ALL labelled lesions (four fifths of
them to train, not the protocol's quarter): how separable the data are with many labels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

EDGES = np.array([-1100, -900, -700, -500, -300, -150, -50, 0, 30, 60, 100, 150, 250, 500,
                  3000.0])
SCALES_MM = (40, 80, 160)


def context_features(df) -> np.ndarray:
    """The hand-made features of every lesion of the manifest ``df``."""
    from deeplesion_lab.manifest import manifest_images_root
    from deeplesion_lab.transforms import LoadContext, sample_from_row

    load = LoadContext(manifest_images_root(df), 1, None)
    hist = lambda v: list(np.histogram(v, EDGES)[0] / max(len(v), 1))  # noqa: E731
    out = []
    for row in df.to_dict("records"):
        s = load(sample_from_row(row))
        img = s["image"][0]
        x1, y1, x2, y2 = s["boxes"][0]
        sp = float(row["spacing_x"])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        dx, dy = np.abs(xx - cx), np.abs(yy - cy)
        hw, hh = (x2 - x1) / 2, (y2 - y1) / 2
        inbox = (dx <= hw * 1.2) & (dy <= hh * 1.2)
        f = []
        for side in SCALES_MM:
            r = side / sp / 2
            win = (dx <= r) & (dy <= r) & ~inbox
            v = img[win]
            area = (2 * r) ** 2 - inbox.sum()
            f += hist(v) + [1 - len(v) / max(area, 1)]  # outside the image: air
        for a, b in ((1.0, 1.6), (1.6, 2.6)):
            ring = ((dx <= hw * b + 3) & (dy <= hh * b + 3)
                    & ~((dx <= hw * a + 1) & (dy <= hh * a + 1)))
            v = img[ring]
            f += hist(v) + [float(np.median(v)) / 500]
        f += hist(img[inbox])
        out.append(f)
    return np.array(out, float)


def measure(d: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from deeplesion_lab.evaluation import (
        classification_accuracy,
        location_features,
        nmi,
        protocol_split,
        purity,
        retrieval_scores,
        true_types,
    )
    from deeplesion_lab.manifest import read_manifest
    from deeplesion_lab.mining import DeepClusterMiner

    df = read_manifest(d / "demo.parquet")
    truth, _ = true_types(df, d / "demo" / "truth.parquet")
    roles = protocol_split(df["patient_index"].to_numpy())
    t = time.process_time()
    F = context_features(df)
    cpu = time.process_time() - t
    loc = location_features(df)
    size = np.log((df["long_diameter_px"] * df["spacing_x"]).to_numpy())
    pats = df["patient_index"].to_numpy()
    nb = len(EDGES)  # bins + the share outside the image
    sets = {
        "context 80 mm": F[:, nb : 2 * nb],
        "context 40/80/160 mm + z": np.hstack([F[:, : 3 * nb], loc[:, 2:]]),
        "context all + location + size": np.hstack([F, loc, size[:, None]]),
    }
    lab = truth >= 1
    res = {"data": d.name, "n": len(df), "feature_cpu_s": round(cpu, 1)}
    for name, X in sets.items():
        Xs = (X - X.mean(0)) / (X.std(0) + 1e-9)
        Xn = Xs / np.linalg.norm(Xs, axis=1, keepdims=True)
        m = DeepClusterMiner(seed=0).fit(Xs)
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        cv = cross_val_score(lr, X[lab], truth[lab], groups=pats[lab], cv=GroupKFold(5))
        res[name] = {
            "acc": classification_accuracy(X, truth, roles)["accuracy"],
            "p5": retrieval_scores(Xn, truth, pats, loc, size, queries=roles != "seed")[
                "type_precision_at_5"],
            "nmi": nmi(truth[lab], m.labels_[lab]), "purity": purity(truth[lab], m.labels_[lab]),
            "k": int(m.n_clusters_), "cv5_all_labels": float(cv.mean()),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demos", type=Path, nargs="+")
    ap.add_argument("--jsonl", type=Path, default=Path(__file__).resolve().parent / "results"
                    / "context_features.jsonl")
    args = ap.parse_args()
    for d in args.demos:
        res = measure(d)
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(res) + "\n")
        for k, v in res.items():
            if isinstance(v, dict):
                print(f"{d.name} {k:32s} acc {v['acc']:.3f} p@5 {v['p5']:.3f} NMI {v['nmi']:.3f} "
                      f"purity {v['purity']:.3f} K {v['k']} 5-fold(all labels) "
                      f"{v['cv5_all_labels']:.3f}", flush=True)


if __name__ == "__main__":
    main()
